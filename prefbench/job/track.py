"""Experiment trackers: each run's training metrics, evaluation, config and samples, through accelerate's
tracker classes (``tracker=tensorboard,mlflow,wandb,trackio``: one or several at once).

A run is logged when it ends (done, partial or failed), from its folder: the rows of metrics.jsonl and
curve.jsonl at their optimizer steps (``train/...``, ``curve/...``), the summary's numbers at the last step
(``eval/...``, ``cost/...``), the flattened config as hyper-parameters and the first ``SAMPLES_LOGGED``
samples as a table. Logging the folder rather than the loop means a run resumed after a kill is logged
once and whole. Runs are grouped per sweep so they compare side by side: TensorBoard under
``<tracker_dir>/tensorboard/<sweep>/<run>``, an MLflow experiment named after the sweep (in MLflow's
SQLite store ``<tracker_dir>/mlflow.db`` unless MLFLOW_TRACKING_URI says otherwise), a W&B group and a trackio
group in the project ``tracker_project``. prefbench hands no key to any tracker: W&B reads its own login or environment
(WANDB_MODE=offline logs without network; ``wandb sync`` uploads later). A tracker that fails is reported in
one line and in the summary's ``tracker_errors``; the run keeps its status.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from prefbench.io.errors import UserError
from prefbench.io.naming import settings
from prefbench.io.results import read_json

TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")
SAMPLES_LOGGED = 200
SAMPLE_COLUMNS = ("prompt_index", "prompt", "response", "score", "response_tokens")


def requested(cfg: DictConfig) -> list[str]:
    """The trackers ``cfg.tracker`` names (a list, or one comma-separated string); refuses an unknown one or
    one whose library is not installed, before the run starts."""
    value = cfg.get("tracker") or []
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, ListConfig)) else [value]
    names = list(dict.fromkeys(n.strip() for item in items for n in str(item).split(",") if n.strip()))
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"tracker={name!r} is unknown; allowed: {', '.join(TRACKERS)} (several: tracker=a,b)")
        if importlib.util.find_spec(name) is None:
            raise UserError(f"tracker={name} needs the {name} package: pip install 'prefbench[trackers]'")
    return names


def _open(name: str, cfg: DictConfig, run: str):
    """accelerate's tracker ``name`` for this run, started."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    sweep, project, where = str(cfg.sweep_name), str(cfg.tracker_project), Path(cfg.tracker_dir).resolve()
    cls = LOGGER_TYPE_TO_CLASS[name]
    if name == "tensorboard":
        tracker = cls(run, str(where / "tensorboard" / sweep))
    elif name == "mlflow":
        import mlflow

        if "MLFLOW_TRACKING_URI" not in os.environ:  # MLflow's local store (its file store is retired)
            where.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(f"sqlite:///{where / 'mlflow.db'}")
        tracker = cls(experiment_name=sweep, logging_dir=(where / "mlflow-artifacts" / sweep).as_uri(), run_name=run,
                      tags={"prefbench.sweep": sweep})  # artifacts (the samples table) beside the store, not in cwd
    elif name == "wandb":
        where.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        tracker = cls(project, name=run, group=sweep, dir=str(where), reinit="finish_previous")
    else:
        os.environ.setdefault("TRACKIO_DIR", str(where / "trackio"))
        tracker = cls(project, name=run, group=sweep, auto_log_cpu=False, auto_log_gpu=False)
    tracker.start()
    return tracker


def _numbers(row: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def by_step(run_dir: Path) -> dict[int, dict]:
    """What a run logs at each optimizer step, in step order (trackers such as W&B refuse a step that goes
    back): its training rows, its curve points, and the summary's numbers at its last step."""
    steps: dict[int, dict] = {}
    for name, prefix in (("metrics.jsonl", "train/"), ("curve.jsonl", "curve/")):
        for row in _jsonl(run_dir / name):
            steps.setdefault(int(row.get("step", 0)), {}).update(_numbers(row, prefix))
    summary = read_json(run_dir / "summary.json", {})
    last = max(steps, default=int(summary.get("train/step") or 0))
    steps.setdefault(last, {}).update(_numbers({k: v for k, v in summary.items() if k.startswith(("eval/", "cost/"))},
                                               ""))
    return dict(sorted(steps.items()))


def hyperparameters(run_dir: Path) -> dict:
    """The run's config, flattened to scalar key/value pairs (lists as their text), plus its status."""
    from prefbench.job.sweep import flatten

    config = settings(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
    flat = {k: v if isinstance(v, (bool, int, float, str)) or v is None else str(v) for k, v in flatten(config).items()}
    return flat | {"status": str(read_json(run_dir / "summary.json", {}).get("status"))}


def _samples(run_dir: Path) -> list[list]:
    from prefbench.eval.llm_judge import prompt_text

    rows = _jsonl(run_dir / "samples.jsonl")[:SAMPLES_LOGGED]
    return [[r.get("prompt_index"), prompt_text(r.get("prompt", "")), r.get("response"), r.get("score"),
             r.get("response_tokens")] for r in rows]


def _log_samples(name: str, tracker, rows: list[list], step: int) -> None:
    if not rows:
        return
    if name == "wandb":
        tracker.log_table("samples", columns=list(SAMPLE_COLUMNS), data=rows, step=step)
    elif name == "mlflow":
        import mlflow

        mlflow.log_table({c: [r[i] for r in rows] for i, c in enumerate(SAMPLE_COLUMNS)}, "samples.json")
    elif name == "trackio":
        import pandas as pd
        import trackio

        tracker.log({"samples": trackio.Table(dataframe=pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS)))}, step=step)
    else:  # TensorBoard's text dashboard renders markdown
        head = "| " + " | ".join(SAMPLE_COLUMNS) + " |\n|" + "---|" * len(SAMPLE_COLUMNS)
        lines = ["| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in r) + " |" for r in rows]
        tracker.log({"samples": "\n".join([head, *lines])}, step=step)


def log_run(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    """Log the finished run in ``run_dir`` to every tracker ``cfg`` asks for; returns {tracker: error} for
    those that failed (each also printed in one line). The trackers' own banners are not printed."""
    names = requested(cfg)
    if not names:
        return {}
    steps, config, samples = by_step(run_dir), hyperparameters(run_dir), _samples(run_dir)
    errors = {}
    for name in names:
        tracker = None
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                tracker = _open(name, cfg, run_dir.name)
                tracker.store_init_configuration(config)
                for step, values in steps.items():
                    tracker.log(values, step=step)
                _log_samples(name, tracker, samples, max(steps))
                tracker.finish()
        except Exception as exc:  # a tracker's failure (no login, a full disk) must not fail a finished run
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"[prefbench] {run_dir}: tracker {name} failed ({errors[name]})", file=sys.stderr)
            if tracker is not None:
                with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
                    tracker.finish()
    if len(errors) < len(names):
        print(f"[prefbench] {run_dir.name}: logged to {', '.join(n for n in names if n not in errors)} "
              f"({cfg.tracker_dir})")
    return errors
