"""APO-down: Anchored Preference Optimization (D'Oosterlinck et al. 2024, eq. 8).

For preferences whose chosen responses are worse than the model's own outputs: push both likelihoods down,
the rejected one further. TRL: ``DPOTrainer(loss_type="apo_down")``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class APODown(PairedReferenceMethod):
    """L = sigma(beta h(yw)) + (1 - sigma(beta (h(yw) - h(yl)))), h(y) = S_theta(y) - S_ref(y)."""

    name = "apo_down"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        return LossOutput(losses=torch.sigmoid(self.beta * chosen) + (1 - torch.sigmoid(self.beta * (chosen - rejected))))
