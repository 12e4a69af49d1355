"""Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): DPO with label smoothing.

Each label is taken to be flipped with probability eps, so the target of sigma(beta h) is 1 - eps, not 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class CDPO(PairedReferenceMethod):
    """L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h), h = h(yw) - h(yl), h(y) = S_theta(y) - S_ref(y)."""

    eps: float = 0.1
    name = "cdpo"

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.eps < 0.5:
            raise ValueError(f"method.eps must be in [0, 0.5) (got {self.eps})")

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        z = self.beta * (chosen - rejected)
        return LossOutput(losses=-(1 - self.eps) * F.logsigmoid(z) - self.eps * F.logsigmoid(-z))
