"""BCO: Binary Classifier Optimization (Jung et al. 2024), on pairs: chosen responses are the
positive class and rejected ones the negative class of a logistic classifier whose logit is the implicit reward
r(y) = beta h(y), shifted by delta, the running mean of every reward seen so far (the paper's reward shift;
TRL's BCOTrainer keeps the same count-weighted running mean, updated with the batch before its loss).

delta is the method's state: checkpointed with the optimizer, so a resumed run continues the same mean.
With delta = 0 the loss is TRL's ``DPOTrainer(loss_type="bco_pair")``, which keeps no running shift.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, PairedReferenceMethod, log_ratios


@register
@dataclass
class BCO(PairedReferenceMethod):
    """L = -log sigma(r(yw) - delta) - log sigma(-(r(yl) - delta)), r(y) = beta (S_theta(y) - S_ref(y));
    delta <- delta + (m - delta) n / (N + n): a batch of n rewards (chosen and rejected) with mean m, after N, detached."""

    name = "bco"

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {"delta": torch.zeros((), dtype=torch.float64), "count": torch.zeros((), dtype=torch.float64)}

    def loss(self, policy: BatchLogps, reference: BatchLogps | None, state: dict[str, torch.Tensor]) -> LossOutput:
        chosen, rejected = (self.beta * h for h in log_ratios(policy, reference))
        rewards = torch.cat([chosen, rejected]).detach().to(state["delta"].dtype).cpu()
        count = state["count"] + len(rewards)
        delta = state["delta"] + (rewards.mean() - state["delta"]) * len(rewards) / count
        shift = delta.to(chosen)
        losses = -F.logsigmoid(chosen - shift) - F.logsigmoid(-(rejected - shift))
        return LossOutput(losses=losses, metrics={"bco/delta": shift.detach()},
                          state={"delta": delta, "count": count})
