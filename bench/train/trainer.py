"""The one trainer: every method, stage and device goes through ``train``.

Per optimizer step: ``grad_accum`` micro-batches, each one forward over the concatenated sequences of
the view's trained roles (plus a no-grad forward for its no-grad roles such as KTO's mismatched
completions), the method's loss (its per-example losses reduced here, its state threaded through),
backward; then gradient clipping, AdamW and the LR schedule.
A non-finite loss or gradient norm stops training before the optimizer step (NonFiniteTraining).
A checkpoint carries the cumulative trained tokens, train seconds and last logged metrics, so a
resumed run reports the cost and metrics of all its steps. With a probe, metrics.jsonl starts with a
step-0 row holding only the probe of the init model (written when training starts fresh; a resumed run
keeps the one it has). A ``curve`` callback (bench.eval.curve) is called with the model at its steps, step 0
included, outside packed attention and with the random state left as it was, so it changes no trained weight.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.modeling_layers import GradientCheckpointingLayer

from bench.data.views import View, pad_batch
from bench.io.checkpoint import load_checkpoint, save_checkpoint
from bench.io.faults import kill_point
from bench.io.results import MetricsLog
from bench.model.logprobs import sequence_logps
from bench.model.models import make_value_head
from bench.model.packing import packed_attention, unpacked
from bench.train.distributed import check_world, gather_batch
from bench.train.metrics import uniform_metrics
from bench.train.refcache import ReferenceLogps
from bench.train.reuse import RolloutCycle, aligned_every
from methods import BatchLogps, Method, SeqLogps


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
    packing: bool = True  # padding-free forwards where the model allows (bench.model.packing); else length groups
    reward_beta: float = 0.1  # beta of the implicit reward in the uniform metrics
    seed: int = 0
    shuffle: bool = True  # False: examples in dataset order (benchmarks against other trainers)
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, none on CPU
    progress: bool = True


def make_accelerator(spec: TrainSpec) -> Accelerator:
    precision = spec.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # accelerate keeps one process-wide state; a process that trains several stages, or that also ran
    # another library's trainer, must be able to set precision again. The distributed set-up is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True without CUDA: under torchrun accelerate then joins a gloo group instead of running alone
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=spec.grad_accum,
                              cpu=not torch.cuda.is_available())
    check_world(accelerator.num_processes)
    return accelerator


def enable_checkpointing(model) -> None:
    """Gradient checkpointing of every layer but the last. The last layer's recompute would run first
    in the backward, while every checkpoint is still held: keeping its activations instead costs no
    extra peak memory and saves 1/L of the recompute."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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


def batch_indices(n: int, batch_size: int, seed: int, micro_step: int, rank: int = 0, world: int = 1,
                  shuffle: bool = True) -> list[int]:
    """Example indices of micro-batch number ``micro_step``: a fresh seeded shuffle every epoch,
    so the order is reproducible and resumable from any step."""
    per_epoch = max(1, n // (batch_size * world))
    epoch, k = divmod(micro_step, per_epoch)
    order = list(range(n))
    if shuffle:
        random.Random(seed * 100_003 + epoch).shuffle(order)
    start = (k * world + rank) * batch_size
    return order[start: start + batch_size]


def forward(model, view: View, indices: list[int], pad_id: int, device, statistics: frozenset[str] = frozenset(),
            reference_model=None, value_head=None) -> tuple[BatchLogps, dict]:
    """Policy statistics of a micro-batch by role, and the example index of each role: one forward with
    grad for the view's trained roles (concatenated), one without grad for its no-grad roles. Every trained
    role is present, with zero sequences when the micro-batch has none. ``statistics``: what the method asks
    for besides the sums (``methods.base.STATISTICS``; ``reference_kl`` runs ``reference_model`` too, ``values``
    applies ``value_head``);
    a view of fresh samples (``View.scores``) adds each sequence's judge score."""
    spec = view.spec
    trained = pad_batch(view, indices, spec.roles, pad_id).to(device)
    stats = sequence_logps(model, trained, statistics=statistics, reference=reference_model, value_head=value_head)
    index = dict(trained.index)
    probe = pad_batch(view, indices, spec.no_grad_roles, pad_id) if spec.no_grad_roles else None
    if probe is not None:
        with torch.no_grad():
            stats |= sequence_logps(model, probe.to(device), statistics=statistics, reference=reference_model,
                                    value_head=value_head)
        index |= probe.index
    some = next(iter(stats.values()))
    for role in spec.roles:
        if role not in stats:
            stats[role] = SeqLogps(**{f.name: getattr(some, f.name).new_zeros((0,) * getattr(some, f.name).dim())
                                      for f in fields(SeqLogps) if getattr(some, f.name) is not None})
            index[role] = torch.zeros(0, dtype=torch.long, device=device)
    for role, scores in view.scores.items():
        if role in stats:
            stats[role] = replace(stats[role], score=torch.tensor(scores, device=device)[index[role]])
    return BatchLogps(**stats), index


def train(model, method: Method, view: View, spec: TrainSpec, out_dir: Path, pad_id: int,
          reference: ReferenceLogps | None = None, probe=None, desc: str = "train", curve=None,
          rollout=None, reference_model=None) -> dict:
    """Train ``model`` in place; checkpoints and metrics.jsonl go to ``out_dir``. Resumes from
    ``out_dir/checkpoint`` when one exists. ``curve``: called as ``curve(model, step)`` at the steps
    ``curve.steps(total_steps)`` names (evaluation along training). ``rollout``: the seam for methods that
    train on fresh samples (``needs_samples``), called as ``rollout(model, indices, step)`` for each
    micro-batch of ``view``'s examples (with the unwrapped model, outside packed attention) and returning
    ``(View, ReferenceLogps | None)``: the sequences to train on, with judge scores in ``View.scores``, and
    the reference's statistics of them; its ``state_dict()`` (cost counters), if it has one, goes into the
    checkpoint. Each rollout serves ``method.updates_per_rollout`` steps (``bench.train.reuse``: pi_old, and
    checkpoints at rollout boundaries). ``reference_model``: the reference itself, for a method that asks for
    the ``reference_kl`` statistic (its distributions are not cached: it runs beside the policy). A method that
    asks for ``values`` gets the trainer's value head (``make_value_head``), trained with the policy and kept
    in the checkpoint's trainer state, never in the policy's weights. A stateful method's state is threaded
    through its losses and saved with the optimizer. Returns the final metrics and compute statistics."""
    if method.needs_reference and reference is None and rollout is None:
        raise ValueError(f"method {method.name} needs reference log-probs")
    if "reference_kl" in method.statistics and reference_model is None:
        raise ValueError(f"method {method.name} asks for reference_kl: train() needs the reference_model")
    if method.needs_samples and rollout is None:
        raise ValueError(f"method {method.name} trains on fresh samples of the policy: train() needs a rollout")
    accelerator = make_accelerator(spec)
    if spec.epochs:
        per_step = spec.batch_size * spec.grad_accum * accelerator.num_processes
        spec = replace(spec, steps=max(1, math.ceil(spec.epochs * len(view) / per_step)))
    torch.manual_seed(spec.seed)
    value_head = make_value_head(model, spec.seed).to(model.device) if "values" in method.statistics else None
    trained = [model] + [value_head] * (value_head is not None)
    params = [p for m in trained for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, fused=True)
    scheduler = get_scheduler(spec.scheduler, optimizer, num_warmup_steps=math.ceil(spec.warmup_ratio * spec.steps),
                              num_training_steps=spec.steps)
    curve_at = curve.steps(spec.steps) if curve is not None else set()
    cycle = RolloutCycle(rollout, method.updates_per_rollout) if method.needs_samples else None
    checkpoint_every = aligned_every(spec.checkpoint_every, method.updates_per_rollout)
    start_step, progress = load_checkpoint(out_dir / "checkpoint", model, optimizer, scheduler)
    state = method.initial_state()
    if state is not None and start_step:
        state = progress["method_state"]
    if value_head is not None and start_step:
        value_head.load_state_dict(progress["value_head"])
    if rollout is not None and "rollout" in progress:  # its cost counters, for the steps before the resume
        rollout.load_state_dict(progress["rollout"])
    if spec.gradient_checkpointing:
        enable_checkpointing(model)
    *trained, optimizer = accelerator.prepare(*trained, optimizer)  # the schedule counts optimizer steps: not prepared
    model, value_head = trained[0], trained[1] if value_head is not None else None
    params = [p for m in trained for p in m.parameters()]
    device = accelerator.device
    if reference_model is not None:
        reference_model = reference_model.to(device).eval().requires_grad_(False)
    log = MetricsLog(out_dir / "metrics.jsonl", start_step) if accelerator.is_main_process else None
    model.train()
    tokens, elapsed, last = progress.get("tokens", 0), progress.get("seconds", 0.0), progress.get("last", {})
    cpu = progress.get("cpu_seconds", 0.0)
    bar = tqdm(range(start_step, spec.steps), desc=desc, initial=start_step, total=spec.steps,
               disable=None if spec.progress and accelerator.is_main_process else True, leave=False)  # None: off-TTY
    with packed_attention(model, spec.packing):  # spans the backward: checkpointing re-runs layers there
        if probe is not None and start_step == 0:  # where the log-prob dynamics start: the init model
            init_probe = probe(accelerator.unwrap_model(model))
            model.train()
            if init_probe and accelerator.is_main_process:
                log.append({"step": 0} | init_probe)
        if start_step == 0 and 0 in curve_at:
            _call_curve(curve, accelerator, model, 0)
        for step in bar:
            t0, c0 = time.perf_counter(), time.process_time()
            step_metrics: list[dict] = []
            for micro in range(spec.grad_accum):
                shards = [batch_indices(len(view), spec.batch_size, spec.seed, step * spec.grad_accum + micro,
                                        rank, accelerator.num_processes, spec.shuffle)
                          for rank in range(accelerator.num_processes)]  # shard r is rank r's part of the batch
                indices = shards[accelerator.process_index]
                batch_view, batch_ref = (cycle.samples(model, accelerator, micro, indices, step) if cycle
                                         else (view, reference))
                rows = range(len(batch_view)) if method.needs_samples else indices
                with accelerator.accumulate(*trained):
                    with accelerator.autocast():
                        policy, index = forward(model, batch_view, rows, pad_id, device, method.statistics,
                                                reference_model, value_head)
                    policy = cycle.with_old(micro, policy) if cycle else policy
                    ref = batch_ref.lookup(index, device) if batch_ref is not None else None
                    # every process scores the global micro-batch (bench.train.distributed: exact for every loss)
                    policy, ref = gather_batch(policy), gather_batch(ref)
                    ref = ref if method.needs_reference else None
                    out = method.loss(policy, ref) if state is None else method.loss(policy, ref, state)
                    loss = out.total()
                    if not torch.isfinite(loss):
                        raise NonFiniteLoss(f"non-finite loss ({float(loss)}) at step {step + 1}")
                    if out.state is not None:
                        state = {k: v.detach() for k, v in out.state.items()}
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:  # max_norm inf: the total norm, grads left as they are
                        norm = accelerator.clip_grad_norm_(params,
                                                           spec.max_grad_norm if spec.max_grad_norm > 0 else math.inf)
                        # fp16's grad scaler skips a step with inf/nan gradients by design; else it is a bug
                        if norm is not None and accelerator.scaler is None and not math.isfinite(float(norm)):
                            raise NonFiniteGradient(f"non-finite gradient (norm {float(norm)}) at step {step + 1}")
                    optimizer.step()  # accelerate skips it until the last micro-batch of the step
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                tokens += (int(accelerator.reduce(torch.tensor(batch_view.n_tokens(rows), device=device), "sum"))
                           if method.needs_samples else view.n_tokens([i for shard in shards for i in shard]))
                m = uniform_metrics(policy, ref, spec.reward_beta, batch_view.spec)
                m |= {k: float(v) for k, v in out.metrics.items()}
                m["loss"] = float(loss.detach())
                step_metrics.append(m)
            elapsed, cpu = elapsed + time.perf_counter() - t0, cpu + time.process_time() - c0
            done = step + 1
            if done % spec.log_every == 0 or done == spec.steps:
                last = {k: sum(m[k] for m in step_metrics if k in m) / sum(k in m for m in step_metrics)
                        for k in step_metrics[-1]}
                last |= {"step": done, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens / max(elapsed, 1e-9)}
                if probe is not None:
                    last |= probe(accelerator.unwrap_model(model))
                    model.train()
                if accelerator.is_main_process:
                    log.append(last)
                bar.set_postfix(loss=f"{last['loss']:.3f}")
            if (done == spec.steps and spec.save_final) or (checkpoint_every and done % checkpoint_every == 0):
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_checkpoint(out_dir / "checkpoint", accelerator.unwrap_model(model), optimizer, scheduler, done,
                                    {"tokens": tokens, "seconds": elapsed, "cpu_seconds": cpu, "last": last}
                                    | ({"method_state": state} if state is not None else {})
                                    | ({"value_head": accelerator.unwrap_model(value_head).state_dict()}
                                       if value_head is not None else {})
                                    | ({"rollout": rollout.state_dict()} if hasattr(rollout, "state_dict") else {}))
            if done in curve_at and done < spec.steps:  # the end: the run's full evaluation
                _call_curve(curve, accelerator, model, done)
            kill_point(f"train_step_{done}")
    bar.close()
    model = accelerator.unwrap_model(model)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    return {"final": last, "train_tokens": tokens, "train_seconds": elapsed, "train_cpu_seconds": cpu,
            "optimizer_steps": spec.steps, "tokens_per_s": tokens / max(elapsed, 1e-9), "resumed_from_step": start_step,
            "method_state": state}
