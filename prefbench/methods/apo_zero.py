"""APO-zero: Anchored Preference Optimization (D'Oosterlinck et al. 2024, eq. 7).

For preferences whose chosen responses beat the model's own outputs: push the chosen likelihood up and the
rejected one down, each anchored at the reference. TRL: ``DPOTrainer(loss_type="apo_zero")``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, Method, log_ratios


@register
@dataclass
class APOZero(Method):
    """L = (1 - sigma(beta h(yw))) + sigma(beta h(yl)), h(y) = S_theta(y) - S_ref(y)."""

    beta: float = scaled_by_strength(0.1)
    name = "apo_zero"
    view = "paired"
    needs_reference = True
    init = "sft"

    def __post_init__(self):
        self.require_positive(beta=self.beta)

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        return LossOutput(losses=(1 - torch.sigmoid(self.beta * chosen)) + torch.sigmoid(self.beta * rejected))
