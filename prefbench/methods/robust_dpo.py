"""Robust DPO (Chowdhury et al. 2024, "Provably robust DPO"): an unbiased loss under label noise eps.

TRL: ``DPOTrainer(loss_type="robust", label_smoothing=eps)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class RobustDPO(PairedReferenceMethod):
    """L = [-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps), h = h(yw) - h(yl)."""

    eps: float = 0.1
    name = "robust_dpo"

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.eps < 0.5:
            raise ValueError(f"method.eps must be in [0, 0.5) (got {self.eps})")

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        z = self.beta * (chosen - rejected)
        clean, flipped = -(1 - self.eps) * F.logsigmoid(z), -self.eps * F.logsigmoid(-z)
        return LossOutput(losses=(clean - flipped) / (1 - 2 * self.eps))
