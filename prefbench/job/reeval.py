"""`prefbench eval RUN_DIR [judge=NAME] [key=value ...]`: evaluate a finished run again, without retraining."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from prefbench import CONF_DIR
from prefbench.eval.evaluate import evaluate
from prefbench.eval.judges import make_judging
from prefbench.eval.spec import EvalSpec
from prefbench.io.checkpoint import load_weights
from prefbench.io.errors import UserError
from prefbench.io.results import read_json, write_json
from prefbench.job.config import method_from_config, options
from prefbench.job.pipeline import build_policy, init_checkpoint, prepare

GROUPS = ("judge", "eval")


def reevaluate(run_dir: Path, overrides: list[str]) -> dict:
    if not (run_dir / "config.yaml").exists() or not (run_dir / "checkpoint" / "model.safetensors").exists():
        raise UserError(f"{run_dir}: not a finished run folder (needs config.yaml and checkpoint/)")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    for item in overrides:
        key, _, value = item.partition("=")
        if key in GROUPS:
            allowed = options(key)
            if value not in allowed:
                raise UserError(f"{key}={value!r} is unknown; allowed: {', '.join(allowed)}")
            cfg[key] = OmegaConf.load(CONF_DIR / key / f"{value}.yaml")
        else:
            cfg.merge_with(OmegaConf.from_dotlist([item]))
    group = prepare(cfg)
    _, start = init_checkpoint(cfg, group, method_from_config(cfg.method, cfg.strength))
    model = load_weights(build_policy(cfg, start), run_dir / "checkpoint")
    summary = read_json(run_dir / "summary.json", {})
    summary = {k: v for k, v in summary.items() if not k.startswith("eval/")} | evaluate(
        EvalSpec.from_config(cfg), group, model, run_dir, make_judging(cfg, group), summary.get("train/step"))
    summary["status"] = summary.pop("eval_status")
    write_json(run_dir / "summary.json", summary)
    return summary
