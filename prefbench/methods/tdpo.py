"""Token-level Direct Preference Optimization (Zeng et al. 2024, "TDPO": its TDPO1 and TDPO2 losses).

DPO's margin minus the difference of the two responses' sequential KL divergences,
D_SeqKL(x, y) = sum_t KL(pi_ref(. | x, y_<t) || pi_theta(. | x, y_<t)), a statistic of both models' whole
next-token distributions (``reference_kl``: the trainer runs the reference beside the policy). TDPO2 (the
default) scales the KL difference by alpha and stops the gradient of the chosen response's KL, as the official
code (github.com/Vance0124/Token-level-Direct-Preference-Optimization, ``tdpo_loss``) does; the paper's
defaults are beta 0.1 and alpha 0.5. TRL has no TDPO.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefbench.methods import log_ratios, register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod


@register
@dataclass
class TDPO(PairedReferenceMethod):
    """TDPO1: L = -log sigma(beta [(h(yw) - h(yl)) - (D(yl) - D(yw))]);
    TDPO2: L = -log sigma(beta [(h(yw) - h(yl)) - alpha (D(yl) - sg(D(yw)))]),
    h(y) = S_theta(y) - S_ref(y), D(y) = D_SeqKL(x, y; pi_ref || pi_theta), sg: stop-gradient.
    """

    alpha: float = 0.5
    version: int = 2
    name = "tdpo"
    statistics = frozenset({"reference_kl"})

    def __post_init__(self):
        super().__post_init__()
        if self.version not in (1, 2):
            raise ValueError(f"method.version must be 1 or 2 (got {self.version})")
        if self.version == 2 and not self.alpha >= 0:
            raise ValueError(f"method.alpha must be >= 0 (got {self.alpha})")

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        h_w, h_l = log_ratios(policy, reference)
        kl_w, kl_l = ((policy[r].token_kl * policy[r].mask).sum(1) for r in ("chosen", "rejected"))
        penalty = kl_l - kl_w if self.version == 1 else self.alpha * (kl_l - kl_w.detach())
        metrics = {"tdpo/seq_kl_chosen": kl_w.mean().detach(), "tdpo/seq_kl_rejected": kl_l.mean().detach()}
        return LossOutput(losses=-F.logsigmoid(self.beta * ((h_w - h_l) - penalty)), metrics=metrics)
