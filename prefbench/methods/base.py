"""The method interface: a method is a pure loss over log-prob statistics the trainer computes.

The trainer does every forward pass and hands a method the completion-token statistics of the policy (and of
the reference, when the method declares ``needs_reference``), by role of the method's view
(``prefbench.methods.views``). A method never sees the model and never mutates anything; it returns a scalar loss or
per-example losses for the trainer to reduce, extra metrics, and, if it keeps running state, its next state.
What a method may declare, all optional but ``name``, ``view`` and ``needs_reference``:

  view            a registered view: the roles of its batches (``prefbench.methods.views``)
  needs_reference whether ``loss`` gets the reference's statistics (cached, one pass per view)
  init            'base' or 'sft': the checkpoint training starts from
  statistics      what the trainer adds to the sequence statistics, of ``STATISTICS`` (per-token log-probs,
                  prompt log-probs, vocabulary statistics); may be a property when an option decides it
  needs_samples   online: each step trains on fresh policy samples with judge scores (``SeqLogps.score``);
                  the trainer takes them from its ``rollout`` (``prefbench.train.trainer.train``), which draws
                  ``samples_per_prompt`` of them per prompt, consecutive in the batch (``group_scores``)
  updates_per_rollout  online: optimizer steps on each rollout (default 1); from the second on, the policy's
                  statistics at the first are ``SeqLogps.old`` (pi_old), so a ratio clip acts (``prefbench.train.reuse``)
  initial_state() running state (tensors) for ``loss(policy, reference, state)``, checkpointed with the optimizer
  scaled_by_strength(...) fields that the sweep's ``strength`` scales
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

import torch

Init = Literal["base", "sft"]


STATISTICS = {  # what a method may ask the trainer for besides S(y) and n(y), and the SeqLogps fields they fill
    "tokens": "per-token log-probs log pi(y_t | x, y_<t), the policy's and the reference's (tokens)",
    "prompt": "log-prob sum and count of the prompt tokens after the first, the policy's and the reference's "
              "(prompt_sum, prompt_n_tokens)",
    "collision": "per completion token, log sum_v pi(v | x, y_<t)^2 over the vocabulary (token_collision)",
    "reference_kl": "per completion token, KL(pi_ref(.|x, y_<t) || pi(.|x, y_<t)) over the vocabulary, the "
                    "policy's (token_kl); the trainer runs the reference model beside the policy",
    "values": "per completion token, V(x, y_<t) of a value head on the policy's last hidden state where y_t is "
              "predicted, the policy's (values); the trainer owns the head (optimised and checkpointed with the "
              "policy, never saved into it)",
}


@dataclass(frozen=True)
class SeqLogps:
    """Per-sequence statistics over completion tokens, shape (B,), and what ``statistics`` adds.

    ``sum`` is S(y) = sum_t log pi(y_t | x, y_<t); ``n_tokens`` is n(y); ``mean`` is A(y) = S(y)/n(y).
    Per-token fields are (B, T), right-padded with 0 (``mask``): ``tokens`` log pi(y_t | x, y_<t);
    ``token_collision`` log sum_v pi(v | x, y_<t)^2; ``token_kl`` KL(pi_ref || pi) at each position;
    ``values`` the value head's V(x, y_<t).
    ``prompt_sum``, ``prompt_n_tokens``: the same over the prompt tokens after the first.
    ``score`` (online methods only): the judge's score of each sequence.
    ``old`` (online methods only): the policy's statistics of these sequences when their rollout was first
    trained on, detached: pi_old and V_old (``prefbench.train.reuse``); read them through ``behaviour``.
    """

    sum: torch.Tensor
    n_tokens: torch.Tensor
    tokens: torch.Tensor | None = None
    score: torch.Tensor | None = None
    prompt_sum: torch.Tensor | None = None
    prompt_n_tokens: torch.Tensor | None = None
    token_collision: torch.Tensor | None = None
    token_kl: torch.Tensor | None = None
    values: torch.Tensor | None = None
    old: SeqLogps | None = None

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n_tokens.clamp(min=1)

    @property
    def mask(self) -> torch.Tensor:
        """(B, T) True at the completion tokens of the per-token fields."""
        per_token = next((t for t in (self.tokens, self.token_collision, self.token_kl, self.values)
                          if t is not None), None)
        width = 0 if per_token is None else per_token.shape[1]
        return torch.arange(width, device=self.n_tokens.device)[None] < self.n_tokens[:, None]

    def detached(self) -> SeqLogps:
        """The same statistics cut from the graph (without ``old``)."""
        return SeqLogps(**{f.name: getattr(self, f.name).detach() for f in fields(self)
                           if f.name != "old" and getattr(self, f.name) is not None})

    @property
    def behaviour(self) -> SeqLogps:
        """The behaviour policy's statistics (pi_old, V_old): ``old`` when the trainer gave them (a rollout
        reused for several updates), else these, detached (one update per rollout: pi_old = pi_theta)."""
        return self.old if self.old is not None else self.detached()

    def token_mean_nll(self) -> torch.Tensor:
        """NLL averaged over every completion token of the batch: -sum_i S(y_i) / sum_i n(y_i)."""
        return -self.sum.sum() / self.n_tokens.sum().clamp(min=1)


class BatchLogps(Mapping[str, SeqLogps]):
    """The sequences of one batch by role: ``batch["chosen"]`` or ``batch.chosen``. Every trained role of the
    view is present (with zero sequences when the batch has none of it); a role the view does not declare
    reads as None. paired view: ``chosen[i]`` and ``rejected[i]`` share a prompt. unpaired view: ``chosen``
    are the desirable and ``rejected`` the undesirable examples (not aligned), ``mismatched`` pairs each
    prompt with another example's completion (KTO's KL estimate). sft view: ``chosen`` only."""

    def __init__(self, **roles: SeqLogps | None):
        self._roles = {role: s for role, s in roles.items() if s is not None}

    def __getitem__(self, role: str) -> SeqLogps:
        return self._roles[role]

    def __iter__(self) -> Iterator[str]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    def __getattr__(self, role: str) -> SeqLogps | None:
        if role.startswith("__"):
            raise AttributeError(role)
        return self.__dict__.get("_roles", {}).get(role)

    def __repr__(self) -> str:
        return f"BatchLogps({', '.join(f'{r}: {len(s.sum)}' for r, s in self._roles.items())})"


class StrengthNotApplicable(ValueError):
    """``strength`` other than 1 for a method that marks no field: it would run the same job again."""


STRENGTH = "strength"  # dataclass field metadata: how the sweep's `strength` scales the field


def scaled_by_strength(default: float, *, divide: bool = False):
    """A hyper-parameter that ``strength`` scales (the pull towards the anchor, one meaning for every method,
    swept by ``sweep=beta``): multiplied by it when a larger value keeps the policy closer to the anchor
    (DPO's beta), divided by it when a larger value moves the policy further (ORPO's lambda)."""
    return field(default=default, metadata={STRENGTH: "divide" if divide else "multiply"})


@dataclass
class LossOutput:
    """``loss``: the scalar to minimise; or ``losses``, one per example, which the trainer reduces to their
    mean, weighted by ``weights`` when given (WPO-style or class-imbalance weights). ``state``: a stateful
    method's state after this batch."""

    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    state: dict[str, torch.Tensor] | None = None

    def total(self) -> torch.Tensor:
        if self.loss is not None:
            return self.loss
        if self.losses is None:
            raise ValueError("a method's LossOutput needs loss or losses")
        if self.weights is None:
            return self.losses.mean()
        return (self.weights * self.losses).sum() / self.weights.sum()


def log_ratios(policy: BatchLogps, reference: BatchLogps, normalise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The paired roles' log-ratios h(y) = S_theta(y) - S_ref(y), (chosen, rejected); per token (divided by
    n(y)) when ``normalise``."""
    if normalise:
        return policy.chosen.mean - reference.chosen.mean, policy.rejected.mean - reference.rejected.mean
    return policy.chosen.sum - reference.chosen.sum, policy.rejected.sum - reference.rejected.sum


class Method:
    """Base class of every method plugin. Subclasses are dataclasses whose fields are hyper-parameters;
    the class attributes are the declarations listed in this module's docstring."""

    name: ClassVar[str]
    view: ClassVar[str]
    needs_reference: ClassVar[bool]
    init: ClassVar[Init] = "base"
    statistics: ClassVar[frozenset[str]] = frozenset()
    needs_samples: ClassVar[bool] = False
    samples_per_prompt: ClassVar[int] = 1
    updates_per_rollout: ClassVar[int] = 1

    def initial_state(self) -> dict[str, torch.Tensor] | None:
        """A stateful method's state before its first batch; None (the default) for a stateless one."""
        return None

    def loss(self, policy: BatchLogps, reference: BatchLogps | None) -> LossOutput:
        """A stateful method takes a third argument, ``state`` (its ``initial_state()``, then the ``state``
        of its previous LossOutput)."""
        raise NotImplementedError

    @staticmethod
    def require_positive(**values: float) -> None:
        for key, value in values.items():
            if not value > 0:
                raise ValueError(f"method.{key} must be > 0 (got {value})")

    @staticmethod
    def require_whole(**values: int) -> None:
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"method.{key} must be a whole number >= 1 (got {value!r})")


@dataclass
class PairedReferenceMethod(Method):
    """The reference-anchored paired family: a paired view, log-ratios against the frozen reference,
    initialised from the SFT stage, ``beta`` scaled by strength and required positive. A member redeclares
    ``beta`` for another default, and its own ``__post_init__`` calls this one first."""

    beta: float = scaled_by_strength(0.1)
    view = "paired"
    needs_reference = True
    init = "sft"

    def __post_init__(self):
        self.require_positive(beta=self.beta)


@dataclass
class PairedReferenceFreeMethod(Method):
    """The reference-free paired family with a reward scale: a paired view scored by the policy's own
    log-likelihoods, no reference, initialised from the SFT stage, ``beta`` required positive. Each member
    declares ``beta`` with its own default, and its own ``__post_init__`` calls this one first."""

    beta: float
    view = "paired"
    needs_reference = False
    init = "sft"

    def __post_init__(self):
        self.require_positive(beta=self.beta)


def group_scores(seq: SeqLogps, k: int) -> torch.Tensor:
    """An online batch's judge scores as (prompts, k): the rollout puts a prompt's k samples side by side."""
    if seq.score is None or len(seq.score) % k:
        raise ValueError(f"an online batch needs judge scores in groups of samples_per_prompt={k}")
    return seq.score.view(-1, k).to(seq.sum.dtype)


def clip_fraction(ratio: torch.Tensor, adv: torch.Tensor, epsilon: float, mask: torch.Tensor | None = None):
    """The share of tokens (under ``mask``) or sequences whose clipped term the min picks, so their gradient is
    cut: rho < 1 - eps with A < 0, or rho > 1 + eps with A > 0 (TRL's ``clip_ratio``); 0 with one update per
    rollout."""
    cut = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon) & (adv > 0))
    if mask is None:
        return cut.float().mean().detach()
    return ((cut & mask).sum() / mask.sum().clamp(min=1)).detach()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the mean of ``values`` over ``mask``: (B, T) -> (B,)."""
    return (values * mask).sum(1) / mask.sum(1).clamp(min=1)


def k3(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Schulman's unbiased, non-negative per-token estimator of KL(pi_theta || pi_ref) on samples of pi_theta."""
    d = reference - policy
    return d.exp() - d - 1
