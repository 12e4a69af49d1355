"""No job is ever lost or merged: run-folder names, ad-hoc sweep folders, counted job outcomes, refusals that
leave nothing behind, one process per run folder, names that stay inside results_dir, readable files."""
import json
import os
import stat
import subprocess
import sys

import pytest
from filelock import FileLock
from omegaconf import OmegaConf

from prefbench.job.config import compose_config
from prefbench.io.naming import config_digest, readable_overrides, run_name, safe_component
from prefbench.report.build import load_runs
from tests.conftest import REPO, SMOKE, prefbench, run_dir


def test_names_are_unique_per_config_and_stable():
    a = compose_config(["method=dpo", "trainer.lr=5e-4"])
    b = compose_config(["method=dpo", "trainer.lr=1e-3"])
    assert config_digest(a) != config_digest(b)
    assert run_name(a, ["method=dpo", "trainer.lr=5e-4"]) == run_name(compose_config(["method=dpo", "trainer.lr=5e-4"]),
                                                                      ["method=dpo", "trainer.lr=5e-4"])
    assert run_name(a, ["trainer.lr=5e-4"]).startswith("reviews-tiny-s-dpo-s0,trainer.lr=5e-4--")
    # bookkeeping keys say where a job runs, not what it computes
    assert config_digest(a) == config_digest(compose_config(["method=dpo", "trainer.lr=5e-4", "results_dir=/x",
                                                             "sweep_name=other", "threads=1", "trainer.progress=false"]))
    long = readable_overrides([f"task.key{i}=value{i}" for i in range(20)] + ["method.beta=0.3"])
    assert long.startswith("method.beta=0.3,") and long.endswith(",+17") and len(long) < 100


@pytest.mark.parametrize("text", ["../../x", "/etc/passwd", "..", ".hidden", "a/b\\c", "x" * 500, ""])
def test_safe_component_never_leaves_its_folder(text, tmp_path):
    name = safe_component(text)
    assert "/" not in name and "\\" not in name and not name.startswith(".") and 0 < len(name) <= 120
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_a_run_name_that_tries_to_escape_stays_inside_results_dir(tmp_path, shared_cache):
    results = tmp_path / "inside" / "results"
    prefbench("run", "method=sft", "task.name=../../../escaped", f"results_dir={results}", f"cache_dir={shared_cache}",
              *SMOKE)
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.glob("*escaped*"))
    (run,) = (results / "runs").iterdir()
    assert run.name.startswith("_.._.._.._escaped-tiny-xs-sft-s0")
    bad = prefbench("run", "init=../../x", f"results_dir={results}", *SMOKE, check=False)
    assert bad.returncode == 2 and "init='../../x' is not allowed; allowed: auto, base, sft" in bad.stderr
    bad = prefbench("run", "sweep_name=../up", f"results_dir={results}", *SMOKE, check=False)
    assert bad.returncode == 2 and "sweep_name='../up' is not allowed" in bad.stderr
    assert sorted(p.name for p in results.iterdir()) == ["runs"]


def test_an_adhoc_grid_gets_its_own_folder_and_never_merges_jobs(tmp_path, shared_cache):
    """Two learning rates are two jobs, two folders, two rows, two series; nothing lands in `default`; a rerun
    skips both. Run under umask 027: every result file is written with the process's umask (0640)."""
    def umask_027():
        os.umask(0o027)

    exe = os.path.join(os.path.dirname(sys.executable), "prefbench")
    proc = subprocess.run([exe, "sweep", "method=dpo", "trainer.lr=5e-4,1e-3", "hydra.launcher.n_jobs=1",
                           f"results_dir={tmp_path}", f"cache_dir={shared_cache}", *SMOKE], cwd=REPO, check=True,
                          capture_output=True, text=True, preexec_fn=umask_027, timeout=600)
    (sweep,) = tmp_path.iterdir()
    run = next(p for p in sweep.iterdir() if p.name.startswith("reviews-"))
    for path in [run / "summary.json", run / "config.yaml", run / "metrics.jsonl", sweep / "runs.csv",
                 sweep / "report" / "index.html", sweep / "sweep.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert sweep.name.startswith("adhoc-") and "All 2 jobs done." in proc.stdout
    runs = sorted(p for p in sweep.iterdir() if p.name.startswith("reviews-"))
    assert ["trainer.lr=0.0005," in runs[0].name, "trainer.lr=0.001," in runs[1].name] == [True, True]
    assert sorted(OmegaConf.load(p / "config.yaml").trainer.lr for p in runs) == [0.0005, 0.001]
    csv = (sweep / "runs.csv").read_text().splitlines()
    assert len(csv) == 3
    page = (sweep / "report" / "index.html").read_text()
    assert "Swept besides method, model and seed: trainer.lr." in page
    assert "dpo [trainer.lr=0.0005]" in page and "dpo [trainer.lr=0.001]" in page
    again = prefbench("sweep", "method=dpo", "trainer.lr=5e-4,1e-3", "hydra.launcher.n_jobs=1", f"results_dir={tmp_path}",
                      f"cache_dir={shared_cache}", *SMOKE)
    assert again.stdout.count("done already, skipped") == 2 and [p.name for p in tmp_path.iterdir()] == [sweep.name]


def test_refused_jobs_are_counted_leave_no_folder_and_fail_the_sweep(tmp_path, shared_cache):
    """trainer.steps=0 is refused; strength=2 does not apply to SFT (it marks no field): counted apart, not done."""
    proc = prefbench("sweep", "method=sft", "trainer.steps=4,0", "strength=1,2", "hydra.launcher.n_jobs=1",
                     f"results_dir={tmp_path}", "sweep_name=grid", f"cache_dir={shared_cache}",
                     *[a for a in SMOKE if a != "trainer.steps=4"], check=False)
    line = "2 of 3 jobs are not done: 2 refused. 1 more not applicable (a swept setting that their method does not have)."
    assert proc.returncode == 1 and line in proc.stdout, proc.stdout
    assert proc.stderr.count("trainer.steps must be > 0 (got 0)") == 2
    assert proc.stderr.count("prefbench: skipped: strength=2: method sft marks no hyper-parameter") == 1
    assert [p.name.split(",")[0] for p in (tmp_path / "grid").glob("reviews-*")] == ["reviews-tiny-xs-sft-s0"]
    page = (tmp_path / "grid" / "report" / "index.html").read_text()
    assert line in page and "trainer.steps must be &gt; 0" in page


@pytest.mark.parametrize("args,message", [
    (["trainer.steps=0"], "trainer.steps must be > 0 (got 0)"),
    (["task=file"], "task.path must be set"),
])
def test_a_config_that_cannot_run_is_one_line_and_leaves_nothing(tmp_path, args, message):
    proc = prefbench("run", f"results_dir={tmp_path}", *args, check=False)
    assert proc.returncode == 2 and proc.stderr.count(message) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob("summary.json"))


def test_one_process_at_a_time_per_run_folder(tmp_path, shared_cache):
    args = ["run", "method=sft", f"results_dir={tmp_path}", f"cache_dir={shared_cache}", *SMOKE]
    prefbench(*args)
    assert "done already, skipped" in prefbench(*args).stdout  # a finished run is not trained again
    run = run_dir(tmp_path / "runs", "reviews-tiny-xs-sft-s0")
    metrics = (run / "metrics.jsonl").read_text()
    with FileLock(run / ".lock"):  # what a second `prefbench run` of this config sees while the first trains
        busy = prefbench(*args, "force=true", check=False)
    assert busy.returncode == 2 and "is being run by another process right now" in busy.stderr
    assert (run / "metrics.jsonl").read_text() == metrics
    # the real race: two processes started together; one trains, the other is refused
    exe = os.path.join(os.path.dirname(sys.executable), "prefbench")
    both = [subprocess.Popen([exe, *args, "force=true"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in both)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4, 6, 8, 10]  # every step once (0: the init's probe; SFT from base trains 6 + 4 steps)
    assert codes in ([0, 0], [0, 2])  # the second either waited for nothing (finished first) or was refused


def test_lost_workers_do_not_lose_their_jobs(tmp_path, shared_cache):
    """Workers killed with SIGKILL mid-training take the launcher down; the sweep still counts every job."""
    proc = prefbench("sweep", "method=sft,orpo,dpo", "hydra.launcher.n_jobs=2", f"results_dir={tmp_path}",
                     "sweep_name=lost", f"cache_dir={shared_cache}", *SMOKE, check=False,
                     env={"PREFBENCH_KILL_AT": "train_step_3"})
    assert proc.returncode == 1 and "the sweep stopped early" in proc.stderr, proc.stderr[-2000:]
    assert "3 of 3 jobs are not done:" in proc.stdout
    df = load_runs(tmp_path / "lost")
    assert len(df) == 3 and set(df["status"]) <= {"killed", "missing"}  # no process runs them any more
    assert "3 of 3 jobs are not done:" in (tmp_path / "lost" / "report" / "index.html").read_text()


def test_a_glob_sweep_is_planned_as_hydra_expands_it():
    """`method: glob(*)` (sweep=all_methods) needs Hydra's config loader to list the options; the plan had
    none ("ConfigLoader is not set") before it passed one."""
    from prefbench import methods
    from prefbench.job.config import register_resolvers
    from prefbench.job.sweep import plan

    register_resolvers()
    sweep_dir, jobs = plan(["sweep=all_methods"], lambda cfg: None)
    names = sorted({job.identity["method"] for job in jobs})
    assert sweep_dir.name == "all_methods" and len(jobs) == 3 * len(names)
    offline = {name for name, cls in methods.registry().items() if not cls.needs_samples}
    assert set(names) == offline  # every registered offline method has its yaml; the online ones are excluded
