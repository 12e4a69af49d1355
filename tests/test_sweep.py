"""Sweeps and the results store: a real multirun, resume after a kill, a failing run that does not
stop the others, the report over a folder with a failed run, determinism, and cluster launchers."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefbench.job.sweep import job_status
from prefbench.report.build import load_runs
from tests.conftest import REPO, SMOKE, install_faults, prefbench, run_dir


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_multirun_with_a_failing_run_and_its_report(tmp_path, shared_cache):
    """2 methods x 2 sizes, plus a method whose loss is NaN: the others finish, the report shows it, and the
    sweep's exit status says that not every job is done."""
    env, search = install_faults(tmp_path / "plugin")
    proc = prefbench("sweep", "method=sft,orpo,nan_loss", "model=tiny-xs,tiny-s", search, f"results_dir={tmp_path}",
                     "sweep_name=default", f"cache_dir={shared_cache}", *[a for a in SMOKE if not a.startswith("model=")],
                     check=False, env=env)
    assert proc.returncode == 1 and "2 of 6 jobs are not done: 2 failed." in proc.stdout
    assert "\r" not in proc.stdout + proc.stderr  # a log file holds no progress bars (stderr is not a terminal)
    assert proc.stdout.count(": done (win rate vs SFT ") == 4  # one result line per finished job
    for noise in ("joblib", "parallel(", "no artists with labels", "font cache", "launching"):  # libraries' chatter
        assert noise not in (proc.stdout + proc.stderr).lower(), noise
    runs = {p.name: summary(p) for p in (tmp_path / "default").iterdir() if (p / "summary.json").exists()}
    assert len(runs) == 6
    failed = {k: v for k, v in runs.items() if v["status"] == "failed"}
    assert {k.partition(",")[0] for k in failed} == {f"reviews-{m}-nan_loss-s0" for m in ("tiny-xs", "tiny-s")}
    assert all("non-finite loss" in v["error"] for v in failed.values())
    assert all(v["status"] == "done" for k, v in runs.items() if k not in failed)
    df = load_runs(tmp_path / "default")
    assert sorted(df["status"]) == ["done"] * 4 + ["failed"] * 2
    page = (tmp_path / "default" / "report" / "index.html").read_text()
    assert "2 of 6 jobs are not done: 2 failed." in page and page.count("non-finite loss") == 2
    for plot in ["win_rate_vs_size", "win_rate_matrix", "reward_distributions", "logp_dynamics", "reward_kl",
                 "diversity", "compute", "reward_margins"]:
        assert (tmp_path / "default" / "report" / f"{plot}.png").stat().st_size > 5000
    assert (tmp_path / "default" / "runs.parquet").exists() and (tmp_path / "default" / "runs.csv").exists()


def test_killed_run_resumes_from_its_checkpoint(tmp_path, shared_cache):
    args = ["run", "method=dpo", f"results_dir={tmp_path}", f"cache_dir={shared_cache}", *SMOKE,
            "trainer.steps=200", "trainer.checkpoint_every=10", "trainer.log_every=10"]
    prefbench("run", "method=sft", f"results_dir={tmp_path / 'warm'}", f"cache_dir={shared_cache}", *SMOKE)  # stages
    exe = Path(sys.executable).parent / "prefbench"
    proc = subprocess.Popen([str(exe), *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "runs").glob("reviews-tiny-xs-dpo-s0*/checkpoint/trainer_state.pt")) \
            and time.time() < deadline:
        time.sleep(0.05)
    run = run_dir(tmp_path / "runs", "reviews-tiny-xs-dpo-s0")
    assert job_status(run)[0] == "running"  # its process holds the run's lock
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert summary(run)["status"] == "running" and summary(run)["phase"] == "training"  # what a killed job leaves
    status, error = job_status(run)  # nobody holds the lock: the report, the sweep and the console say so
    assert status == "killed" and error.startswith("killed during training: no process runs it any more")
    report = prefbench("report", str(tmp_path / "runs"), check=False)
    assert report.returncode == 1 and "1 of 1 jobs are not done: 1 killed." in report.stdout
    again = prefbench(*args)
    assert "its last run was killed during training; running it again" in again.stderr
    s = summary(run)
    assert s["status"] == "done" and 10 <= s["resumed_from_step"] < 200
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, *range(10, 201, 10)]  # no step lost, none repeated (0: the init probe)


def test_same_seed_twice_gives_the_same_summary(tmp_path):
    results = []
    for i in range(2):  # fully separate results and stage caches: everything is rebuilt
        prefbench("run", "method=dpo", f"results_dir={tmp_path / str(i)}", *SMOKE)
        results.append(summary(run_dir(tmp_path / str(i) / "runs", "reviews-tiny-xs-dpo-s0")))
    keys = [k for k in results[0] if k.startswith(("train/loss", "train/logps", "eval/score", "eval/kl",
                                                     "eval/reward_margin", "eval/win_rate"))]
    assert len(keys) > 8
    assert {k: results[0][k] for k in keys} == {k: results[1][k] for k in keys}


def test_report_shows_missing_runs(tmp_path, shared_cache):
    prefbench("sweep", "method=sft,orpo,dpo", "hydra.launcher.n_jobs=1", f"results_dir={tmp_path}",
              "sweep_name=default", f"cache_dir={shared_cache}", *SMOKE)
    sweep = tmp_path / "default"
    (run_dir(sweep, "reviews-tiny-xs-orpo-s0") / "summary.json").unlink()  # a run that never reported
    shutil.rmtree(run_dir(sweep, "reviews-tiny-xs-dpo-s0"))  # a job whose worker was lost before it began
    proc = prefbench("report", str(sweep), check=False)
    assert proc.returncode == 1  # as `prefbench sweep` would exit
    df = load_runs(sweep)
    assert sorted(df["status"]) == ["done", "missing", "missing"]
    assert set(df[df["status"] == "missing"]["method"]) == {"orpo", "dpo"}  # named from the sweep's plan
    line = "2 of 3 jobs are not done: 2 missing."
    assert line in proc.stdout and line in (sweep / "report" / "index.html").read_text()


@pytest.mark.slow  # another launcher end to end: `python -m pytest -m slow`
def test_submitit_local_launcher(tmp_path, shared_cache):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    prefbench("sweep", "hydra/launcher=submitit_local", "method=sft,orpo", f"results_dir={tmp_path}", "sweep_name=sub",
              f"cache_dir={shared_cache}", *SMOKE, "hydra.launcher.timeout_min=10")
    assert [summary(p)["status"] for p in sorted((tmp_path / "sub").glob("reviews-*"))] == ["done", "done"]
    assert list((tmp_path / "sub" / ".submitit").glob("*/*_log.out"))  # really went through submitit


@pytest.mark.slow  # another launcher end to end: `python -m pytest -m slow`
def test_ray_launcher_on_a_local_instance(tmp_path, shared_cache):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    prefbench("sweep", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
              "method=sft,orpo", f"results_dir={tmp_path}", "sweep_name=ray", f"cache_dir={shared_cache}", *SMOKE,
              timeout=900)
    assert [summary(p)["status"] for p in sorted((tmp_path / "ray").glob("reviews-*"))] == ["done", "done"]
