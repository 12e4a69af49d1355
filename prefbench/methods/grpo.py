"""Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", eq. 3 with outcome supervision, §4.1.2),
and Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training") as options. Online.

Per prompt, ``samples_per_prompt`` = k samples of the current policy, each scored by the judge; group-relative
advantages A_i = (r_i - mean_j r_j) / (std_j r_j + 1e-4) (``scale_rewards=false``: not divided, Dr. GRPO).
Per token, l_t = -min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i) + beta k3_t, with rho_t = pi_theta(y_t) /
pi_old(y_t) and k3_t = exp(log pi_ref(y_t) - log pi_theta(y_t)) - (log pi_ref(y_t) - log pi_theta(y_t)) - 1.
pi_old is the policy at the rollout's first update (``SeqLogps.behaviour``): with ``updates_per_rollout`` = 1
(TRL's ``num_iterations=1``, the default) rho = 1, with rho's gradient; with more, the clip bounds the later
updates (TRL's ``num_iterations``). ``loss_type=grpo`` averages l over each sequence's tokens, then over the
sequences; ``dr_grpo`` sums over all tokens and divides by the sequences times ``max_completion_length``.
``kl_correction`` multiplies k3_t by rho_t (DeepSeek-V3.2, 2025): the same value on-policy, but its gradient
is then the unbiased reverse-KL gradient; TRL 1.16 does so by default (``use_bias_correction_kl``), the paper's
GRPO does not. TRL: ``GRPOTrainer`` (``loss_type``, ``scale_rewards="group"`` or ``"none"``, ``beta``,
``epsilon``, ``use_bias_correction_kl``). Defaults: beta 0.04 (the paper's), eps 0.2 (TRL's), k 4 (the paper
uses 64; a CPU budget), no KL correction (the paper's).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, Method, clip_fraction, group_scores, k3, masked_mean

LOSS_TYPES = ("grpo", "dr_grpo")


def group_advantages(scores: torch.Tensor, scale: bool) -> torch.Tensor:
    """(prompts, k) judge scores -> (prompts * k,) advantages: minus the group mean, over the group's
    (unbiased) std + 1e-4 when ``scale``."""
    adv = scores - scores.mean(1, keepdim=True)
    if scale:
        adv = adv / (scores.std(1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


@register
@dataclass
class GRPO(Method):
    """L = mean over sequences of the token mean (grpo) or the sum / max_completion_length (dr_grpo) of
    -min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A) + beta k3_t."""

    beta: float = scaled_by_strength(0.04)
    epsilon: float = 0.2
    samples_per_prompt: int = 4
    scale_rewards: bool = True
    loss_type: str = "grpo"
    max_completion_length: int = 64
    kl_correction: bool = False
    updates_per_rollout: int = 1
    name = "grpo"
    view = "online"
    needs_reference = True
    init = "sft"
    needs_samples = True
    statistics = frozenset({"tokens"})

    def __post_init__(self):
        self.require_positive(epsilon=self.epsilon, max_completion_length=self.max_completion_length)
        self.require_whole(updates_per_rollout=self.updates_per_rollout)
        if self.beta < 0:
            raise ValueError(f"method.beta must be >= 0 (got {self.beta})")
        if self.samples_per_prompt < 2:
            raise ValueError(f"method.samples_per_prompt must be >= 2 for a group baseline "
                             f"(got {self.samples_per_prompt})")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"method.loss_type must be one of {', '.join(LOSS_TYPES)} (got {self.loss_type!r})")

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        s, mask = policy.samples, policy.samples.mask
        scores = group_scores(s, self.samples_per_prompt)
        adv = group_advantages(scores, self.scale_rewards)[:, None]
        ratio = torch.exp(s.tokens - s.behaviour.tokens)
        per_token = -torch.min(ratio * adv, ratio.clamp(1 - self.epsilon, 1 + self.epsilon) * adv)
        kl = k3(s.tokens, reference.samples.tokens)
        per_token = per_token + self.beta * (kl * ratio if self.kl_correction else kl)
        if self.loss_type == "grpo":
            loss = masked_mean(per_token, mask).mean()
        else:
            loss = (per_token * mask).sum() / (len(s.sum) * self.max_completion_length)
        return LossOutput(loss, {"online/score": scores.mean().detach(),
                                 "online/kl_k3": masked_mean(kl, mask).mean().detach(),
                                 "online/clip_fraction": clip_fraction(ratio, adv, self.epsilon, mask)})
