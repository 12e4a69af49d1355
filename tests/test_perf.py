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
    for impl in ("prefbench", "trl"):  # each side credited with its own tokens; CPU time and load beside wall
        trial = saved["trials"]["dpo"][impl][0]
        assert trial["cpu_seconds"] > 0 and "load_before" in trial and table["dpo"][f"{impl}_tokens"] == trial["tokens"]
    assert saved["model"]["vocab"] < 1024 and saved["model"]["n_params"] > 0
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


def test_perf_help_and_bad_settings_are_answered_before_any_trial(tmp_path):
    usage = prefbench("perf", "--help").stdout
    assert "prefbench perf [methods=" in usage and "rep 0" not in usage
    bad = prefbench("perf", "step=5", check=False)
    assert bad.returncode == 2 and "perf: unknown setting 'step'; allowed: methods, steps" in bad.stderr
    missing = prefbench("perf", "methods=[hinge]", check=False)
    assert missing.returncode == 2 and "perf: method 'hinge' is not registered" in missing.stderr
    unknown = prefbench("perf", "baseline=opro", check=False)
    assert unknown.returncode == 2 and "perf: baseline='opro' is not a registered method" in unknown.stderr
    absent = prefbench("perf", "methods=[sft,dpo]", "baseline=ipo", check=False)
    assert absent.returncode == 2 and "perf: baseline='ipo' is not one of methods=[sft, dpo]" in absent.stderr


def test_step_cost_is_relative_to_the_baseline_setting():
    from prefbench.perf import DEFAULTS, step_costs

    def table():
        return [{"method": m, "prefbench_seconds": s} for m, s in
                zip(DEFAULTS["methods"], (1.0, 3.0, 4.0, 6.0, 2.0))]

    default = table()
    step_costs(default, DEFAULTS["baseline"])  # the default: dpo, ipo and kto over orpo, as before the setting
    assert {r["method"]: r.get("step_cost_vs_orpo") for r in default} == {
        "sft": None, "dpo": 1.5, "ipo": 2.0, "kto": 3.0, "orpo": None}
    other = table()
    step_costs(other, "dpo")  # the methods with a cached reference, over the baseline's seconds
    assert {r["method"]: r.get("step_cost_vs_dpo") for r in other} == {
        "sft": None, "dpo": None, "ipo": 4 / 3, "kto": 2.0, "orpo": None}
    for baseline in (None, "grpo"):  # none, or a baseline that was not measured: no step cost
        rows = table()
        step_costs(rows, baseline)
        assert not any(k.startswith("step_cost") for r in rows for k in r)


def test_a_method_without_a_trl_adapter_is_measured_alone(tmp_path):
    from tests.test_cli import install_plugin

    env = install_plugin(tmp_path)
    short = prefbench("perf", "methods=[hinge]", "steps=2", "reps=1", "seq_len=16", env=env, check=False)
    assert short.returncode == 2 and "perf: only 0 rows fit in seq_len=16 untruncated" in short.stderr
    out = prefbench("perf", "methods=[hinge]", "steps=2", "reps=1", "batch_size=2", "seq_len=256", "hidden=32",
                    "layers=1", "vocab=1024", f"out={tmp_path / 'perf'}", env=env).stdout
    assert "hinge: no TRL adapter (prefbench/perf/trl_adapters.py): prefbench is measured alone" in out
    assert "rep 0 hinge prefbench" in out and "trl" not in out.split("hinge: no TRL adapter")[1].split("\n")[1]
    saved = json.loads(next((tmp_path / "perf").glob("perf-*.json")).read_text())
    row = saved["table"][0]
    assert row["method"] == "hinge" and row["trl_trainer"] == "" and "speed_ratio" not in row
    assert set(saved["trials"]["hinge"]) == {"prefbench"} and saved["trials"]["hinge"]["prefbench"][0]["tokens"] > 0


def test_every_trl_adapter_is_a_registered_method():
    from prefbench import methods
    from prefbench.perf.trl_adapters import ADAPTERS
    assert set(ADAPTERS) <= set(methods.registry())
    assert len(ADAPTERS) == 26  # every method TRL 1.16 implements; the others are measured alone


@pytest.mark.slow  # TRL's GRPOTrainer and RLOOTrainer end to end
def test_online_perf_times_whole_steps_on_both_sides(tmp_path):
    out = prefbench("perf", "methods=[grpo,rloo]", "steps=2", "reps=1", "batch_size=2", "hidden=32", "layers=1",
                    "vocab=512", "max_new_tokens=8", f"out={tmp_path}").stdout
    assert "grpo: prefbench's step: sampling" in out
    saved = json.loads(next(tmp_path.glob("perf-*.json")).read_text())
    table = {r["method"]: r for r in saved["table"]}
    assert table["grpo"]["trl_trainer"] == "GRPOTrainer" and table["rloo"]["trl_trainer"] == "RLOOTrainer"
    for method in ("grpo", "rloo"):  # 2 steps x 2 prompts x 4 samples of at most 8 new tokens, on each side
        for impl in ("prefbench", "trl"):
            trial = saved["trials"][method][impl][0]
            assert 0 < trial["generated_tokens"] <= 2 * 2 * 4 * 8 and trial["tokens"] > trial["generated_tokens"]


def test_gpu_settings_and_mfu_on_this_machine(tmp_path):
    """device=, model= (a from-scratch shape) and MFU over a given peak; device=cuda without CUDA is one line."""
    import torch

    if not torch.cuda.is_available():
        bad = prefbench("perf", "device=cuda", check=False)
        assert bad.returncode == 2 and "perf: device=cuda, but torch" in bad.stderr and "sees no CUDA device" in bad.stderr
    bad = prefbench("perf", "model=opt-125m", check=False)
    assert bad.returncode == 2 and "perf: model='opt-125m' is not a from-scratch model yaml; allowed:" in bad.stderr
    out = prefbench("perf", "methods=[tdpo]", "steps=2", "reps=1", "batch_size=2", "model=tiny-xs", "vocab=1024",
                    "device=cpu", "peak_tflops=0.5", f"out={tmp_path}").stdout
    saved = json.loads(next(tmp_path.glob("perf-*.json")).read_text())
    row, env = saved["table"][0], saved["environment"]
    assert row["prefbench_mfu"] == pytest.approx(6 * saved["model"]["n_params"] * row["prefbench_tokens_per_s"] / 0.5e12)
    assert env["peak_tflops"] == 0.5 and env["peak_source"] == "peak_tflops=0.5" and env["device"].startswith("cpu")
    assert "model=tiny-xs" in out and "MFU (6 N tokens/s over 0.5 TFLOP/s, peak_tflops=0.5): tdpo" in out
    assert 50_000 < saved["model"]["n_params"] < 300_000  # tiny-xs's shape (0.16M at its own task's vocabulary)


def test_the_peak_that_mfu_divides_by():
    from prefbench.perf.measure import mfu, peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3", None) == (989.5, "H100 dense bf16 (NVIDIA datasheet)")
    assert peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.5 and peak_tflops("NVIDIA H200", None)[0] == 989.5
    assert peak_tflops("NVIDIA A100-SXM4-80GB", None)[0] == 312.0 and peak_tflops("NVIDIA L4", None)[0] == 121.0
    assert peak_tflops("cpu (2 threads of 2 cores)", None)[0] is None and peak_tflops("cpu", 2.0)[0] == 2.0
    assert mfu(10**9, 1000.0, 100.0) == pytest.approx(0.06) and mfu(10**9, 1000.0, None) is None


def test_the_report_shows_any_baselines_step_cost_in_one_column():
    from prefbench.perf.plot import PERF_COLUMNS, baseline_cost

    assert baseline_cost({"method": "ipo", "step_cost_vs_dpo": 1.5}) == {
        "method": "ipo", "baseline": "dpo", "step_cost_vs_baseline": 1.5}
    assert baseline_cost({"method": "sft"}) == {"method": "sft"}
    assert PERF_COLUMNS[-2:] == ["baseline", "step_cost_vs_baseline"]
