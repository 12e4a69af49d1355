"""Odds Ratio Preference Optimization (Hong et al. 2024, eq. 6-7), reference-free.

``nll`` is the scope of the NLL term. ``completion`` (the default) counts the completion tokens only, as every
NLL in prefbench does (SFT, CPO, RPO, SLiC), so ORPO's SFT term means what theirs means and no method is also
trained to model the prompts. ``sequence`` counts the prompt tokens too (after the first): the official code's
default (github.com/xfactlab/orpo, whose released scripts use lambda = 0.1 and 0.05) and what TRL's
``ORPOTrainer`` does ("orpo chosen nll loss is computed over the full prompt and response"); with it prefbench
equals TRL's whole ORPO loss (tests/test_trl_parity_family.py). ``lam`` is the paper's lambda (TRL's ``beta``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, Method

NLL_SCOPES = ("completion", "sequence")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@register
@dataclass
class ORPO(Method):
    """L = NLL(yw) - lam * log sigma(log_odds),
    log_odds = (A(yw) - A(yl)) - (log(1 - exp A(yw)) - log(1 - exp A(yl))), computed in float64;
    NLL(yw) = -sum_i S(yw_i) / sum_i n(yw_i) over the batch, with the prompt tokens in both sums for nll=sequence.
    """

    lam: float = scaled_by_strength(1.0, divide=True)
    nll: str = "completion"
    name = "orpo"
    view = "paired"
    needs_reference = False
    init = "base"

    def __post_init__(self):
        self.require_positive(lam=self.lam)
        if self.nll not in NLL_SCOPES:
            raise ValueError(f"method.nll must be one of {', '.join(NLL_SCOPES)} (got {self.nll!r})")

    @property
    def statistics(self) -> frozenset[str]:
        return frozenset({"prompt"}) if self.nll == "sequence" else frozenset()

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = policy.chosen.mean.double(), policy.rejected.mean.double()
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        odds_term = F.logsigmoid(log_odds).mean().to(policy.chosen.sum.dtype)
        c = policy.chosen
        nll = c.token_mean_nll() if self.nll == "completion" else \
            -(c.sum + c.prompt_sum).sum() / (c.n_tokens + c.prompt_n_tokens).sum().clamp(min=1)
        return LossOutput(nll - self.lam * odds_term, {"orpo/log_odds": log_odds.mean().detach().float()})
