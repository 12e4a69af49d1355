"""Kahneman-Tversky Optimization (Ethayarajh et al. 2024, eq. 7)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, Method


@register
@dataclass
class KTO(Method):
    """r = S_theta(y) - S_ref(y); z = max(0, mean_i[S_theta(x_i, y'_i) - S_ref(x_i, y'_i)]), detached,
    y' a mismatched completion. Desirable: lambda_D (1 - sigma(beta (r - z))); undesirable:
    lambda_U (1 - sigma(beta (z - r))); the loss is the mean over all examples of the batch.
    """

    beta: float = scaled_by_strength(0.1)
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    name = "kto"
    view = "unpaired"
    needs_reference = True
    init = "sft"

    def __post_init__(self):
        self.require_positive(
            beta=self.beta, desirable_weight=self.desirable_weight, undesirable_weight=self.undesirable_weight
        )

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        """A batch may hold one kind of example only: the other role is absent (None) or has zero sequences."""
        z = (policy.mismatched.sum - reference.mismatched.sum).mean().clamp(min=0).detach()
        sides = (("chosen", self.desirable_weight, 1.0), ("rejected", self.undesirable_weight, -1.0))
        losses = [weight * (1 - torch.sigmoid(sign * self.beta * (policy[role].sum - reference[role].sum - z)))
                  for role, weight, sign in sides if role in policy]
        return LossOutput(torch.cat(losses).mean(), {"kto/kl": z})
