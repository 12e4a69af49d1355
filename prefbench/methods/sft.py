"""Supervised fine-tuning on the chosen completions."""
from __future__ import annotations

from dataclasses import dataclass

from prefbench.methods import register
from prefbench.methods.base import BatchLogps, LossOutput, Method


@register
@dataclass
class SFT(Method):
    """Token-mean negative log-likelihood of the chosen completion (prompt and padding masked)."""

    name = "sft"
    view = "sft"
    needs_reference = False
    init = "base"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        return LossOutput(policy.chosen.token_mean_nll())
