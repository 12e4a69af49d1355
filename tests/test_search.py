"""Hyper-parameter search with Hydra's Optuna sweeper (conf/sweep/optuna.yaml): each trial is one job that returns
the number ``objective=`` names; Hydra idioms on the sweep command (``hydra.sweep.dir=``, ``--cfg job``)."""
import json
import math

import yaml
from omegaconf import OmegaConf

from prefbench.job.run import objective_value
from tests.conftest import SMOKE, prefbench


def test_the_optuna_preset_searches_and_reports_in_the_folder_hydra_sweep_dir_names(tmp_path, shared_cache):
    folder = tmp_path / "elsewhere" / "search"
    out = prefbench("sweep", "sweep=optuna", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={folder}",
                    f"cache_dir={shared_cache}", *SMOKE)
    assert "All 3 jobs done." in out.stdout and f"report: {folder / 'report' / 'index.html'}" in out.stdout
    assert "setup plugin" not in out.stdout + out.stderr  # library logging stays out of the console
    runs = [p for p in folder.iterdir() if (p / "summary.json").exists()]
    summaries = {p.name: json.loads((p / "summary.json").read_text()) for p in runs}
    configs = {p.name: OmegaConf.load(p / "config.yaml") for p in runs}
    assert len(runs) == 3 and all(s["status"] == "done" for s in summaries.values())
    assert {c.eval.split for c in configs.values()} == {"val"}  # trials are judged on the validation prompts
    assert len({c.trainer.lr for c in configs.values()}) == 3  # Optuna chose three learning rates
    best = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    top = max(summaries, key=lambda r: summaries[r]["eval/score_mean"])
    assert best["best_value"] == summaries[top]["eval/score_mean"]  # what each job returned: its objective
    assert best["best_params"] == {"trainer.lr": configs[top].trainer.lr, "strength": configs[top].strength}
    assert (folder / "report" / "index.html").exists() and not (tmp_path / "results").exists()


def test_a_job_returns_its_summary_or_the_objective_number():
    summary = {"status": "done", "eval/win_rate_vs_sft": 0.75}
    assert objective_value(OmegaConf.create({"objective": None}), summary) is summary
    assert objective_value(OmegaConf.create({"objective": "eval/win_rate_vs_sft"}), summary) == 0.75
    failed = objective_value(OmegaConf.create({"objective": "eval/win_rate_vs_sft"}), {"status": "failed"})
    assert math.isnan(failed)  # Optuna records the trial as failed and goes on


def test_sweep_cfg_job_prints_the_config_and_runs_nothing(tmp_path):
    out = prefbench("sweep", "--cfg", "job", "sweep=beta", f"results_dir={tmp_path}")
    assert "sweep_name: beta" in out.stdout and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())
    both = prefbench("sweep", f"hydra.sweep.dir={tmp_path}/x", f"results_dir={tmp_path}", check=False)
    assert both.returncode == 2 and "not both" in both.stderr
