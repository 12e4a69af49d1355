"""`prefbench perf` runs both trainers on a tiny setting and prints a well-formed table (no timing
assertions: speed is measured by the benchmark itself, not by tests)."""
import json
import re

from tests.conftest import prefbench


def test_perf_prints_and_saves_a_table(tmp_path):
    out = prefbench("perf", "methods=[sft,dpo,kto]", "steps=2", "reps=1", "batch_size=2", "seq_len=256", "hidden=32",
                    "layers=1", "vocab=1024", f"out={tmp_path}").stdout
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
