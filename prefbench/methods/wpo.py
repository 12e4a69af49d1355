"""Weighted Preference Optimization (Zhou et al. 2024, "WPO", eq. 2 and its aligned weights), on DPO.

Each pair's DPO loss is weighted by how likely the policy is to produce the pair, w(x, yw) w(x, yl), with
w(x, y) = exp((1/n(y)) sum_t [log pi(y_t | x, y_<t) - log sum_v pi(v | x, y_<t)^2]), without gradient: each
token's probability over sum_v pi(v)^2, the expected probability of a token the policy samples itself, so an
on-policy token weighs 1 on average. The weights enter as factors of the
per-pair losses, averaged over the batch (not renormalised). TRL: ``DPOTrainer(use_weighting=True)``, which
computes the same weights; ``beta`` 0.1 is TRL's default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import log_ratios, register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, SeqLogps


def aligned_weight(seq: SeqLogps) -> torch.Tensor:
    """exp(mean_t [log pi(y_t) - log sum_v pi(v)^2]), per sequence, without gradient."""
    with torch.no_grad():
        aligned = ((seq.tokens - seq.token_collision) * seq.mask).sum(1) / seq.n_tokens.clamp(min=1)
        return aligned.exp()


@register
@dataclass
class WPO(PairedReferenceMethod):
    """L = mean_i w(x, yw_i) w(x, yl_i) * -log sigma(beta [h(yw_i) - h(yl_i)]), h(y) = S_theta(y) - S_ref(y)."""

    name = "wpo"
    statistics = frozenset({"tokens", "collision"})

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        h_w, h_l = log_ratios(policy, reference)
        weight = aligned_weight(policy.chosen) * aligned_weight(policy.rejected)
        return LossOutput(losses=weight * -F.logsigmoid(self.beta * (h_w - h_l)),
                          metrics={"wpo/weight": weight.mean()})
