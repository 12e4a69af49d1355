"""Odds Ratio Preference Optimization (Hong et al. 2024, eq. 6-7), reference-free.

The NLL term covers completion tokens only, as every NLL in prefbench does. The official code's default
counts the prompt tokens too (so does TRL's ORPO trainer), and its released scripts use lambda = 0.1 and
0.05. ``lam`` is the paper's lambda (TRL calls it ``beta``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods import register, scaled_by_strength
from methods.base import BatchLogps, LossOutput, Method


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@register
@dataclass
class ORPO(Method):
    """L = NLL(yw) - lam * log sigma(log_odds),
    log_odds = (A(yw) - A(yl)) - (log(1 - exp A(yw)) - log(1 - exp A(yl))), computed in float64.
    """

    lam: float = scaled_by_strength(1.0, divide=True)
    name = "orpo"
    view = "paired"
    needs_reference = False
    init = "base"

    def __post_init__(self):
        self.require_positive(lam=self.lam)

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = policy.chosen.mean.double(), policy.rejected.mean.double()
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        odds_term = F.logsigmoid(log_odds).mean().to(policy.chosen.sum.dtype)
        loss = policy.chosen.token_mean_nll() - self.lam * odds_term
        return LossOutput(loss, {"orpo/log_odds": log_odds.mean().detach().float()})
