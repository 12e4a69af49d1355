"""Identity Preference Optimization (Azar et al. 2023, eq. 17), length-averaged.

h uses per-token mean log-probs A(y) = S(y)/n(y), as TRL (after its IPO fix) and HALOs do: with
summed log-probs the squared loss scales with completion length and IPO looks broken.
"""
from __future__ import annotations

from dataclasses import dataclass

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod


@register
@dataclass
class IPO(PairedReferenceMethod):
    """L = (h - 1/(2 beta))^2,  h = [A_theta(yw) - A_ref(yw)] - [A_theta(yl) - A_ref(yl)]."""

    beta: float = scaled_by_strength(0.5)  # target gap 1/(2 beta) = 1 nat per token; TRL's 0.1 asks for 5
    name = "ipo"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        h = (policy.chosen.mean - reference.chosen.mean) - (policy.rejected.mean - reference.rejected.mean)
        return LossOutput(((h - 1 / (2 * self.beta)) ** 2).mean())
