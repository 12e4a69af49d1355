"""`prefbench export RUN_DIR DEST`: a finished run's policy as a Hugging Face model folder.

DEST holds what ``AutoModelForCausalLM.from_pretrained`` and ``pipeline("text-generation")`` load, and what
lm-eval or AlpacaEval take: the weights in safetensors (a LoRA run's adapters merged in), config.json, the
run's tokenizer (its chat template included when the task has one), generation_config.json with the sampling
the run was evaluated with, and a model card (README.md) with the run's method, settings and metrics. It is
written to a sibling folder and renamed into place, so a killed export leaves no half-written model.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import OmegaConf

from prefbench.eval.sampling import sampling_config
from prefbench.eval.spec import EvalSpec
from prefbench.io.checkpoint import load_weights
from prefbench.io.errors import UserError
from prefbench.io.results import read_json
from prefbench.job.config import method_from_config
from prefbench.job.pipeline import build_policy, init_checkpoint, prepare

CARD_METRICS = (  # (summary key, what it is), in the card's order
    ("eval/win_rate_vs_sft", "win rate against the SFT policy (judge: {judge})"),
    ("eval/win_rate_vs_chosen", "win rate against the held-out chosen replies"),
    ("eval/score_mean", "mean judge score of its samples"),
    ("eval/kl", "KL(policy || SFT) on the held-out prompts, nats"),
    ("eval/reward_accuracy", "held-out pairs ranked right by the implicit reward"),
    ("eval/response_tokens_mean", "mean response length, tokens"),
    ("cost/total_train_flops", "training FLOPs, its init stage and rollouts included"),
)


def export(run_dir: Path, dest: Path) -> Path:
    """Write the run's final policy to ``dest`` (which must not exist or be empty); returns ``dest``."""
    run_dir, dest = Path(run_dir), Path(dest)
    summary = read_json(run_dir / "summary.json", {})
    if not (run_dir / "config.yaml").exists() or not (run_dir / "checkpoint" / "model.safetensors").exists() \
            or summary.get("status") not in ("done", "partial"):
        raise UserError(f"{run_dir}: not a finished run folder (needs config.yaml, checkpoint/ and a done summary)")
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest}: exists and is not empty; export writes a new folder")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    group = prepare(cfg)
    _, start = init_checkpoint(cfg, group, method_from_config(cfg.method, cfg.strength))
    model = load_weights(build_policy(cfg, start), run_dir / "checkpoint")
    if cfg.model.get("lora"):
        model = model.merge_and_unload()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    write_hf_files(tmp, group.tokenizer, EvalSpec.from_config(cfg))
    (tmp / "README.md").write_text(model_card(cfg, summary, run_dir.name))
    if dest.exists():
        dest.rmdir()
    tmp.rename(dest)
    return dest


def write_hf_files(folder: Path, tokenizer, spec: EvalSpec) -> None:
    """Beside a policy's weights and config.json: its tokenizer (with the chat template when it has one) and
    generation_config.json with the sampling it is evaluated with, so transformers loads it as it is."""
    tokenizer.save_pretrained(folder)
    sampling_config(spec.sampling, tokenizer.eos_token_id, tokenizer.pad_token_id, k=1).save_pretrained(folder)


def model_card(cfg, summary: dict, run: str) -> str:
    """The model card: what was trained how, and the run's metrics (95% CIs where the run has them)."""
    method = OmegaConf.to_container(cfg.method, resolve=True)
    settings = ", ".join(f"{k}={v}" for k, v in method.items() if k not in ("name", "tuned"))
    rows = []
    for key, what in CARD_METRICS:
        value = summary.get(key)
        if value is None:
            continue
        low, high = summary.get(f"{key}_ci_low"), summary.get(f"{key}_ci_high")
        ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        shown = f"{value:.3g}" if abs(value) >= 1e4 else f"{value:.3f}"
        rows.append(f"| {what.format(judge=cfg.judge.name)} | {shown}{ci} |")
    return "\n".join([
        "---", "library_name: transformers", f"tags: [prefbench, {method['name']}]", "---", "",
        f"# {run}", "",
        f"Trained by prefbench with **{method['name']}** ({settings}) from the {summary.get('init', '?')} "
        f"checkpoint of `{cfg.model.name}` on the task `{cfg.task.name}`, seed {cfg.seed}: "
        f"{summary.get('train/step', '?')} optimizer steps at learning rate {cfg.trainer.lr}.", "",
        "| metric | value (95% CI) |", "|---|---|", *rows, "",
        "```python", "from transformers import pipeline", "",
        'generate = pipeline("text-generation", model="PATH/TO/THIS/FOLDER")',
        "```", ""])
