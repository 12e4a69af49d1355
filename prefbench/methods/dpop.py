"""DPOP / DPO-Positive (Pal et al. 2024, "Smaug"): DPO plus a penalty whenever the chosen response's
likelihood falls below the reference's, against DPO's likelihood displacement.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, Method, log_ratios


@register
@dataclass
class DPOP(Method):
    """L = -log sigma(beta (h(yw) - h(yl) - lam * max(0, -h(yw)))), h(y) = S_theta(y) - S_ref(y)."""

    beta: float = scaled_by_strength(0.1)
    lam: float = 50.0
    name = "dpop"
    view = "paired"
    needs_reference = True
    init = "sft"

    def __post_init__(self):
        self.require_positive(beta=self.beta)

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        penalty = torch.relu(-chosen)
        return LossOutput(losses=-F.logsigmoid(self.beta * (chosen - rejected - self.lam * penalty)),
                          metrics={"dpop/penalty": penalty.mean().detach()})
