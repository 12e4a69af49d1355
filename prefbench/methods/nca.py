"""NCA: Noise Contrastive Alignment, pairwise (Chen et al. 2024, K = 2 responses).

Unlike DPO it optimises each response's absolute reward r(y) = beta * h(y), not only their difference, so
the chosen likelihood is not pushed down with the rejected one. TRL: ``DPOTrainer(loss_type="nca_pair")``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class NCA(PairedReferenceMethod):
    """L = -log sigma(r(yw)) - 1/2 log sigma(-r(yw)) - 1/2 log sigma(-r(yl)), r(y) = beta (S_theta(y) - S_ref(y))."""

    name = "nca"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = (self.beta * h for h in log_ratios(policy, reference))
        return LossOutput(losses=-F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected))
