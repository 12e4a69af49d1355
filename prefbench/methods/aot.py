"""AOT, paired: Alignment via Optimal Transport (Melnyk et al. 2024): distributional preference.

The policy's log-likelihood gaps S_theta(yw) - S_theta(yl) of the batch are sorted, and so are the reference's;
the i-th smallest of each is compared, which makes the batch's distribution of gaps dominate the reference's
(first-order stochastic dominance). The loss depends on the whole batch, not on one example.
TRL: ``DPOTrainer(loss_type="aot")``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod


@register
@dataclass
class AOT(PairedReferenceMethod):
    """L = mean_i -log sigma(beta (sort(g_theta)_i - sort(g_ref)_i)), g(x) = S(yw) - S(yl) (label smoothing 0)."""

    name = "aot"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        gap = torch.sort(policy.chosen.sum - policy.rejected.sum).values
        ref_gap = torch.sort(reference.chosen.sum - reference.rejected.sum).values
        return LossOutput(-F.logsigmoid(self.beta * (gap - ref_gap)).mean())
