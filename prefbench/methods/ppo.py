"""Proximal Policy Optimization for language models (Schulman et al. 2017, eq. 7 and eq. 11-12 of GAE, Schulman et al.
2016), with the RLHF set-up of Ziegler et al. 2019 / Ouyang et al. 2022 (eq. 2: the judge's score at the last token,
a per-token KL penalty to the reference in the reward) and the defaults of Huang et al. 2024, "The N+ Implementation
Details of RLHF with PPO" as TRL's PPO trainer has them. Online.

Per sample, per completion token t (n tokens): r_t = -beta kl_t + [t = n - 1] score, kl_t = log pi_old(y_t) -
log pi_ref(y_t) (``kl_estimator=k3``: Schulman's k3), optionally whitened over the batch without shifting the mean
(``whiten_rewards``). GAE with the value head's V (the ``values`` statistic, detached as V_old):
delta_t = r_t + gamma V_{t+1} - V_t (V_n = 0), A_t = sum_l (gamma lambda)^l delta_{t+l}, returns R_t = A_t + V_t;
A whitened over the batch's tokens. Loss, averaged over every token of the batch:
-min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) + vf_coef 0.5 max((V - R)^2, (clip(V, V_old +- eps_v) - R)^2),
rho_t = pi_theta(y_t) / pi_old(y_t). pi_old and V_old are the policy and value head at the rollout's first
update (``SeqLogps.behaviour``): with ``updates_per_rollout`` = 1 (TRL's ``num_ppo_epochs=1``) rho = 1 and both
clips are inactive, the gradient is GAE's policy gradient plus the value regression; with more (Alg. 1's K
epochs; TRL's default 4, one mini-batch) the clips bound the later updates. Defaults: beta 0.05, eps 0.2,
vf_coef 0.1, eps_v 0.2, gamma 1, lambda 0.95 (TRL's), k 4 samples per prompt (the other online methods' sampling
budget), one update per rollout (the seeds' reference runs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prefbench.methods import register, scaled_by_strength
from prefbench.methods.base import BatchLogps, LossOutput, Method, clip_fraction, k3

KL_ESTIMATORS = ("k1", "k3")


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) over the masked entries, unbiased variance (TRL's ``masked_whiten``);
    without ``shift_mean`` the mean is added back. Zero outside the mask."""
    n = mask.sum()
    mean = (values * mask).sum() / n
    var = (((values - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates (B, T) of right-padded per-token rewards and values; V is 0 past each
    sequence's last token (the episode ends there)."""
    values, rewards = values * mask, rewards * mask
    adv, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        following = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv


@register
@dataclass
class PPO(Method):
    """L = token mean of -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + vf_coef * 0.5 max((V - R)^2, (V_clip - R)^2),
    A the whitened GAE of the KL-penalised reward."""

    beta: float = scaled_by_strength(0.05)
    epsilon: float = 0.2
    vf_coef: float = 0.1
    cliprange_value: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    kl_estimator: str = "k1"
    samples_per_prompt: int = 4
    updates_per_rollout: int = 1
    name = "ppo"
    view = "online"
    needs_reference = True
    init = "sft"
    needs_samples = True
    statistics = frozenset({"tokens", "values"})

    def __post_init__(self):
        self.require_positive(epsilon=self.epsilon, vf_coef=self.vf_coef, cliprange_value=self.cliprange_value,
                              samples_per_prompt=self.samples_per_prompt)
        self.require_whole(updates_per_rollout=self.updates_per_rollout)
        if self.beta < 0:
            raise ValueError(f"method.beta must be >= 0 (got {self.beta})")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"method.gamma and method.lam must be in [0, 1] (got {self.gamma}, {self.lam})")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"method.kl_estimator must be one of {', '.join(KL_ESTIMATORS)} "
                             f"(got {self.kl_estimator!r})")

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        s = policy.samples
        mask = s.mask.to(s.tokens.dtype)
        behaviour, ref = s.behaviour, reference.samples.tokens
        old = behaviour.tokens
        kl = (old - ref if self.kl_estimator == "k1" else k3(old, ref)) * mask
        rewards = -self.beta * kl
        last = (s.n_tokens - 1).clamp(min=0)
        rewards = rewards.index_put((torch.arange(len(last), device=last.device), last),
                                    s.score.to(rewards.dtype), accumulate=True) * mask
        if self.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        v_old = behaviour.values * mask
        adv = gae(rewards, v_old, mask, self.gamma, self.lam)
        returns = adv + v_old
        adv = whiten(adv, mask)
        ratio = torch.exp(s.tokens - old)
        pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - self.epsilon, 1 + self.epsilon))
        v_clipped = v_old + (s.values - v_old).clamp(-self.cliprange_value, self.cliprange_value)
        vf = 0.5 * torch.max((s.values - returns) ** 2, (v_clipped - returns) ** 2)
        n = mask.sum().clamp(min=1)
        pg_loss, vf_loss = (pg * mask).sum() / n, (vf * mask).sum() / n
        return LossOutput(pg_loss + self.vf_coef * vf_loss,
                          {"online/score": s.score.mean().detach(), "online/kl": kl.sum(1).mean(),
                           "online/value_loss": vf_loss.detach(),
                           "online/clip_fraction": clip_fraction(ratio, adv, self.epsilon, mask.bool())})
