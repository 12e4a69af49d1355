"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", Algorithm 1). Online.

Per prompt, two samples of the current policy; the judge's higher-scored one is the chosen response, the other the
rejected one, and the pair trains DPO's loss against the reference (the SFT policy). A tied pair (equal scores)
carries no preference and weighs 0. beta 0.1, TRL's ``OnlineDPOTrainer`` default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, Method, group_scores


@register
@dataclass
class OnlineDPO(Method):
    """L = mean over untied pairs of -log sigma(beta [h(y+) - h(y-)]), y+ the judge's pick of the two samples,
    h(y) = S_theta(y) - S_ref(y)."""

    beta: float = scaled_by_strength(0.1)
    name = "online_dpo"
    view = "online"
    needs_reference = True
    init = "sft"
    needs_samples = True
    samples_per_prompt = 2

    def __post_init__(self):
        self.require_positive(beta=self.beta)

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        scores = group_scores(policy.samples, 2)
        h = (policy.samples.sum - reference.samples.sum).view(-1, 2)
        first = scores[:, 0] > scores[:, 1]
        margin = torch.where(first, h[:, 0] - h[:, 1], h[:, 1] - h[:, 0])
        untied = (scores[:, 0] != scores[:, 1]).to(margin.dtype)
        losses = -F.logsigmoid(self.beta * margin)
        loss = (losses * untied).sum() / untied.sum().clamp(min=1)
        return LossOutput(loss, {"online/score": scores.mean().detach(), "online/untied": untied.mean()})
