"""f-DPO: DPO under f-divergences other than the reverse KL (Wang et al. 2023, "Beyond reverse KL").

The log-ratio h(y) = log u, u = pi_theta(y)/pi_ref(y), enters through f'(u) of the chosen divergence:
reverse KL log u (DPO), forward KL 1 - 1/u, Jensen-Shannon log(2u / (1 + u)), alpha-divergence
(1 - u^-alpha) / alpha (the paper's alpha, in (0, 1); TRL's ``f_alpha_divergence_coef`` is 1 - alpha).
TRL: ``DPOTrainer(f_divergence_type=...)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


@register
@dataclass
class FDPO(PairedReferenceMethod):
    """L = -log sigma(beta (f'(u_w) - f'(u_l))), u = pi_theta(y) / pi_ref(y)."""

    divergence: str = "js"
    alpha: float = 0.5
    name = "fdpo"

    def __post_init__(self):
        super().__post_init__()
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"method.divergence must be one of {', '.join(DIVERGENCES)} (got {self.divergence!r})")
        if self.divergence == "alpha" and not 0 < self.alpha < 1:
            raise ValueError(f"method.alpha must be in (0, 1) (got {self.alpha})")

    def f_prime(self, h: torch.Tensor) -> torch.Tensor:
        """f'(u) at u = exp(h)."""
        if self.divergence == "forward_kl":
            return 1 - torch.exp(-h)
        if self.divergence == "js":
            return math.log(2) + F.logsigmoid(h)
        if self.divergence == "alpha":
            return (1 - torch.exp((-self.alpha * h).clamp(max=80.0))) / self.alpha
        return h

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        return LossOutput(losses=-F.logsigmoid(self.beta * (self.f_prime(chosen) - self.f_prime(rejected))))
