"""A rollout's samples reused for several optimizer steps: ``Method.updates_per_rollout`` = mu (PPO's epochs per
batch, Schulman et al. 2017 Alg. 1; TRL's ``num_ppo_epochs`` with one mini-batch, GRPO's and RLOO's
``num_iterations``).

Step s trains on the rollout drawn at step mu * floor(s / mu), one per micro-batch, and every update of it sees
the policy's statistics at that rollout's first update as pi_old (``SeqLogps.old``): at the first update they are
the policy's own (ratio 1, clips inactive); at the later ones the policy has moved and the ratio and value clips
act. A run checkpoints only at rollout boundaries (``aligned_every``), so a resumed run draws its next rollout
exactly where an uninterrupted one does. mu = 1 is one fresh rollout per step.
"""
from __future__ import annotations

import math
from dataclasses import replace

from prefbench.model.packing import unpacked
from prefbench.methods import BatchLogps


def aligned_every(checkpoint_every: int, updates: int) -> int:
    """``checkpoint_every`` rounded up to a whole number of rollouts (0 stays 0: the final checkpoint only)."""
    return math.ceil(checkpoint_every / updates) * updates


def _fresh(rollout, model, accelerator, indices: list[int], step: int):
    """A rollout's fresh samples for one micro-batch: it gets the unwrapped model, outside packed attention
    (generation runs ordinary forwards), and the model is back in training mode afterwards."""
    inner = accelerator.unwrap_model(model)
    with unpacked(inner):
        out = rollout(inner, indices, step)
    model.train()
    return out


class RolloutCycle:
    """Holds each micro-batch's current rollout: its samples, the reference's statistics of them and, after its
    first update, the policy's statistics then (detached): pi_old."""

    def __init__(self, rollout, updates: int):
        self.rollout, self.updates = rollout, updates
        self.held: dict[int, list] = {}  # micro-batch -> [View, ReferenceLogps | None, BatchLogps | None]

    def samples(self, model, accelerator, micro: int, indices: list[int], step: int):
        """``(View, ReferenceLogps | None)`` of micro-batch ``micro`` at ``step``: drawn afresh at a rollout's
        first step, else the held one (the step's own ``indices`` are then unused)."""
        if step % self.updates == 0 or micro not in self.held:
            self.held[micro] = [*_fresh(self.rollout, model, accelerator, indices, step), None]
        view, reference, _ = self.held[micro]
        return view, reference

    def with_old(self, micro: int, policy: BatchLogps) -> BatchLogps:
        """``policy`` with each role's ``old``: its own detached statistics at the rollout's first update, the
        ones remembered then at the later updates."""
        held = self.held[micro]
        if held[2] is None:
            held[2] = BatchLogps(**{role: s.detached() for role, s in policy.items()})
        return BatchLogps(**{role: replace(s, old=held[2][role]) for role, s in policy.items()})
