"""APO-zero: Anchored Preference Optimization (D'Oosterlinck et al. 2024, eq. 7).

For preferences whose chosen responses beat the model's own outputs: push the chosen likelihood up and the
rejected one down, each anchored at the reference. TRL: ``DPOTrainer(loss_type="apo_zero")``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class APOZero(PairedReferenceMethod):
    """L = (1 - sigma(beta h(yw))) + sigma(beta h(yl)), h(y) = S_theta(y) - S_ref(y)."""

    name = "apo_zero"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        return LossOutput(losses=(1 - torch.sigmoid(self.beta * chosen)) + torch.sigmoid(self.beta * rejected))
