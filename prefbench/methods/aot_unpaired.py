"""AOT, unpaired: Alignment via Optimal Transport (Melnyk et al. 2024): the batch's chosen log-ratios,
sorted, dominate its rejected log-ratios, sorted; no pairing of chosen with rejected is used.
TRL: ``DPOTrainer(loss_type="aot_unpaired")``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, Method, log_ratios


@register
@dataclass
class AOTUnpaired(Method):
    """L = mean_i -log sigma(beta (sort(h(yw))_i - sort(h(yl))_i)), h(y) = S_theta(y) - S_ref(y)."""

    beta: float = scaled_by_strength(0.1)
    name = "aot_unpaired"
    view = "paired"
    needs_reference = True
    init = "sft"

    def __post_init__(self):
        self.require_positive(beta=self.beta)

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = (torch.sort(h).values for h in log_ratios(policy, reference))
        return LossOutput(-F.logsigmoid(self.beta * (chosen - rejected)).mean())
