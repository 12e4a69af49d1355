"""Resume and cost are exact: a real kill -9 at each kill point of prefbench/io/faults.py, then a
rerun, gives the summary of an uninterrupted run, and cost counts every training step once."""
import json
import signal
from pathlib import Path

import pytest

from tests.conftest import SMOKE, prefbench, run_dir

# Keys that measure time (wall clock, throughput, stage build times) or the resumed process's own
# peak memory: they legitimately differ between an interrupted and an uninterrupted run.
TIMING_KEYS = {"wall_seconds", "cost/train_seconds", "cost/train_tokens_per_s", "train/tokens_per_s",
               "cost/base_stage_seconds", "cost/sft_stage_seconds", "cost/eval_seconds", "cost/generate_seconds",
               "cost/generate_tokens_per_s", "cost/judge_seconds", "cost/peak_memory_mb",
               "cost/train_cpu_seconds", "cost/total_train_cpu_seconds", "cost/eval_cpu_seconds",
               "cost/curve_sample_seconds"}
# Bookkeeping of how the result was reached, not what it is: the step training resumed from, and
# whether (and how many) reference log-probs came from the cache.
BOOKKEEPING_KEYS = {"resumed_from_step", "reference_cache_hit", "cost/reference_rows_scored"}
ARGS = ["run", "method=dpo", *SMOKE]  # 4 steps, checkpoints at 2 and 4, logged at 2 and 4
RUN = "reviews-tiny-xs-dpo-s0"


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS | BOOKKEEPING_KEYS}


def metrics_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def read_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_cache) -> Path:
    results = tmp_path_factory.mktemp("uninterrupted")
    prefbench(*ARGS, f"results_dir={results}", f"cache_dir={shared_cache}")
    return run_dir(results / "runs", RUN)


@pytest.mark.parametrize("point, resumed_from", [
    ("stage_build:sft", 0),  # the SFT stage is trained but not published (cold cache of its own)
    ("train_step_3", 2),  # between the checkpoints at steps 2 and 4
    ("train_step_4", 4),  # the final checkpoint is written, training has not returned
    ("evaluate", 4),      # samples generated and scored, judge not run
    ("summary", 4),       # everything done but summary.json
])
def test_kill_then_rerun_gives_the_uninterrupted_summary(point, resumed_from, tmp_path, shared_cache, uninterrupted):
    cache = tmp_path / "cache" if point.startswith("stage_build") else shared_cache
    args = [*ARGS, f"results_dir={tmp_path}", f"cache_dir={cache}"]
    killed = prefbench(*args, check=False, env={"PREFBENCH_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = run_dir(tmp_path / "runs", RUN)
    assert read_summary(run)["status"] == "running"  # what a killed job leaves behind
    prefbench(*args)
    expected, got = read_summary(uninterrupted), read_summary(run)
    assert got["status"] == "done" and got["resumed_from_step"] == resumed_from
    assert got["cost/train_tokens"] == expected["cost/train_tokens"] > 0  # every step counted once
    assert any(k.startswith("train/") for k in got)
    assert comparable(got) == comparable(expected)
    assert metrics_rows(run) == metrics_rows(uninterrupted)  # no logged step lost or repeated
    for name in ("curve.jsonl", "best_of_n.jsonl"):  # the points along training, and the baseline
        assert (run / name).read_text() == (uninterrupted / name).read_text()
    assert got["cost/train_seconds"] > 0


def test_kill_during_the_sweep_report_then_rerun_skips_runs_and_rebuilds_it(tmp_path, shared_cache):
    args = ["sweep", "method=sft", "hydra.launcher.n_jobs=1", f"results_dir={tmp_path}", "sweep_name=default",
            f"cache_dir={shared_cache}", *SMOKE]
    killed = prefbench(*args, check=False, env={"PREFBENCH_KILL_AT": "report"})
    assert killed.returncode == -signal.SIGKILL
    sweep = tmp_path / "default"
    run = run_dir(sweep, "reviews-tiny-xs-sft-s0")
    before = read_summary(run)
    assert before["status"] == "done" and not (sweep / "report" / "index.html").exists()
    rerun = prefbench(*args)
    assert "done already, skipped" in rerun.stdout
    assert read_summary(run) == before
    page = (sweep / "report" / "index.html").read_text()
    assert "All runs" in page and "<img" in page
    assert (sweep / "runs.csv").exists()


def test_a_stage_is_built_from_its_own_random_state(tmp_path):
    """A stage must not depend on what the building process did before (the bt stage's head did): two builds
    after different random histories draw the same numbers, and the caller's random state is left as it was."""
    import torch

    from prefbench.io.stages import build_stage

    drawn, after = [], []
    for state in (1, 2):
        torch.manual_seed(state)
        build_stage(tmp_path / f"cache{state}", "x", {"a": 1}, lambda tmp: drawn.append(torch.rand(3)))
        after.append(torch.rand(1))
        torch.manual_seed(state)
        assert torch.equal(after[-1], torch.rand(1))
    assert torch.equal(drawn[0], drawn[1])
