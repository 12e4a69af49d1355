"""`prefbench report A B`: two sweeps side by side (the same methods under different code or config), with the
differences highlighted, in ``B/report/compare.html`` and ``compare.csv``.

Per (series, model): the seed means of the headline metrics in A and in B, and B - A. A cell is *identical*
when the two agree to ``TOLERANCE`` (a rerun of the same config should be, bit for bit, on the same machine),
*within noise* when the difference is under the larger of the two seed standard deviations, and *differs*
otherwise (highlighted). Config keys whose values differ between the two sweeps, and series that only one sweep
has, are listed above the table.
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from prefbench.io.results import write_atomic
from prefbench.report.tables import done, series_order, sizes

METRICS = ("eval/win_rate_vs_sft", "eval/kl", "eval/score_mean", "eval/reward_accuracy", "eval/response_tokens_mean",
           "cost/total_train_flops")
TOLERANCE = 1e-6


def config_differences(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(key, A's values, B's values) for every config key whose set of values differs between the sweeps."""
    keys = sorted({c for c in (*a.columns, *b.columns) if c.startswith("config.")})
    def values(df, k):
        return ", ".join(sorted({str(v) for v in df[k].dropna()})) if k in df else "(absent)"
    return [(k.removeprefix("config."), values(a, k), values(b, k)) for k in keys if values(a, k) != values(b, k)]


def _verdict(x: pd.Series, y: pd.Series) -> str:
    if x.empty or y.empty:
        return "missing"
    diff = abs(y.mean() - x.mean())
    if diff <= TOLERANCE * max(1.0, abs(x.mean())):
        return "identical"
    noise = max(x.std(ddof=1) if len(x) > 1 else 0.0, y.std(ddof=1) if len(y) > 1 else 0.0)
    return "within noise" if diff < noise else "differs"


def comparison(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per (series, model, metric) that either sweep has: seed means in A and B, B - A and the verdict."""
    da, db = done(a), done(b)
    both = pd.concat([da.assign(sweep="A"), db.assign(sweep="B")])
    rows = []
    for model in sizes(both):
        for series in series_order(both):
            x, y = (d[(d["model"] == model) & (d["series"] == series)] for d in (da, db))
            if x.empty and y.empty:
                continue
            for metric in METRICS:
                xs = x[metric].dropna() if metric in x else pd.Series(dtype=float)
                ys = y[metric].dropna() if metric in y else pd.Series(dtype=float)
                rows.append({"model": model, "series": series, "metric": metric, "seeds_a": len(xs), "seeds_b": len(ys),
                             "a": xs.mean() if len(xs) else None, "b": ys.mean() if len(ys) else None,
                             "b_minus_a": ys.mean() - xs.mean() if len(xs) and len(ys) else None,
                             "verdict": _verdict(xs, ys)})
    return pd.DataFrame(rows)


def _cell(v) -> str:
    if v is None or v != v:
        return ""
    return f"{v:.3g}" if abs(v) >= 1e4 else f"{v:.4f}"


def write_comparison(a_dir: Path, b_dir: Path, a: pd.DataFrame, b: pd.DataFrame) -> Path:
    """compare.html and compare.csv in B's report folder; returns the page's path."""
    table, configs = comparison(a, b), config_differences(a, b)
    out = Path(b_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "compare.csv", table.to_csv(index=False))
    counts = table["verdict"].value_counts().to_dict() if not table.empty else {}
    summary = ", ".join(f"{counts[v]} {v}" for v in ("identical", "within noise", "differs", "missing") if v in counts)
    config_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(x)}</td><td>{html.escape(y)}</td></tr>"
                          for k, x, y in configs) or "<tr><td colspan=3>none: the same configs</td></tr>"
    rows = "".join(
        f"<tr class='{r.verdict.replace(' ', '-')}'><td>{html.escape(r.model)}</td><td>{html.escape(r.series)}</td>"
        f"<td>{html.escape(r.metric)}</td><td>{_cell(r.a)}</td><td>{_cell(r.b)}</td><td>{_cell(r.b_minus_a)}</td>"
        f"<td>{r.verdict}</td><td>{r.seeds_a} / {r.seeds_b}</td></tr>" for r in table.itertuples(index=False))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>prefbench: {html.escape(a_dir.name)} vs
{html.escape(b_dir.name)}</title><style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}}
table{{border-collapse:collapse;font-size:12px}}td,th{{border:1px solid #ccc;padding:2px 6px}}
tr.differs{{background:#fdd;font-weight:bold}}tr.within-noise{{background:#ffd}}tr.missing{{color:#888}}</style>
</head><body><h1>A = {html.escape(str(a_dir))}, B = {html.escape(str(b_dir))}</h1>
<p>{summary}. Seed means per (series, model); <b>differs</b>: the gap is larger than both sweeps' seed standard
deviations; <i>within noise</i>: smaller; identical: equal to {TOLERANCE:g} (relative).</p>
<h2>Config keys that differ</h2><table><tr><th>key</th><th>A</th><th>B</th></tr>{config_rows}</table>
<h2>Metrics</h2><table><tr><th>model</th><th>series</th><th>metric</th><th>A</th><th>B</th><th>B - A</th>
<th>verdict</th><th>seeds A / B</th></tr>{rows}</table></body></html>"""
    write_atomic(out / "compare.html", page)
    return out / "compare.html"
