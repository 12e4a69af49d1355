"""DPOP / DPO-Positive (Pal et al. 2024, "Smaug"): DPO plus a penalty whenever the chosen response's
likelihood falls below the reference's, against DPO's likelihood displacement.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class DPOP(PairedReferenceMethod):
    """L = -log sigma(beta (h(yw) - h(yl) - lam * max(0, -h(yw)))), h(y) = S_theta(y) - S_ref(y)."""

    lam: float = 50.0
    name = "dpop"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        penalty = torch.relu(-chosen)
        return LossOutput(losses=-F.logsigmoid(self.beta * (chosen - rejected - self.lam * penalty)),
                          metrics={"dpop/penalty": penalty.mean().detach()})
