"""The one trainer: every method, stage and device goes through ``train``.

Per optimizer step: ``grad_accum`` micro-batches, each one forward over the concatenated sequences of
the view's trained roles (plus a no-grad forward for its no-grad roles such as KTO's mismatched
completions), the method's loss (its per-example losses reduced here, its state threaded through),
backward; then gradient clipping, AdamW and the LR schedule.
A non-finite loss or gradient norm stops training before the optimizer step (NonFiniteTraining).
A checkpoint carries the cumulative trained tokens, train seconds and last logged metrics, so a
resumed run reports the cost and metrics of all its steps. With a probe, metrics.jsonl starts with a
step-0 row holding only the probe of the init model (written when training starts fresh; a resumed run
keeps the one it has). A ``curve`` callback (prefbench.eval.curve) is called with the model at its steps, step 0
included, outside packed attention and with the random state left as it was, so it changes no trained weight.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, is_initialized
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.modeling_layers import GradientCheckpointingLayer

from prefbench.data.views import View
from prefbench.io.checkpoint import load_checkpoint, save_checkpoint
from prefbench.io.faults import kill_point
from prefbench.io.results import MetricsLog
from prefbench.model.models import make_value_head, set_checkpointing
from prefbench.model.packing import packed_attention, unpacked
from prefbench.train.batches import batch_indices, check_micro_batch_fits, forward, optimizer_steps
from prefbench.train.distributed import check_world, gather_batch
from prefbench.train.metrics import uniform_metrics
from prefbench.train.refcache import ReferenceLogps
from prefbench.train.reuse import RolloutCycle, aligned_every
from prefbench.methods import Method


class NonFiniteTraining(RuntimeError):
    """Training met a non-finite value; raised before the optimizer step, so no weight is NaN-poisoned."""


class NonFiniteLoss(NonFiniteTraining):
    pass


class NonFiniteGradient(NonFiniteTraining):
    """A finite loss with a non-finite gradient, e.g. ORPO when a per-token mean log-prob is exactly 0."""


@dataclass
class TrainSpec:
    steps: int = 0
    epochs: float | None = None  # when set, steps = ceil(epochs * examples / examples per step)
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only the final checkpoint
    save_final: bool = True  # benchmarks against trainers that save nothing turn it off
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~20% more compute
    packing: bool = True  # padding-free forwards where the model allows (prefbench.model.packing); else length groups
    reward_beta: float = 0.1  # beta of the implicit reward in the uniform metrics
    seed: int = 0
    shuffle: bool = True  # False: examples in dataset order (benchmarks against other trainers)
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, none on CPU
    progress: bool = True


def make_accelerator(spec: TrainSpec) -> Accelerator:
    precision = spec.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # accelerate keeps one process-wide state, whose precision cannot change once set
    if is_initialized() and AcceleratorState().mixed_precision != precision:
        raise ValueError(f"trainer.mixed_precision={precision!r}, but this process already trains in "
                         f"{AcceleratorState().mixed_precision!r} (accelerate fixes it per process): "
                         f"run it in a process of its own")
    # cpu=True without CUDA: under torchrun accelerate then joins a gloo group instead of running alone
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=spec.grad_accum,
                              cpu=not torch.cuda.is_available())
    check_world(accelerator.num_processes)
    return accelerator


def enable_checkpointing(model) -> None:
    """Gradient checkpointing of every layer but the last. The last layer's recompute would run first
    in the backward, while every checkpoint is still held: keeping its activations instead costs no
    extra peak memory and saves 1/L of the recompute."""
    set_checkpointing(model, True)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    if len(layers) > 1:
        layers[-1].gradient_checkpointing = False


def _call_curve(curve, accelerator, model, step: int) -> None:
    if accelerator.is_main_process:
        inner = accelerator.unwrap_model(model)
        with unpacked(inner), torch.random.fork_rng(devices=[]):
            curve(inner, step)
        model.train()
    accelerator.wait_for_everyone()


@dataclass
class Sources:
    """Where the reference's statistics, and an online method's sequences, come from.

    cached: the reference's log-probs of the view's sequences, computed before training.
    model: the reference model itself, for a method that asks for the ``reference_kl`` statistic (its
        distributions are not cached: it runs beside the policy).
    rollout: the seam for methods that train on fresh samples (``needs_samples``), called as
        ``rollout(model, indices, step)`` for each micro-batch of the view's examples (with the unwrapped
        model, outside packed attention) and returning ``(View, ReferenceLogps | None)``: the sequences to
        train on, with judge scores in ``View.scores``, and the reference's statistics of them. Its
        ``state_dict()`` (cost counters), if it has one, goes into the checkpoint. Each rollout serves
        ``method.updates_per_rollout`` steps (``prefbench.train.reuse``: pi_old, checkpoints at rollout
        boundaries).
    """
    cached: ReferenceLogps | None = None
    model: torch.nn.Module | None = None
    rollout: Callable | None = None


@dataclass
class Callbacks:
    """What training reports to, without changing a trained weight.

    probe: ``probe(model) -> dict`` of metrics, logged at step 0 (a fresh start) and at every log step.
    curve: ``curve(model, step)`` at the steps ``curve.steps(total_steps)`` names (evaluation along
        training), step 0 included, outside packed attention and with the random state left as it was.
    """
    probe: Callable | None = None
    curve: Callable | None = None


@dataclass
class _Loop:
    """The training loop's objects and running totals (restored from the checkpoint on a resume)."""
    accelerator: Accelerator
    model: torch.nn.Module
    value_head: torch.nn.Module | None
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    cycle: RolloutCycle | None
    log: MetricsLog | None
    start_step: int
    steps: int
    tokens: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    last: dict = field(default_factory=dict)
    state: dict | None = None


def train(model, method: Method, view: View, spec: TrainSpec, out_dir: Path, pad_id: int,
          sources: Sources = Sources(), callbacks: Callbacks = Callbacks(), desc: str = "train") -> dict:
    """Train ``model`` in place; checkpoints and metrics.jsonl go to ``out_dir``. Resumes from
    ``out_dir/checkpoint`` when one exists. A method that asks for ``values`` gets the trainer's value head
    (``make_value_head``), trained with the policy and kept in the checkpoint's trainer state, never in the
    policy's weights. A stateful method's state is threaded through its losses and saved with the optimizer.
    Returns the final metrics and compute statistics."""
    _check_sources(method, sources)
    loop = _start(model, method, view, spec, out_dir, sources)
    spec = replace(spec, steps=loop.steps)
    curve_at = callbacks.curve.steps(spec.steps) if callbacks.curve is not None else set()
    checkpoint_every = aligned_every(spec.checkpoint_every, method.updates_per_rollout)
    accelerator = loop.accelerator
    bar = tqdm(range(loop.start_step, spec.steps), desc=desc, initial=loop.start_step, total=spec.steps,
               disable=None if spec.progress and accelerator.is_main_process else True, leave=False)  # None: off-TTY
    with packed_attention(loop.model, spec.packing):  # spans the backward: checkpointing re-runs layers there
        if loop.start_step == 0:
            _log_init(loop, callbacks, curve_at)
        for step in bar:
            done = step + 1
            logging = done % spec.log_every == 0 or done == spec.steps
            step_metrics = _optimizer_step(loop, method, view, spec, pad_id, sources, step, logging)
            if logging:
                _log_step(loop, spec, step_metrics, done, callbacks.probe)
                bar.set_postfix(loss=f"{loop.last['loss']:.3f}")
            if (done == spec.steps and spec.save_final) or (checkpoint_every and done % checkpoint_every == 0):
                _save(loop, out_dir, done, sources.rollout)
            if done in curve_at and done < spec.steps:  # the end: the run's full evaluation
                _call_curve(callbacks.curve, accelerator, loop.model, done)
            kill_point(f"train_step_{done}")
    bar.close()
    model = accelerator.unwrap_model(loop.model)
    if spec.gradient_checkpointing:
        set_checkpointing(model, False)
    model.eval()
    return {"final": loop.last, "train_tokens": loop.tokens, "train_seconds": loop.seconds,
            "train_cpu_seconds": loop.cpu_seconds, "optimizer_steps": spec.steps,
            "tokens_per_s": loop.tokens / max(loop.seconds, 1e-9), "resumed_from_step": loop.start_step,
            "method_state": loop.state, "mixed_precision": accelerator.mixed_precision}


def _check_sources(method: Method, sources: Sources) -> None:
    if method.needs_reference and sources.cached is None and sources.rollout is None:
        raise ValueError(f"method {method.name} needs reference log-probs")
    if "reference_kl" in method.statistics and sources.model is None:
        raise ValueError(f"method {method.name} asks for reference_kl: train() needs the reference model")
    if method.needs_samples and sources.rollout is None:
        raise ValueError(f"method {method.name} trains on fresh samples of the policy: train() needs a rollout")


def _start(model, method: Method, view: View, spec: TrainSpec, out_dir: Path, sources: Sources) -> _Loop:
    """The accelerator, optimizer and schedule; the checkpoint's weights, totals and method state on a resume."""
    accelerator = make_accelerator(spec)
    spec = replace(spec, steps=optimizer_steps(spec, len(view), accelerator.num_processes))
    if not method.needs_samples:  # an online run's micro-batches are its samples, bounded by max_new_tokens
        check_micro_batch_fits(model, view, spec.batch_size, spec.gradient_checkpointing)
    torch.manual_seed(spec.seed)
    value_head = make_value_head(model, spec.seed).to(model.device) if "values" in method.statistics else None
    trained = [model] + [value_head] * (value_head is not None)
    optimizer = torch.optim.AdamW([p for m in trained for p in m.parameters()], lr=spec.lr,
                                  weight_decay=spec.weight_decay, fused=True)
    scheduler = get_scheduler(spec.scheduler, optimizer, num_warmup_steps=math.ceil(spec.warmup_ratio * spec.steps),
                              num_training_steps=spec.steps)
    start_step, progress = load_checkpoint(out_dir / "checkpoint", model, optimizer, scheduler)
    state = method.initial_state()
    if state is not None and start_step:
        state = progress["method_state"]
    if value_head is not None and start_step:
        value_head.load_state_dict(progress["value_head"])
    if sources.rollout is not None and "rollout" in progress:  # its cost counters, for the steps before the resume
        sources.rollout.load_state_dict(progress["rollout"])
    if spec.gradient_checkpointing:
        enable_checkpointing(model)
    *trained, optimizer = accelerator.prepare(*trained, optimizer)  # the schedule counts optimizer steps: not prepared
    if sources.model is not None:
        sources.model.to(accelerator.device).eval().requires_grad_(False)
    trained[0].train()
    return _Loop(accelerator, trained[0], trained[1] if value_head is not None else None,
                 [p for m in trained for p in m.parameters()], optimizer, scheduler,
                 RolloutCycle(sources.rollout, method.updates_per_rollout) if method.needs_samples else None,
                 MetricsLog(out_dir / "metrics.jsonl", start_step) if accelerator.is_main_process else None,
                 start_step, spec.steps, progress.get("tokens", 0), progress.get("seconds", 0.0),
                 progress.get("cpu_seconds", 0.0), progress.get("last", {}), state)


def _log_init(loop: _Loop, callbacks: Callbacks, curve_at: set[int]) -> None:
    """Where the log-prob dynamics and the curve start: the init model, as step 0."""
    if callbacks.probe is not None:
        init_probe = callbacks.probe(loop.accelerator.unwrap_model(loop.model))
        loop.model.train()
        if init_probe and loop.accelerator.is_main_process:
            loop.log.append({"step": 0} | init_probe)
    if 0 in curve_at:
        _call_curve(callbacks.curve, loop.accelerator, loop.model, 0)


def _optimizer_step(loop: _Loop, method: Method, view: View, spec: TrainSpec, pad_id: int, sources: Sources,
                    step: int, logging: bool) -> list[dict]:
    """One optimizer step over ``grad_accum`` micro-batches; each micro-batch's metrics when ``logging`` (the
    metrics' host syncs are spent only on the steps that log them)."""
    accelerator, device = loop.accelerator, loop.accelerator.device
    t0, c0 = time.perf_counter(), time.process_time()
    step_metrics: list[dict] = []
    for micro in range(spec.grad_accum):
        shards = [batch_indices(len(view), spec.batch_size, spec.seed, step * spec.grad_accum + micro,
                                rank, accelerator.num_processes, spec.shuffle)
                  for rank in range(accelerator.num_processes)]  # shard r is rank r's part of the batch
        indices = shards[accelerator.process_index]
        batch_view, batch_ref = (loop.cycle.samples(loop.model, accelerator, micro, indices, step) if loop.cycle
                                 else (view, sources.cached))
        rows = range(len(batch_view)) if method.needs_samples else indices
        with accelerator.accumulate(loop.model, *[loop.value_head] * (loop.value_head is not None)):
            with accelerator.autocast():
                policy, index = forward(loop.model, batch_view, rows, pad_id, device, method.statistics,
                                        sources.model if "reference_kl" in method.statistics else None,
                                        loop.value_head)
            policy = loop.cycle.with_old(micro, policy) if loop.cycle else policy
            ref = batch_ref.lookup(index, device) if batch_ref is not None else None
            # every process scores the global micro-batch (prefbench.train.distributed: exact for every loss)
            policy, ref = gather_batch(policy), gather_batch(ref)
            ref = ref if method.needs_reference else None
            out = method.loss(policy, ref) if loop.state is None else method.loss(policy, ref, loop.state)
            loss = out.total()
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"non-finite loss ({float(loss)}) at step {step + 1}")
            if out.state is not None:
                loop.state = {k: v.detach() for k, v in out.state.items()}
            accelerator.backward(loss)
            _clip_and_step(loop, spec, step)
        loop.tokens += (int(accelerator.reduce(torch.tensor(batch_view.n_tokens(rows), device=device), "sum"))
                        if method.needs_samples else view.n_tokens([i for shard in shards for i in shard]))
        if logging:
            m = uniform_metrics(policy, ref, spec.reward_beta, batch_view.spec)
            step_metrics.append(m | {k: float(v) for k, v in out.metrics.items()} | {"loss": float(loss.detach())})
    loop.seconds += time.perf_counter() - t0
    loop.cpu_seconds += time.process_time() - c0
    return step_metrics


def _clip_and_step(loop: _Loop, spec: TrainSpec, step: int) -> None:
    """Clipping and the optimizer and schedule steps, which accelerate applies at a step's last micro-batch."""
    accelerator = loop.accelerator
    if accelerator.sync_gradients:  # max_norm inf: the total norm, grads left as they are
        norm = accelerator.clip_grad_norm_(loop.params, spec.max_grad_norm if spec.max_grad_norm > 0 else math.inf)
        # fp16's grad scaler skips a step with inf/nan gradients by design; else it is a bug
        if norm is not None and accelerator.scaler is None and not math.isfinite(float(norm)):
            raise NonFiniteGradient(f"non-finite gradient (norm {float(norm)}) at step {step + 1}")
    loop.optimizer.step()  # accelerate skips it until the last micro-batch of the step
    if accelerator.sync_gradients:
        loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)


def _log_step(loop: _Loop, spec: TrainSpec, step_metrics: list[dict], done: int, probe) -> None:
    """The step's metrics, averaged over its micro-batches, with the probe's; appended to metrics.jsonl."""
    last = {k: sum(m[k] for m in step_metrics if k in m) / sum(k in m for m in step_metrics)
            for k in step_metrics[-1]}
    last |= {"step": done, "lr": loop.scheduler.get_last_lr()[0], "tokens_per_s": loop.tokens / max(loop.seconds, 1e-9)}
    if probe is not None:
        last |= probe(loop.accelerator.unwrap_model(loop.model))
        loop.model.train()
    if loop.accelerator.is_main_process:
        loop.log.append(last)
    loop.last = last


def _save(loop: _Loop, out_dir: Path, done: int, rollout) -> None:
    accelerator = loop.accelerator
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    progress = {"tokens": loop.tokens, "seconds": loop.seconds, "cpu_seconds": loop.cpu_seconds, "last": loop.last}
    if loop.state is not None:
        progress["method_state"] = loop.state
    if loop.value_head is not None:
        progress["value_head"] = accelerator.unwrap_model(loop.value_head).state_dict()
    if hasattr(rollout, "state_dict"):
        progress["rollout"] = rollout.state_dict()
    save_checkpoint(out_dir / "checkpoint", accelerator.unwrap_model(loop.model), loop.optimizer, loop.scheduler,
                    done, progress)
