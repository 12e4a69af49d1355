"""Direct Preference Optimization (Rafailov et al. 2023, eq. 7)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod


@register
@dataclass
class DPO(PairedReferenceMethod):
    """L = -log sigma(beta * [(S_theta(yw) - S_ref(yw)) - (S_theta(yl) - S_ref(yl))]), S summed log-probs."""

    name = "dpo"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        logits = (policy.chosen.sum - reference.chosen.sum) - (policy.rejected.sum - reference.rejected.sum)
        return LossOutput(-F.logsigmoid(self.beta * logits).mean())
