"""EXO: Efficient Exact Optimization of the alignment objective (Ji et al. 2024, eq. 16, EXO-pref, K = 2).

It minimises the reverse KL from the label distribution p = (1 - eps, eps) to the model's softmax over
{yw, yl} of beta * h(y), instead of DPO's forward KL. TRL: ``DPOTrainer(loss_type="exo_pair", label_smoothing=eps)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class EXO(PairedReferenceMethod):
    """L = sigma(z) (log sigma(z) - log(1 - eps)) + sigma(-z) (log sigma(-z) - log eps), z = beta (h(yw) - h(yl))."""

    eps: float = 1e-3
    name = "exo"

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.eps < 1:
            raise ValueError(f"method.eps must be in (0, 1) (got {self.eps})")

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        z = self.beta * (chosen - rejected)
        win = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-self.eps))
        lose = torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(self.eps))
        return LossOutput(losses=win + lose)
