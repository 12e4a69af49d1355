"""CPO: Contrastive Preference Optimization (Xu et al. 2024, eq. 3 as TRL cites it): a reference-free DPO term plus NLL.

TRL: ``CPOTrainer(loss_type="sigmoid", cpo_alpha=alpha)``; its NLL is the token mean over the chosen completions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceFreeMethod


@register
@dataclass
class CPO(PairedReferenceFreeMethod):
    """L = -log sigma(beta * (S_theta(yw) - S_theta(yl))) + alpha * NLL(yw), NLL the token mean."""

    beta: float = 0.1
    alpha: float = 1.0
    name = "cpo"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        prefer = -F.logsigmoid(self.beta * (policy.chosen.sum - policy.rejected.sum)).mean()
        return LossOutput(prefer + self.alpha * policy.chosen.token_mean_nll())
