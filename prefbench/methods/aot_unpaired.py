"""AOT, unpaired: Alignment via Optimal Transport (Melnyk et al. 2024): the batch's chosen log-ratios,
sorted, dominate its rejected log-ratios, sorted; no pairing of chosen with rejected is used.
TRL: ``DPOTrainer(loss_type="aot_unpaired")``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class AOTUnpaired(PairedReferenceMethod):
    """L = mean_i -log sigma(beta (sort(h(yw))_i - sort(h(yl))_i)), h(y) = S_theta(y) - S_ref(y)."""

    name = "aot_unpaired"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = (torch.sort(h).values for h in log_ratios(policy, reference))
        return LossOutput(-F.logsigmoid(self.beta * (chosen - rejected)).mean())
