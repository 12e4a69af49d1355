"""RRHF: Rank Responses to align language models with Human Feedback (Yuan et al. 2023), reference-free.

With two responses per prompt the ranking loss is one hinge on the length-normalised log-likelihoods; the SFT
term is the NLL of the better response (the official code's token mean).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, Method


@register
@dataclass
class RRHF(Method):
    """L = max(0, A_theta(yl) - A_theta(yw)) + lam * NLL(yw), A(y) = S(y) / |y|."""

    lam: float = 1.0
    name = "rrhf"
    view = "paired"
    needs_reference = False
    init = "sft"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        rank = torch.relu(policy.rejected.mean - policy.chosen.mean).mean()
        return LossOutput(rank + self.lam * policy.chosen.token_mean_nll())
