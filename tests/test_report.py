"""The report as a person sees it: index.html in a real headless Chromium, and the notebook."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from prefbench.report.build import load_runs
from tests.conftest import REPO, SMOKE, prefbench

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    prefbench("sweep", "method=sft,dpo", "model=tiny-xs,tiny-s", f"results_dir={root}", "sweep_name=default",
              *[a for a in SMOKE if not a.startswith("model=")])
    return root / "default"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return exe


def n_figures(sweep) -> int:
    """The runs' figures: 7, plus win rate vs training FLOPs once the runs record cost/total_train_flops, plus the
    frontier and length figures once they record a curve, plus the reward margins on paired data."""
    df = load_runs(sweep)
    return 7 + ("cost/total_train_flops" in df) + 2 * ("eval/curve_points" in df) + ("eval/reward_margin" in df)


def test_prompts_jsonl_holds_the_summary_per_prompt(sweep):
    runs = [p for p in sweep.iterdir() if (p / "summary.json").exists()]
    assert len(runs) == 4
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        rows = [json.loads(line) for line in (run / "prompts.jsonl").read_text().splitlines()]
        assert [r["prompt_index"] for r in rows] == list(range(s["eval/n_prompts"]))
        assert np.mean([r["win_vs_sft"] for r in rows]) == pytest.approx(s["eval/win_rate_vs_sft"])
        assert np.mean([r["win_vs_chosen"] for r in rows]) == pytest.approx(s["eval/win_rate_vs_chosen"])
        assert np.mean([r["kl"] for r in rows]) == pytest.approx(s["eval/kl"], rel=1e-5, abs=1e-5)
        assert np.mean([r["response_tokens"] for r in rows]) == pytest.approx(s["eval/response_tokens_mean"])
        assert s["eval/anchor_response_tokens_mean"] > 0


def test_report_renders_in_headless_chromium(sweep, tmp_path):
    exe = chromium()
    page = (sweep / "report" / "index.html").as_uri()
    common = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == n_figures(sweep) and "All runs" in dom and "reviews-tiny-s-dpo-s0" not in dom
    assert "dpo" in dom and "tiny-xs" in dom
    assert dom.index("Conclusions") < dom.index("Ranking on tiny-xs") < dom.index("Ranking on tiny-s") < dom.index("<img")
    assert "(win rate vs SFT, 95% CI " in dom and "prompts only (one seed)" in dom
    assert "win rate at matched KL" in dom and "LC win rate" in dom  # ranking columns
    assert dom.index("Frontier fits") < dom.index("Diagnostics") < dom.index("<img")
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1400,2400", page], capture_output=True,
                   timeout=120, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    dark = (pixels.mean(axis=-1) < 0.6).mean()
    assert pixels.shape[:2] == (2400, 1400) and 0.01 < dark < 0.5  # text and plots drawn, not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # coloured plot lines, not only text


def test_the_samples_browser_shows_each_method_side_by_side_for_the_chosen_size_and_seed(sweep, tmp_path):
    exe = chromium()
    common = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    index = (sweep / "report" / "index.html").read_text()
    assert "href='samples.html'" in index
    table = index[index.index("<h2>All runs</h2>"):]
    assert "<div class='wide'>" in table and "cost/total_train_flops" in table  # scrolls instead of overflowing
    assert "<td>None</td>" not in table and "<td></td>" in table  # a done run's error cell is empty
    assert table.index("<td>tiny-xs</td>") < table.index("<td>tiny-s</td>")  # sizes by parameter count
    page = (sweep / "report" / "samples.html").as_uri() + "?model=tiny-s&seed=0"
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    view = dom[dom.index('<div id="view">'):dom.index('<script type="application/json"')]
    assert '<p id="shown">tiny-s, seed 0: 8 prompts,' in view and "2 methods" in view
    assert view.index("<th>sft</th>") < view.index("<th>dpo</th>")
    run = next(p for p in sweep.iterdir() if p.name.startswith("reviews-tiny-s-dpo-s0"))
    first = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
    words = max(re.findall(r"[A-Za-z][A-Za-z ]+", first["response"]), key=len)  # control bytes aside
    assert len(words) >= 6 and words in view and f"{first['score']:.2f}" in view
    assert view.count('class="sample"') == 8 * 2 * 2  # 8 prompts x 2 samples x 2 methods: one size, one seed
    shot = tmp_path / "samples.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1400,1600", page], capture_output=True,
                   timeout=120, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1400) and 0.005 < (pixels.mean(axis=-1) < 0.6).mean() < 0.5


def test_report_a_b_highlights_what_differs_between_two_sweeps(sweep, tmp_path):
    from prefbench.report.compare import config_differences

    other = tmp_path / "rerun"
    shutil.copytree(sweep, other)
    run = next(p for p in other.iterdir() if p.name.startswith("reviews-tiny-s-dpo-s0"))
    summary = json.loads((run / "summary.json").read_text())
    summary["eval/win_rate_vs_sft"] += 0.25  # what a change of code would do to one cell
    (run / "summary.json").write_text(json.dumps(summary))
    out = prefbench("report", sweep, other)
    assert f"comparison: {other / 'report' / 'compare.html'}" in out.stdout
    rows = {(r["model"], r["series"], r["metric"]): r for r in
            pd.read_csv(other / "report" / "compare.csv").to_dict("records")}
    changed = rows[("tiny-s", "dpo", "eval/win_rate_vs_sft")]
    assert changed["verdict"] == "differs" and changed["b_minus_a"] == pytest.approx(0.25)
    assert {r["verdict"] for k, r in rows.items() if k != ("tiny-s", "dpo", "eval/win_rate_vs_sft")} == {"identical"}
    assert [k[0] for k in rows][0] == "tiny-xs"  # sizes by parameter count
    page = (other / "report" / "compare.html").read_text()
    assert page.count("<tr class='differs'>") == 1 and "none: the same configs" in page
    common = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", (other / "report" / "compare.html").as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    assert dom.count('<tr class="differs">') == 1 and dom.count('<tr class="identical">') == len(rows) - 1
    shot = tmp_path / "compare.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1400,1200",
                    (other / "report" / "compare.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    red = (pixels[..., 0] > 0.95) & (pixels[..., 1] < 0.9) & (pixels[..., 1] > 0.8)  # the differing row's #fdd
    assert pixels.shape[:2] == (1200, 1400) and red.sum() > 1000 and 0.005 < (pixels.mean(axis=-1) < 0.6).mean() < 0.5
    a = load_runs(sweep)
    assert config_differences(a, a.assign(**{"config.trainer.lr": 0.002})) == \
        [("trainer.lr", ", ".join(sorted({str(v) for v in a["config.trainer.lr"]})), "0.002")]
    usage = prefbench("report", sweep, other, tmp_path, check=False)
    assert usage.returncode == 2 and "usage: prefbench report" in usage.stderr


def test_notebook_executes_on_a_finished_sweep(sweep):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "compare.ipynb", as_version=4)
    os.environ["PREFBENCH_SWEEP"] = str(sweep)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    finally:
        del os.environ["PREFBENCH_SWEEP"]
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images == n_figures(sweep)
    assert "dpo" in str(nb.cells[1].outputs[0]["data"]["text/plain"])
