"""LD-DPO: length-desensitised DPO (Liu et al. 2024, "LD-DPO").

Each pair's log-likelihoods count the tokens both responses have (the first min(|yw|, |yl|)) in full and the
longer response's extra tokens scaled by alpha, for the policy and the reference alike; then DPO. Needs
per-token log-probs (the ``tokens`` statistic). TRL: ``DPOTrainer(ld_alpha=alpha)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, SeqLogps


def desensitised(seq: SeqLogps, shared: torch.Tensor, alpha: float) -> torch.Tensor:
    """sum_{t <= shared} log pi(y_t) + alpha * sum_{t > shared} log pi(y_t), per sequence."""
    position = torch.arange(seq.tokens.shape[1], device=seq.tokens.device)[None]
    head = position < shared[:, None]
    tokens = seq.tokens * seq.mask
    return (tokens * head).sum(1) + alpha * (tokens * ~head).sum(1)


@register
@dataclass
class LDDPO(PairedReferenceMethod):
    """L = -log sigma(beta [(S'_theta(yw) - S'_ref(yw)) - (S'_theta(yl) - S'_ref(yl))]), S' as in ``desensitised``."""

    alpha: float = 0.5
    name = "ld_dpo"
    statistics = frozenset({"tokens"})

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"method.alpha must be in [0, 1] (got {self.alpha})")

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        shared = torch.minimum(policy.chosen.n_tokens, policy.rejected.n_tokens)
        h = {role: desensitised(policy[role], shared, self.alpha) - desensitised(reference[role], shared, self.alpha)
             for role in ("chosen", "rejected")}
        return LossOutput(losses=-F.logsigmoid(self.beta * (h["chosen"] - h["rejected"])))
