"""SPPO, hard labels: Self-Play Preference Optimization (Wu et al. 2024, eq. 4.7 with P = 1 for the winner).

The paper estimates the win probability P with a preference model; with the dataset's hard labels the winner's
log-ratio is regressed to +1/(2 beta) and the loser's to -1/(2 beta). TRL: ``DPOTrainer(loss_type="sppo_hard")``.
"""
from __future__ import annotations

from dataclasses import dataclass

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class SPPOHard(PairedReferenceMethod):
    """L = (h(yw) - 1/(2 beta))^2 + (h(yl) + 1/(2 beta))^2, h(y) = S_theta(y) - S_ref(y)."""

    name = "sppo_hard"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        target = 0.5 / self.beta
        return LossOutput(losses=(chosen - target) ** 2 + (rejected + target) ** 2)
