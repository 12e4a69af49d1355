"""Supervised fine-tuning on the chosen completions."""
from __future__ import annotations

from dataclasses import dataclass

from methods import register
from methods.base import BatchLogps, LossOutput, Method


def token_mean_nll(logps) -> "torch.Tensor":  # noqa: F821
    """NLL averaged over every completion token of the batch: -sum_i S(y_i) / sum_i n(y_i)."""
    return -logps.sum.sum() / logps.n_tokens.sum().clamp(min=1)


@register
@dataclass
class SFT(Method):
    """Token-mean negative log-likelihood of the chosen completion (prompt and padding masked)."""

    name = "sft"
    view = "sft"
    needs_reference = False
    init = "base"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        return LossOutput(token_mean_nll(policy.chosen))
