"""One job: conf -> data -> model -> trainer(method) -> eval -> run folder. Top to bottom:

    run_job(cfg, run_dir)
      check_job                  config.validate + method_from_config: refuse before any folder exists
      _run_locked                skip a done run; write config.yaml and summary.json (status: running)
        _train_and_evaluate
          prepare(cfg)           pipeline: tokenizer, cleaned split, base stage, SFT stage -> Group
          build_view             views: the rows the method trains on
          init_checkpoint        pipeline: start from the base model or the group's SFT stage
          make_judging           judges: the run's judge (+ the gold reward beside a proxy), before the policy
          build_policy           pipeline: load it (+ LoRA adapters)
          refcache.cached        the reference's log-probs of the rows it will train on, cached per (start, view)
          Rollout                online methods: fresh samples, judged, scored by the reference
          train                  trainer: the loop, checkpoints, CurveSampler points along training
          evaluate               EvalSpec: samples, judge, win rates, KL, diversity -> samples.jsonl, prompts.jsonl
      summary.json               status done / failed with its error; cost/* and eval/* keys
      log_run                    track: the finished run to the trackers tracker= names (none by default)

A run folder holds config.yaml, metrics.jsonl, checkpoint/, samples.jsonl, summary.json and run.log (the
libraries' warnings). A job whose summary says ``done`` is skipped; an interrupted one resumes from its last
checkpoint; a failing one records its status and error instead of raising, so a sweep goes on.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import transformers
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from prefbench.data.views import build_view
from prefbench.eval.curve import CURVE_DIR, CurveSampler
from prefbench.eval.evaluate import evaluate
from prefbench.eval.judges import make_judging
from prefbench.eval.rollout import Rollout
from prefbench.eval.spec import EvalSpec
from prefbench.io.bars import shown as bars_shown
from prefbench.io.errors import UserError
from prefbench.io.faults import kill_point
from prefbench.io.naming import check_sweep_name, settings
from prefbench.io.results import read_json, write_atomic, write_json
from prefbench.io.stages import stage_info, stage_key
from prefbench.job.config import method_from_config, validate
from prefbench.job.export import write_hf_files
from prefbench.job.pipeline import build_policy, init_checkpoint, logprob_probe, offline_flops, prepare, run_spec
from prefbench.job.track import log_run, requested
from prefbench.model.compute import bound_heap, peak_memory_mb, release_memory, reset_peak_memory, training_cost
from prefbench.model.models import device as default_device
from prefbench.model.models import load_model, n_params
from prefbench.train import refcache
from prefbench.train.batches import trained_rows
from prefbench.train.trainer import Callbacks, NonFiniteTraining, Sources, train

def check_job(cfg: DictConfig) -> None:
    """Everything that can be said about a job's config before any folder or stage exists."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        raise UserError(f"{missing[0]} must be set (e.g. {missing[0]}=...): it has no default")
    check_sweep_name(cfg.sweep_name)
    validate(cfg)
    requested(cfg)  # an unknown tracker, or one whose library is missing
    method_from_config(cfg.method, cfg.strength)  # a bad method setting is refused here, before any folder


def run_job(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run (or skip, or resume) one job and return its summary. A config that cannot run raises UserError
    before any folder is made; a job that fails while running records it in its summary instead."""
    transformers.utils.logging.disable_progress_bar()  # also in launcher worker processes
    transformers.utils.logging.set_verbosity_error()
    if cfg.model.get("source") == "pretrained":  # multi-MB activation buffers; it costs system time (page faults)
        bound_heap()
    check_job(cfg)
    run_dir = Path(run_dir)
    sweep_dir = Path(cfg.results_dir) / cfg.sweep_name
    if run_dir.resolve().parent != sweep_dir.resolve():
        raise UserError(f"run folder {run_dir} is not inside {sweep_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(run_dir / ".lock", blocking=False), warnings_to(run_dir / "run.log"), \
                bars_shown(bool(cfg.trainer.progress)):
            return _run_locked(cfg, run_dir)
    except Timeout:
        raise UserError(f"{run_dir} is being run by another process right now; "
                        f"its result will appear there") from None


@contextlib.contextmanager
def warnings_to(log_path: Path):
    """The libraries' warnings during a job go to its ``run.log``, not the console (Python's filters still
    decide which are shown, e.g. each once per place)."""
    with warnings.catch_warnings(), log_path.open("a") as log:
        def show(message, category, filename, lineno, file=None, line=None):
            log.write(warnings.formatwarning(message, category, filename, lineno, line))
            log.flush()

        warnings.showwarning = show
        yield


def _run_locked(cfg: DictConfig, run_dir: Path) -> dict:
    config_text = OmegaConf.to_yaml(cfg, resolve=True)
    previous = read_json(run_dir / "summary.json", {})
    if previous.get("status") == "running":  # this process holds the lock: the one that wrote it is gone
        print(f"[prefbench] {run_dir}: its last run was killed during {previous.get('phase', 'its start')}; "
              f"running it again", file=sys.stderr)
    if previous and not cfg.force:
        saved = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else None
        if saved is not None and settings(OmegaConf.to_container(OmegaConf.create(saved))) != settings(cfg):
            raise UserError(f"{run_dir} holds a run with a different config; pass force=true to replace it, "
                            f"or sweep_name=<new name> to keep both")
        if previous.get("status") == "done":
            print(f"[prefbench] {run_dir}: done already, skipped")
            return previous
    if cfg.force:
        for stale in ("checkpoint", CURVE_DIR):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
    write_atomic(run_dir / "config.yaml", config_text)
    summary = {"status": "running", "run": run_dir.name, "method": cfg.method.name, "model": cfg.model.name,
               "task": cfg.task.name, "seed": int(cfg.seed), "error": None}
    write_json(run_dir / "summary.json", summary)
    t0 = time.perf_counter()
    try:
        summary |= _train_and_evaluate(cfg, run_dir)
        summary["status"] = summary.pop("eval_status", "done")
    except UserError as exc:
        summary |= {"status": "failed", "error": str(exc)}
    except NonFiniteTraining as exc:
        summary |= {"status": "failed", "error": str(exc)}
    except Exception as exc:  # a crash in one job must not stop the sweep; keep the trace for debugging
        write_atomic(run_dir / "error.log", traceback.format_exc())
        summary |= {"status": "failed", "error": f"{type(exc).__name__}: {exc} (traceback in error.log)"}
    summary["wall_seconds"] = time.perf_counter() - t0
    kill_point("summary")
    write_json(run_dir / "summary.json", summary)
    if tracker_errors := log_run(cfg, run_dir):
        write_json(run_dir / "summary.json", summary | {"tracker_errors": tracker_errors})
    print(f"[prefbench] {run_dir}: {summary['status']}" + (f" ({summary['error']})" if summary["error"] else
                                                            result_line(summary)),
          file=sys.stderr if summary["error"] else sys.stdout)
    return summary


def objective_value(cfg, summary: dict):
    """What a job returns to Hydra's sweeper: its summary, or with ``objective=KEY`` that summary number (NaN
    when the run has none, e.g. it failed: Optuna records such a trial as failed and goes on)."""
    if not cfg.get("objective"):
        return summary
    value = summary.get(str(cfg.objective))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def enter_phase(run_dir: Path, phase: str) -> None:
    """Record in a running job's summary.json the phase it is in: what a run killed from outside was doing."""
    release_memory()  # what the last phase freed, so the next one's peak does not sit on top of it
    write_json(run_dir / "summary.json", read_json(run_dir / "summary.json", {}) | {"phase": phase})


def result_line(summary: dict) -> str:
    """A finished job's headline, for the console: win rate against SFT, KL to the anchor, wall time."""
    parts = [f"{what} {summary[key]:.3f}" for key, what in (("eval/win_rate_vs_sft", "win rate vs SFT"),
                                                            ("eval/kl", "KL")) if summary.get(key) is not None]
    wall = f"{summary.get('wall_seconds') or 0:.0f} s"
    return f" ({', '.join(parts + [wall])})"


def _train_and_evaluate(cfg: DictConfig, run_dir: Path) -> dict:
    memory_how = reset_peak_memory()  # this job's own peak, also in a launcher worker that ran others
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    method = method_from_config(cfg.method, cfg.strength)
    enter_phase(run_dir, "data and stages")
    group, eval_spec = prepare(cfg), EvalSpec.from_config(cfg)
    counts = dict(group.data.counts)
    view = build_view(method.view, group.data.kind, group.data.train, int(cfg.seed))
    init, start = init_checkpoint(cfg, group, method)
    enter_phase(run_dir, "judge")  # before the policy is loaded: a judge trained here has the memory to itself
    judging = make_judging(cfg, group)
    model = build_policy(cfg, start)
    device = default_device()
    spec = run_spec(cfg, init, method, group.data)
    reference, ref_hit = None, None
    if method.needs_reference and not method.needs_samples:  # the policy's init; with LoRA, the weights minus adapters
        enter_phase(run_dir, "reference pass")
        lora = bool(cfg.model.get("lora"))
        reference, ref_hit = refcache.cached(
            cfg.cache_dir, stage_key("ref", {"start": str(start)}), view,
            (lambda: model) if lora else (lambda: load_model(start)), group.pad_id, 64, device,
            context=model.disable_adapter if lora else contextlib.nullcontext, statistics=method.statistics,
            rows=trained_rows(len(view), spec, int(os.environ.get("WORLD_SIZE", "1"))))
    ref_model, rollout = None, None
    # the reference runs beside the policy: its distributions are not cached, or it scores fresh samples. With
    # LoRA too it is the start checkpoint (the policy's weights under its adapters), loaded a second time
    if "reference_kl" in method.statistics or (method.needs_samples and method.needs_reference):
        ref_model = load_model(start).to(device).eval()
    if method.needs_samples:
        train_rows = group.data.train
        rollout = Rollout(method, view, dict(zip(map(tuple, train_rows["prompt_ids"]), train_rows["prompt"])),
                          group.tokenizer, judging.judge, eval_spec.sampling, ref_model,
                          int(cfg.seed), device)
    probe_view = build_view("paired", group.data.kind, group.data.eval, int(cfg.seed)) \
        if group.data.kind == "paired" else None
    sources = Sources(reference, ref_model if "reference_kl" in method.statistics else None, rollout)
    callbacks = Callbacks(logprob_probe(probe_view, group.pad_id) if probe_view else None,
                          CurveSampler(eval_spec, group, run_dir))
    enter_phase(run_dir, "training")
    stats = train(model, method, view, spec, run_dir, group.pad_id, sources,
                  callbacks, desc=run_dir.name)
    if (run_dir / "checkpoint").is_dir() and not cfg.model.get("lora"):  # LoRA weights load through `prefbench export`
        write_hf_files(run_dir / "checkpoint", group.tokenizer, eval_spec)
    size = n_params(model)
    # forward FLOPs ~ 2 N per token: an online run's sampling (prefill + new tokens) and the reference's scoring
    rollout_flops = 0 if rollout is None else 2 * size * (rollout.prompt_tokens + rollout.generated_tokens
                                                          + rollout.reference_tokens)
    summary = {
        "init": init, "n_params": size, **{f"method/{k}": v for k, v in vars(method).items()},
        "reference_cache_hit": ref_hit, "cost/reference_rows_scored": reference.rows_scored if reference else 0,
        "resumed_from_step": stats["resumed_from_step"],
        **{f"data/{k}": v for k, v in counts.items()},
        **{f"train/{k}": v for k, v in stats["final"].items()},
        "cost/train_seconds": stats["train_seconds"], "cost/train_tokens_per_s": stats["tokens_per_s"],
        "cost/mixed_precision": stats["mixed_precision"],
        **training_cost(size, stats, stage_info(group.sft_stage()).get("train") if init == "sft" else None,
                        rollout_flops),
        "cost/base_stage_seconds": stage_info(group.base).get("seconds"),
        "cost/sft_stage_seconds": stage_info(group.sft_stage()).get("seconds") if init == "sft" else None,
    }
    if rollout is not None:
        summary |= {"cost/rollout_generated_tokens": rollout.generated_tokens, "cost/rollout_flops": rollout_flops,
                    **{f"cost/rollout_{k}_seconds": v for k, v in rollout.seconds.items()}}
        if group.data.kind == "paired":  # this run's training and rollouts over the offline run's (DPO's) training
            summary["cost/flops_vs_offline"] = ((summary["cost/train_flops"] + rollout_flops)
                                                / offline_flops(cfg, group.data, size))
    c0 = time.process_time()
    enter_phase(run_dir, "evaluation")
    summary |= evaluate(eval_spec, group, model, run_dir, judging, stats["optimizer_steps"])
    summary["cost/eval_cpu_seconds"] = time.process_time() - c0
    summary |= {"cost/peak_memory_mb": peak_memory_mb(), "cost/peak_memory_how": memory_how}
    return summary
