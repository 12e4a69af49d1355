"""APO-down: Anchored Preference Optimization (D'Oosterlinck et al. 2024, eq. 8).

For preferences whose chosen responses are worse than the model's own outputs: push both likelihoods down,
the rejected one further. TRL: ``DPOTrainer(loss_type="apo_down")``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, Method, log_ratios


@register
@dataclass
class APODown(Method):
    """L = sigma(beta h(yw)) + (1 - sigma(beta (h(yw) - h(yl)))), h(y) = S_theta(y) - S_ref(y)."""

    beta: float = scaled_by_strength(0.1)
    name = "apo_down"
    view = "paired"
    needs_reference = True
    init = "sft"

    def __post_init__(self):
        self.require_positive(beta=self.beta)

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        return LossOutput(losses=torch.sigmoid(self.beta * chosen) + (1 - torch.sigmoid(self.beta * (chosen - rejected))))
