"""The method interface: a method is a pure loss over per-sequence log-prob statistics.

The trainer does every forward pass and hands a method the completion-token statistics of the
policy (and of the reference, when the method declares ``needs_reference``). A method never sees
the model, never mutates state, and returns one scalar loss plus optional extra metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

View = Literal["paired", "unpaired", "sft"]
Init = Literal["base", "sft"]


@dataclass(frozen=True)
class SeqLogps:
    """Per-sequence statistics over completion tokens only, shape (B,).

    ``sum`` is S(y) = sum_t log pi(y_t | x, y_<t); ``n_tokens`` is n(y); ``mean`` is A(y) = S(y)/n(y).
    """

    sum: torch.Tensor
    n_tokens: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n_tokens.clamp(min=1)

    def token_mean_nll(self) -> torch.Tensor:
        """NLL averaged over every completion token of the batch: -sum_i S(y_i) / sum_i n(y_i)."""
        return -self.sum.sum() / self.n_tokens.sum().clamp(min=1)


@dataclass(frozen=True)
class BatchLogps:
    """The sequences of one batch, by role.

    paired view: ``chosen[i]`` and ``rejected[i]`` share a prompt.
    unpaired view: ``chosen`` are the desirable and ``rejected`` the undesirable examples (not aligned);
    ``mismatched`` pairs each prompt with another example's completion (KTO's KL estimate).
    sft view: ``chosen`` only.
    """

    chosen: SeqLogps
    rejected: SeqLogps | None = None
    mismatched: SeqLogps | None = None


STRENGTH = "strength"  # dataclass field metadata: how the sweep's `strength` scales the field


def scaled_by_strength(default: float, *, divide: bool = False):
    """A hyper-parameter that ``strength`` scales (the pull towards the anchor, one meaning for every method,
    swept by ``sweep=beta``): multiplied by it when a larger value keeps the policy closer to the anchor
    (DPO's beta), divided by it when a larger value moves the policy further (ORPO's lambda)."""
    return field(default=default, metadata={STRENGTH: "divide" if divide else "multiply"})


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """Base class of every method plugin. Subclasses are dataclasses whose fields are hyper-parameters.

    ``view`` names the data view the trainer feeds it; ``needs_reference`` whether ``loss`` gets
    reference statistics; ``init`` whether training starts from the base or the SFT policy.
    """

    name: ClassVar[str]
    view: ClassVar[View]
    needs_reference: ClassVar[bool]
    init: ClassVar[Init] = "base"

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        raise NotImplementedError

    @staticmethod
    def require_positive(**values: float) -> None:
        for key, value in values.items():
            if not value > 0:
                raise ValueError(f"method.{key} must be > 0 (got {value})")
