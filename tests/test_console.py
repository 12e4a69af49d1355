"""The sweep console (bench/job/progress.py): one overall line read from the sweep folder, plain lines in a log."""
import io
import json
import time

from bench.job import progress
from bench.job.progress import SweepProgress
from bench.job.sweep import Job


def _job(sweep, name, status=None, step=None, steps=10):
    run = sweep / name
    run.mkdir(parents=True)
    if status:
        (run / "summary.json").write_text(json.dumps({"status": status}))
        (run / "config.yaml").write_text(f"trainer:\n  steps: {steps}\n")
    if step is not None:
        (run / "metrics.jsonl").write_text(json.dumps({"step": step // 2}) + "\n" + json.dumps({"step": step}) + "\n")
    return Job(name, [], "digest", {})


def test_the_overall_line_counts_ended_jobs_and_shows_running_steps(tmp_path):
    jobs = [_job(tmp_path, "a--1", "done"), _job(tmp_path, "b--2", "running", step=4), _job(tmp_path, "c--3"),
            _job(tmp_path, "d--4", "failed"), Job("e--5", [], "x", {}, refused="bad config")]
    line = SweepProgress(tmp_path, jobs).line()
    assert line == "jobs 2/4 ended | running: b 4/10"  # a refused job is not waited for


def test_off_a_terminal_the_line_is_printed_plainly_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "FILE_EVERY", 0.0)
    jobs = [_job(tmp_path, "a--1", "running", step=2), _job(tmp_path, "b--2")]
    stream = io.StringIO()
    with SweepProgress(tmp_path, jobs, stream=stream):
        time.sleep(1.3)
        (tmp_path / "a--1" / "summary.json").write_text(json.dumps({"status": "done"}))
        time.sleep(1.3)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[prefbench] jobs 0/2 ended | running: a 2/10"
    assert lines[-1].startswith("[prefbench] jobs 1/2 ended, ETA ") and len(lines) == 2  # printed once per change
    assert "\r" not in stream.getvalue()
