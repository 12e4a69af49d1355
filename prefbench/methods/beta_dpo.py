"""beta-DPO: DPO with a batch-adaptive beta and data filtering (Wu et al. 2024; the official code,
junkangwu/beta-DPO, trainers.py).

Per batch, the reward gaps g_i = h(yw_i) - h(yl_i) update running estimates of their mean M0 and spread s
(momentum 0.9, both starting at 0). Pairs are weighted by a Gaussian around M0; the (1 - rho) share with the
largest weights is kept (the official code draws that share by weight with torch.multinomial; a loss here
draws no random numbers, so it keeps the most typical pairs), and beta is scaled by how far the kept pairs'
mean gap lies from M0. M0 and s are the method's state, checkpointed with the optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios

MOMENTUM = 0.9


@register
@dataclass
class BetaDPO(PairedReferenceMethod):
    """L = mean over kept pairs of -log sigma(beta_b g_i), beta_b = max(1e-3, beta (1 + a (mean_kept g - M0))),
    detached; M0 <- 0.9 M0 + 0.1 mean g, s <- 0.9 s + 0.1 std g; kept: the floor((1 - rho) N) largest
    exp(-((g_i - M0) / s)^2 / 2)."""

    a: float = 0.6
    rho: float = 0.2
    name = "beta_dpo"

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.rho < 1:
            raise ValueError(f"method.rho must be in [0, 1) (got {self.rho})")

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.zeros((), dtype=torch.float64), "std": torch.zeros((), dtype=torch.float64)}

    def loss(self, policy: BatchLogps, reference: BatchLogps | None, state: dict[str, torch.Tensor]) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        gap = chosen - rejected
        g = gap.detach().to(torch.float64).cpu()
        mean = MOMENTUM * state["mean"] + (1 - MOMENTUM) * g.mean()
        std = MOMENTUM * state["std"] + (1 - MOMENTUM) * (g.std() if len(g) > 1 else torch.zeros((), dtype=g.dtype))
        weight = torch.exp(-0.5 * ((g - mean) / std.clamp(min=1e-12)) ** 2)
        kept = torch.zeros(len(g), dtype=torch.bool)
        kept[torch.argsort(weight, descending=True, stable=True)[: max(1, int((1 - self.rho) * len(g)))]] = True
        beta = (self.beta * (1 + self.a * (g[kept].mean() - mean))).clamp(min=1e-3)
        return LossOutput(losses=-F.logsigmoid(beta.to(gap) * gap), weights=kept.to(gap),
                          metrics={"beta_dpo/beta": beta.float(), "beta_dpo/kept": kept.float().mean()},
                          state={"mean": mean, "std": std})
