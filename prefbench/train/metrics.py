"""Training metrics with one meaning for every method (README, "summary.json")."""
from __future__ import annotations

import torch

from prefbench.methods import BatchLogps, ViewSpec


def uniform_metrics(policy: BatchLogps, reference: BatchLogps | None, beta: float, view: ViewSpec) -> dict:
    """For each trained role of the view: logps/<role> (summed, and per token); nll/chosen (token mean); with
    a reference, the implicit reward beta*(S_theta - S_ref) of each role, and for a view's aligned pair
    (``ViewSpec.margin``) the reward margin and accuracy."""
    out: dict[str, torch.Tensor] = {}
    for role in view.roles:
        s = policy[role] if role in policy else None
        if s is not None and len(s.sum):
            out[f"logps/{role}"] = s.sum.mean()
            out[f"logps/{role}_per_token"] = s.mean.mean()
    if policy.chosen is not None and len(policy.chosen.sum):
        out["nll/chosen"] = policy.chosen.token_mean_nll()
    if reference is not None:
        rewards = {}
        for role in view.roles:
            s, r = policy[role] if role in policy else None, reference[role] if role in reference else None
            if s is not None and r is not None and len(s.sum):
                rewards[role] = beta * (s.sum - r.sum)
                out[f"rewards/{role}"] = rewards[role].mean()
        if view.margin and all(role in rewards for role in view.margin):
            margin = rewards[view.margin[0]] - rewards[view.margin[1]]
            out["rewards/margin"] = margin.mean()
            out["rewards/accuracy"] = (margin > 0).float().mean()
    return {k: float(v.detach()) for k, v in out.items()}
