"""Training metrics with one meaning for every method (README, "summary.json")."""
from __future__ import annotations

import torch

from methods import BatchLogps


def uniform_metrics(policy: BatchLogps, reference: BatchLogps | None, beta: float, paired: bool) -> dict:
    """logps/{chosen,rejected} (summed, and per token), nll/chosen (token mean); with a reference, the
    implicit reward beta*(S_theta - S_ref) of each role, and for aligned pairs its margin and accuracy."""
    out: dict[str, torch.Tensor] = {}
    for role in ("chosen", "rejected"):
        s = getattr(policy, role)
        if s is not None and len(s.sum):
            out[f"logps/{role}"] = s.sum.mean()
            out[f"logps/{role}_per_token"] = s.mean.mean()
    if len(policy.chosen.sum):
        out["nll/chosen"] = policy.chosen.token_mean_nll()
    if reference is not None:
        rewards = {}
        for role in ("chosen", "rejected"):
            s, r = getattr(policy, role), getattr(reference, role)
            if s is not None and r is not None and len(s.sum):
                rewards[role] = beta * (s.sum - r.sum)
                out[f"rewards/{role}"] = rewards[role].mean()
        if paired and len(rewards) == 2:
            margin = rewards["chosen"] - rewards["rejected"]
            out["rewards/margin"] = margin.mean()
            out["rewards/accuracy"] = (margin > 0).float().mean()
    return {k: float(v.detach()) for k, v in out.items()}
