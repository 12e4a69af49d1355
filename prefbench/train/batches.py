"""A micro-batch: which examples it holds, and the policy's statistics of them by role."""
from __future__ import annotations

import math
import random
from dataclasses import fields, replace

import torch

from prefbench.data.views import View, pad_batch
from prefbench.model.compute import check_fits, training_bytes
from prefbench.model.logprobs import sequence_logps
from prefbench.methods import BatchLogps, SeqLogps


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


def optimizer_steps(spec, n: int, world: int = 1) -> int:
    """The optimizer steps of a ``TrainSpec``: its ``steps``, or with ``epochs`` set,
    ceil(epochs * examples / examples per step)."""
    if not spec.epochs:
        return spec.steps
    return max(1, math.ceil(spec.epochs * n / (spec.batch_size * spec.grad_accum * world)))


def trained_rows(n: int, spec, world: int = 1) -> list[int]:
    """The example indices a run of ``spec`` on ``n`` examples trains on (every rank's micro-batches of every
    step, as the trainer draws them with ``batch_indices``): the rows its cached reference pass must score."""
    rows: set[int] = set()
    for micro_step in range(optimizer_steps(spec, n, world) * spec.grad_accum):
        for rank in range(world):
            rows.update(batch_indices(n, spec.batch_size, spec.seed, micro_step, rank, world, spec.shuffle))
        if len(rows) == n:
            break
    return sorted(rows)


def check_micro_batch_fits(model, view: View, batch_size: int, checkpointing: bool) -> None:
    """Refuse, before training starts, a micro-batch whose estimated memory (``training_bytes`` of the
    ``batch_size`` longest examples of the view's trained roles: an upper bound) this machine does not have."""
    roles = view.spec.roles
    def longest(size) -> list[int]:  # each example's tokens over its trained roles, largest first
        return sorted((sum(size(*ex[r]) for r in roles if r in ex) for ex in view.examples), reverse=True)

    tokens = longest(lambda prompt, completion: len(prompt) + len(completion))
    predicted = longest(lambda prompt, completion: len(completion))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    need = training_bytes(model, trainable, sum(tokens[:batch_size]), sum(predicted[:batch_size]), checkpointing)
    check_fits(need, "training", "the micro-batch (trainer.batch_size with trainer.grad_accum, or a stage's "
               "stages.<name>.batch_size) or task.max_length, or set trainer.gradient_checkpointing=true")


def forward(model, view: View, indices: list[int], pad_id: int, device, statistics: frozenset[str] = frozenset(),
            reference_model=None, value_head=None) -> tuple[BatchLogps, dict]:
    """Policy statistics of a micro-batch by role, and the example index of each role: one forward with
    grad for the view's trained roles (concatenated), one without grad for its no-grad roles. Every trained
    role is present, with zero sequences when the micro-batch has none. ``statistics``: what the method asks
    for besides the sums (``prefbench.methods.base.STATISTICS``; ``reference_kl`` runs ``reference_model`` too, ``values``
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
