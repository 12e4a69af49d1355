"""DiscoPOP: the discovered log-ratio modulated loss (Lu et al. 2024, eq. 5).

A blend of DPO's logistic loss and an exponential loss, mixed by sigma(z / tau) of the scaled margin z.
TRL: ``DPOTrainer(loss_type="discopop", discopop_tau=tau)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class DiscoPOP(PairedReferenceMethod):
    """L = (1 - sigma(z / tau)) (-log sigma(z)) + sigma(z / tau) exp(-z), z = beta (h(yw) - h(yl))."""

    beta: float = scaled_by_strength(0.05)
    tau: float = 0.05
    name = "discopop"

    def __post_init__(self):
        super().__post_init__()
        self.require_positive(tau=self.tau)

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        z = self.beta * (chosen - rejected)
        mix = torch.sigmoid(z / self.tau)
        return LossOutput(losses=(1 - mix) * -F.logsigmoid(z) + mix * torch.exp(-z))
