"""RPO: DPO plus the NLL of the chosen response (Pang et al. 2024, "Iterative reasoning preference
optimization"). TRL: ``DPOTrainer(loss_type=["sigmoid", "sft"], loss_weights=[1, alpha])``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class RPO(PairedReferenceMethod):
    """L = -log sigma(beta (h(yw) - h(yl))) + alpha * NLL(yw), NLL the token mean over the batch."""

    alpha: float = 1.0
    name = "rpo"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        dpo = -F.logsigmoid(self.beta * (chosen - rejected)).mean()
        return LossOutput(dpo + self.alpha * policy.chosen.token_mean_nll())
