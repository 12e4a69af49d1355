"""Length-normalised DPO: DPO on per-token log-ratios (the length-normalised DPO the SimPO paper compares,
Meng et al. 2024, Table 3 "LN-DPO"). TRL: ``DPOTrainer(loss_type="sigmoid_norm")``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class DPONorm(PairedReferenceMethod):
    """L = -log sigma(beta (h(yw)/|yw| - h(yl)/|yl|)), h(y) = S_theta(y) - S_ref(y)."""

    beta: float = scaled_by_strength(1.0)
    name = "dpo_norm"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference, normalise=True)
        return LossOutput(losses=-F.logsigmoid(self.beta * (chosen - rejected)))
