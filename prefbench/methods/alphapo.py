"""AlphaPO: reward shape matters for LLM alignment (Gupta et al. 2025): SimPO with an alpha-reward.

r(y) = (1 - p(y)^(-alpha)) / alpha with p(y) = exp(A(y)), the length-normalised likelihood; alpha -> 0 gives
SimPO's log-likelihood reward. TRL: ``CPOTrainer(loss_type="simpo", alpha=alpha)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceFreeMethod


@register
@dataclass
class AlphaPO(PairedReferenceFreeMethod):
    """L = -log sigma(beta * (r(yw) - r(yl)) - gamma), r(y) = (1 - exp(-alpha * A(y))) / alpha."""

    beta: float = 2.0
    gamma: float = 1.0
    alpha: float = 0.25
    name = "alphapo"

    def __post_init__(self):
        super().__post_init__()
        self.require_positive(alpha=self.alpha)

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        def reward(mean_logp):
            return (1 - torch.exp(-self.alpha * mean_logp)) / self.alpha

        margin = self.beta * (reward(policy.chosen.mean) - reward(policy.rejected.mean)) - self.gamma
        return LossOutput(losses=-F.logsigmoid(margin))
