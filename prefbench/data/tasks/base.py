"""The interface of a built-in task, the simulated annotator that labels its pairs, and the preference data
every task derives from the two."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Annotator:
    """Who labels a built-in task's pairs (``task.annotator``); evaluation always uses the noiseless gold reward.

    The annotator's utility of a completion is u(y) = r(y) + length_bias * words(y) (Singhal et al. 2023: labellers
    and reward models favour the longer answer), and it prefers a to b with probability
    P(a > b) = sigma((u_a - u_b) / temperature), the Bradley-Terry model (temperature 0: the higher utility wins,
    ties to the higher gold reward). Each label is then flipped with probability ``flip_rate`` (AlpacaFarm's
    simulated annotators flip 25%)."""

    temperature: float = 0.0
    flip_rate: float = 0.0
    length_bias: float = 0.0  # reward units per whitespace-separated word

    def __post_init__(self):
        if self.temperature < 0 or not 0 <= self.flip_rate <= 1:
            raise ValueError(f"annotator: temperature must be >= 0 and flip_rate in [0, 1], got {self}")

    def prefers_first(self, gold: tuple[float, float], words: tuple[int, int], rng: random.Random) -> bool:
        """Whether the first of two completions (gold rewards ``gold``, lengths ``words``) is labelled chosen."""
        ua, ub = (r + self.length_bias * n for r, n in zip(gold, words))
        if self.temperature > 0:
            first = rng.random() < 1 / (1 + math.exp(max(min(-(ua - ub) / self.temperature, 700.0), -700.0)))
        else:
            first = ua > ub or (ua == ub and gold[0] > gold[1])
        if self.flip_rate > 0 and rng.random() < self.flip_rate:
            first = not first
        return first


class SyntheticTask:
    """A task is a prompt distribution, a behaviour policy that writes completions, and a gold reward.

    From these three the base class derives everything the pipeline needs: an unlabeled corpus for
    pretraining, preference pairs labelled by an ``Annotator``, and prompts.
    """

    name: str
    max_new_tokens: int = 48
    version: int = 1  # raised when the prompts, the policy or the reward change; part of cached stages' keys
    binary_reward: bool = False  # the gold reward is 1 (correct) or 0: evaluation reports pass@k beside win rates

    def prompt(self, rng: random.Random) -> str:
        raise NotImplementedError

    def completion(self, prompt: str, rng: random.Random) -> str:
        """One completion from the behaviour policy (varied quality, some malformed)."""
        raise NotImplementedError

    def reward(self, prompt: str, completion: str) -> float:
        """Gold reward: deterministic, higher is better."""
        raise NotImplementedError

    def corpus(self, n: int, seed: int, exclude: frozenset[str] | set[str] = frozenset()) -> list[dict]:
        """Up to n unlabeled rows whose prompts are not in ``exclude`` (at most 100 n prompts are drawn)."""
        rng = random.Random(f"{self.name}-corpus-{seed}")
        rows = []
        for _ in range(100 * n):
            if len(rows) == n:
                break
            p = self.prompt(rng)
            if p not in exclude:
                rows.append({"prompt": p, "completion": self.completion(p, rng)})
        return rows

    def pairs(self, n: int, seed: int, annotator: Annotator = Annotator()) -> list[dict]:
        """n distinct preference pairs of two behaviour-policy completions with different gold rewards, labelled
        by ``annotator``."""
        rng = random.Random(f"{self.name}-pairs-{seed}")
        rows: list[dict] = []
        seen: set[tuple[str, frozenset[str]]] = set()
        while len(rows) < n:
            p = self.prompt(rng)
            a, b = self.completion(p, rng), self.completion(p, rng)
            ra, rb = self.reward(p, a), self.reward(p, b)
            if a == b or ra == rb or (p, frozenset((a, b))) in seen:
                continue
            seen.add((p, frozenset((a, b))))
            first = annotator.prefers_first((ra, rb), (len(a.split()), len(b.split())), rng)
            chosen, rejected = (a, b) if first else (b, a)
            rows.append({"prompt": p, "chosen": chosen, "rejected": rejected})
        return rows

    def gold_agreement(self, rows: list[tuple[str, str, str]]) -> float | None:
        """The fraction of (prompt, chosen, rejected) rows whose chosen side has the higher gold reward."""
        if not rows:
            return None
        return sum(self.reward(p, c) > self.reward(p, r) for p, c, r in rows) / len(rows)
