"""SimPO: Simple Preference Optimization with a reference-free reward (Meng et al. 2024, eq. 6).

The reward is the length-normalised log-likelihood beta * A(y); gamma is the target reward margin.
TRL implements it as ``CPOTrainer(loss_type="simpo")`` (prefbench follows the paper, which TRL matches).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceFreeMethod


@register
@dataclass
class SimPO(PairedReferenceFreeMethod):
    """L = -log sigma(beta * A_theta(yw) - beta * A_theta(yl) - gamma), A(y) = S(y) / |y|."""

    beta: float = 2.0
    gamma: float = 1.0
    name = "simpo"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        margin = self.beta * (policy.chosen.mean - policy.rejected.mean) - self.gamma
        return LossOutput(losses=-F.logsigmoid(margin))
