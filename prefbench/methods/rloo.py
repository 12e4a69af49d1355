"""REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics", eq. 6; the baseline of Kool et al. 2019),
as TRL's ``RLOOTrainer`` computes it. Online.

Per prompt, k samples of the current policy scored by the judge, with the KL penalty in the reward (no gradient):
r'_i = r_i - beta sum_t (log pi_old(y_t) - log pi_ref(y_t)). Each sample's baseline is the mean r' of the
prompt's other k - 1 samples, A_i = r'_i - baseline_i (``normalize_advantages``: then standardised over the
batch). Loss: mean_i -min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i), rho_i = exp(S_theta(y_i) - S_old(y_i)),
where pi_old is the policy at the rollout's first update (``SeqLogps.behaviour``; itself with one update per
rollout, TRL's ``num_iterations=1``, the default). Defaults: beta 0.05 and eps 0.2
(TRL's), k 4 (the paper compares k = 2 and 4).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, Method, clip_fraction, group_scores


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """(prompts, k) -> (prompts * k,): each reward minus the mean of its group's other k - 1 rewards."""
    k = rewards.shape[1]
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    return (rewards - baseline).reshape(-1)


@register
@dataclass
class RLOO(Method):
    """L = mean_i -min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i), A the leave-one-out advantage of
    r - beta (S_old - S_ref)."""

    beta: float = scaled_by_strength(0.05)
    epsilon: float = 0.2
    samples_per_prompt: int = 4
    normalize_advantages: bool = False
    updates_per_rollout: int = 1
    name = "rloo"
    view = "online"
    needs_reference = True
    init = "sft"
    needs_samples = True

    def __post_init__(self):
        self.require_positive(epsilon=self.epsilon)
        self.require_whole(updates_per_rollout=self.updates_per_rollout)
        if self.beta < 0:
            raise ValueError(f"method.beta must be >= 0 (got {self.beta})")
        if self.samples_per_prompt < 2:
            raise ValueError(f"method.samples_per_prompt must be >= 2 for a leave-one-out baseline "
                             f"(got {self.samples_per_prompt})")

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        s, k = policy.samples, self.samples_per_prompt
        old = s.behaviour.sum
        kl = old - reference.samples.sum.detach()
        rewards = group_scores(s, k) - self.beta * kl.view(-1, k)
        adv = leave_one_out(rewards)
        if self.normalize_advantages:
            adv = (adv - adv.mean()) / (adv.std() + 1e-4)
        ratio = torch.exp(s.sum - old)
        losses = -torch.min(ratio * adv, ratio.clamp(1 - self.epsilon, 1 + self.epsilon) * adv)
        return LossOutput(losses=losses, metrics={"online/score": group_scores(s, k).mean().detach(),
                                                  "online/kl": kl.mean(),
                                                  "online/clip_fraction": clip_fraction(ratio, adv, self.epsilon)})
