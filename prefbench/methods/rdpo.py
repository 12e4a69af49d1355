"""R-DPO: length-regularised DPO (Park et al. 2024, "Disentangling length from quality in DPO").

The preference is modelled as the implicit reward plus alpha per response token, so the part of a preference that
length explains is not learned by the policy: a pair whose chosen response is the longer one asks for a smaller
log-ratio gap. The sign follows from the paper's reward r(y) = beta h(y) + alpha |y|; some reimplementations
flip it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class RDPO(PairedReferenceMethod):
    """L = -log sigma(beta (h(yw) - h(yl)) + alpha (|yw| - |yl|)), h(y) = S_theta(y) - S_ref(y)."""

    alpha: float = 0.01
    name = "rdpo"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        chosen, rejected = log_ratios(policy, reference)
        length_gap = (policy.chosen.n_tokens - policy.rejected.n_tokens).to(chosen.dtype)
        return LossOutput(losses=-F.logsigmoid(self.beta * (chosen - rejected) + self.alpha * length_gap))
