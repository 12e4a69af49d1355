"""SLiC-HF: Sequence Likelihood Calibration with human feedback (Zhao et al. 2023), reference-free.

The calibration loss is a hinge on the summed log-likelihood gap with margin delta = 1 / beta, written with
beta as TRL's ``CPOTrainer(loss_type="hinge")`` does; the regulariser is the NLL of the chosen completion
(the paper's cross-entropy on the SFT targets, here the preferred responses).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceFreeMethod


@register
@dataclass
class SLiC(PairedReferenceFreeMethod):
    """L = max(0, 1 - beta * (S_theta(yw) - S_theta(yl))) + lam * NLL(yw), NLL the token mean."""

    beta: float = 1.0
    lam: float = 0.1
    name = "slic"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        hinge = torch.relu(1 - self.beta * (policy.chosen.sum - policy.rejected.sum)).mean()
        return LossOutput(hinge + self.lam * policy.chosen.token_mean_nll())
