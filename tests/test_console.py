"""The sweep console (prefbench/job/progress.py): one overall line read from the sweep folder, plain lines in a log."""
import io
import json

from omegaconf import OmegaConf

from prefbench.job.config import compose_config
from prefbench.job import progress
from prefbench.job.progress import SweepProgress
from prefbench.job.sweep import Job


def _job(sweep, name, status=None, step=None, overrides=("method=dpo", "trainer.steps=10")):
    run = sweep / name
    run.mkdir(parents=True)
    if status:
        (run / "summary.json").write_text(json.dumps({"status": status}))
        (run / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(list(overrides)), resolve=True))
    if step is not None:
        (run / "metrics.jsonl").write_text(json.dumps({"step": step // 2}) + "\n" + json.dumps({"step": step}) + "\n")
    return Job(name, [], "digest", {})


def test_the_overall_line_counts_ended_jobs_and_shows_running_steps(tmp_path):
    jobs = [_job(tmp_path, "a--1", "done"), _job(tmp_path, "b--2", "running", step=4), _job(tmp_path, "c--3"),
            _job(tmp_path, "d--4", "failed"), Job("e--5", [], "x", {}, refused="bad config")]
    line = SweepProgress(tmp_path, jobs).line()
    assert line == "jobs 2/4 ended | running: b 4/10"  # a refused job is not waited for


def test_a_running_job_shows_the_steps_its_budget_plans(tmp_path):
    """budget=matched: ORPO and SFT start from the base model and also train the SFT stage's steps."""
    matched = ["trainer.steps=10", "stages.sft.steps=30"]
    jobs = [_job(tmp_path, "orpo--1", "running", step=12, overrides=["method=orpo", *matched]),
            _job(tmp_path, "dpo--2", "running", step=3, overrides=["method=dpo", *matched]),
            _job(tmp_path, "sft--3", "running", step=5, overrides=["method=sft", "budget=per_stage", *matched])]
    assert SweepProgress(tmp_path, jobs).line() == "jobs 0/3 ended | running: orpo 12/40; dpo 3/10; sft 5/10"


def test_off_a_terminal_the_line_is_printed_plainly_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "FILE_EVERY", 0.0)
    jobs = [_job(tmp_path, "a--1", "running", step=2), _job(tmp_path, "b--2")]
    stream = io.StringIO()
    shown = SweepProgress(tmp_path, jobs, stream=stream)
    shown.line()  # as on entering: what ended before does not count towards the ETA
    shown.tick()
    shown.tick()
    (tmp_path / "a--1" / "summary.json").write_text(json.dumps({"status": "done"}))
    shown.tick()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[prefbench] jobs 0/2 ended | running: a 2/10"
    assert lines[-1].startswith("[prefbench] jobs 1/2 ended, ETA ") and len(lines) == 2  # printed once per change
    assert "\r" not in stream.getvalue()


def test_on_a_terminal_one_job_draws_its_bar_and_a_sweep_only_the_overall_line(tmp_path, shared_cache):
    """Under a pseudo-terminal (util-linux `script`): `prefbench run` draws its per-step bar (tqdm's rate, it/s or
    s/it) and no library's; a sweep of two jobs draws the overall line and no job's bar."""
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    from tests.conftest import REPO, SMOKE

    if shutil.which("script") is None:
        pytest.skip("util-linux `script` is not installed")
    exe = Path(sys.executable).parent / "prefbench"
    common = [a for a in SMOKE if a != "trainer.progress=false"]

    def on_a_terminal(*args) -> str:  # a terminal of 120 columns (script's own has none, and tqdm draws nothing)
        command = "stty cols 120 rows 40; " + " ".join(map(str, [exe, *args]))
        return subprocess.run(["script", "-qefc", command, "/dev/null"], capture_output=True, cwd=REPO, timeout=600,
                              check=True).stdout.decode(errors="replace")  # bytes: text mode would turn \r into \n

    rate = re.compile(r"\d(it/s|s/it)")
    one = on_a_terminal("run", "method=sft", f"results_dir={tmp_path / 'one'}", *common)  # its own cache: BPE trains
    assert rate.search(one) and "\r" in one
    assert "Pre-processing sequences" not in one  # the BPE trainer's own bars stay off
    two = on_a_terminal("sweep", "method=sft,orpo", "hydra/launcher=basic", f"results_dir={tmp_path / 'two'}",
                        "sweep_name=s", f"cache_dir={shared_cache}", *common)  # one process: no workers to start
    assert "jobs 0/2 ended" in two and "All 2 jobs done." in two
    assert not rate.search(two)
