"""`prefbench perf` runs both trainers on a tiny setting and prints a well-formed table (no timing
assertions: speed is measured by the benchmark itself, not by tests)."""
import csv
import json
import re

import pytest

from tests.conftest import prefbench


@pytest.mark.slow  # a TRL benchmark end to end: `python -m pytest -m slow`
def test_perf_prints_and_saves_a_table(tmp_path):
    out = prefbench("perf", "methods=[sft,dpo,kto]", "steps=2", "reps=1", "batch_size=2", "seq_len=256", "hidden=32",
                    "layers=1", "vocab=1024", "profile=true", f"out={tmp_path}").stdout
    header = next(line for line in out.splitlines() if line.startswith("method"))
    assert header.split()[:3] == ["method", "prefbench", "tok/s"]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if re.match(r"^(sft|dpo|kto) ", line)}
    assert set(rows) == {"sft", "dpo", "kto"}
    for cells in rows.values():
        assert all(float(c) == float(c) for c in cells[1:8])  # numbers, not NaN
    saved = json.loads(next(tmp_path.glob("perf-*.json")).read_text())
    table = {r["method"]: r for r in saved["table"]}
    assert table["dpo"]["trl_trainer"] == "DPOTrainer" and table["dpo"]["speed_ratio"] > 0
    # same init, rows, order and optimizer: the first loss is identical on both sides
    for method in ("sft", "dpo"):
        trials = saved["trials"][method]
        assert abs(trials["prefbench"][0]["losses"][0] - trials["trl"][0]["losses"][0]) < 1e-4
    assert "step_cost_vs_orpo" not in table["dpo"]  # no ORPO row to compare with
    assert saved["environment"]["device"].startswith("cpu") and saved["environment"]["trl"]
    for impl in ("prefbench", "trl"):  # the profiler's operator table of each side
        assert "aten::mm" in (tmp_path / f"profile-dpo-{impl}.txt").read_text()

    report = prefbench("report", str(tmp_path)).stdout  # a perf folder alone makes a report
    page = (tmp_path / "report" / "index.html").read_text()
    assert "prefbench vs TRL" in page and 'src="perf.png"' in page and "DPOTrainer" in page
    assert (tmp_path / "report" / "perf.png").stat().st_size > 10_000 and "report:" in report
    assert {r["method"] for r in csv.DictReader((tmp_path / "perf.csv").open())} == {"sft", "dpo", "kto"}
