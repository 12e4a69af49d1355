"""The samples browser (report/samples.html): per evaluation prompt, each method's samples side by side with their
judge scores (and the gold score under a proxy judge), for one model size and seed at a time.

The size and seed are chosen on the page, or in its address (``samples.html?model=tiny-s&seed=1``), so a link
shows the same view to a colleague. The page is one static file: the samples are embedded as JSON and drawn by a
few lines of script, with no server and no network. The first ``MAX_PROMPTS`` prompts of each run are shown.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from prefbench.io.results import read_jsonl
from prefbench.report.tables import done, series_order, sizes

MAX_PROMPTS = 40


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def samples_data(df: pd.DataFrame) -> dict:
    """What the page draws: sizes, seeds, series, prompt texts and, per (size, seed, prompt, series), the samples
    as [response, score, gold score or None]."""
    d = done(df)
    cells: dict = {}
    prompts: dict[int, str] = {}
    for row in d.itertuples(index=False):
        for s in read_jsonl(Path(row.run_dir) / "samples.jsonl"):
            i = int(s["prompt_index"])
            if i >= MAX_PROMPTS:
                continue
            prompts.setdefault(i, _prompt_text(s["prompt"]))
            cells.setdefault(f"{row.model}|{int(row.seed)}", {}).setdefault(str(i), {}).setdefault(
                row.series, []).append([s["response"], s.get("score"), s.get("gold_score")])
    return {"models": sizes(d), "seeds": sorted({int(s) for s in d["seed"]}), "series": series_order(d),
            "prompts": {str(k): v for k, v in sorted(prompts.items())}, "cells": cells}


SCRIPT = """
const D = JSON.parse(document.getElementById('data').textContent);
const q = new URLSearchParams(location.search);
const pick = (id, values, wanted) => {
  const el = document.getElementById(id);
  el.innerHTML = values.map(v => `<option>${v}</option>`).join('');
  if (values.map(String).includes(wanted)) el.value = wanted;
  el.onchange = draw;
};
const esc = t => String(t).replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
const fmt = v => (v === null || v === undefined) ? 'unjudged' : Number(v).toFixed(2);
function draw() {
  const model = document.getElementById('model').value, seed = document.getElementById('seed').value;
  history.replaceState(null, '', `?model=${encodeURIComponent(model)}&seed=${seed}`);
  const view = D.cells[`${model}|${seed}`] || {};
  const series = D.series.filter(s => Object.values(view).some(p => p[s]));
  let out = `<p id="shown">${esc(model)}, seed ${esc(seed)}: ${Object.keys(view).length} prompts,
    ${series.length} methods</p>`;
  for (const [i, text] of Object.entries(D.prompts)) {
    if (!view[i]) continue;
    out += `<h3>prompt ${i}</h3><pre class="prompt">${esc(text)}</pre><table class="side"><tr>` +
      series.map(s => `<th>${esc(s)}</th>`).join('') + '</tr><tr>' +
      series.map(s => '<td>' + (view[i][s] || []).map(([r, sc, g]) =>
        `<div class="sample"><span class="score">${fmt(sc)}${g === null || g === undefined ? '' :
          ' (gold ' + fmt(g) + ')'}</span> ${esc(r)}</div>`).join('') + '</td>').join('') + '</tr></table>';
  }
  document.getElementById('view').innerHTML = out;
}
pick('model', D.models, q.get('model'));
pick('seed', D.seeds, q.get('seed'));
draw();
"""


def samples_page(df: pd.DataFrame, title: str) -> str:
    data = json.dumps(samples_data(df)).replace("</", "<\\/")  # no "</script>" inside the JSON
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>prefbench samples: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}}
table.side{{border-collapse:collapse;table-layout:fixed;width:100%;font-size:12px}}
table.side td,table.side th{{border:1px solid #ccc;padding:3px;vertical-align:top;overflow-wrap:anywhere}}
.sample{{margin-bottom:4px}}.score{{font-weight:bold;color:#036}}pre.prompt{{white-space:pre-wrap;background:#f4f4f4}}
</style></head><body><h1>Samples: {html.escape(title)}</h1>
<p><a href="index.html">back to the report</a>. Each method's samples for the first {MAX_PROMPTS} evaluation
prompts, with the judge's score (and the gold reward under a proxy judge).</p>
<label>size <select id="model"></select></label> <label>seed <select id="seed"></select></label>
<div id="view"></div><script type="application/json" id="data">{data}</script><script>{SCRIPT}</script>
</body></html>"""
