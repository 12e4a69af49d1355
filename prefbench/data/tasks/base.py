"""The interface of a built-in task, and the preference data every task derives from it."""
from __future__ import annotations

import math
import random


class SyntheticTask:
    """A task is a prompt distribution, a behaviour policy that writes completions, and a gold reward.

    From these three the base class derives everything the pipeline needs: an unlabeled corpus for
    pretraining, preference pairs labelled by the gold reward under Bradley-Terry noise, and prompts.
    """

    name: str
    max_new_tokens: int = 48
    version: int = 1  # raised when the prompts, the policy or the reward change; part of cached stages' keys

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

    def pairs(self, n: int, seed: int, temperature: float = 0.0) -> list[dict]:
        """n preference pairs. P(a preferred to b) = sigma((r_a - r_b) / temperature); 0 = deterministic."""
        rng = random.Random(f"{self.name}-pairs-{seed}")
        rows: list[dict] = []
        while len(rows) < n:
            p = self.prompt(rng)
            a, b = self.completion(p, rng), self.completion(p, rng)
            ra, rb = self.reward(p, a), self.reward(p, b)
            if a == b or ra == rb:
                continue
            if temperature > 0:
                a_wins = rng.random() < 1 / (1 + math.exp(-(ra - rb) / temperature))
            else:
                a_wins = ra > rb
            chosen, rejected = (a, b) if a_wins else (b, a)
            rows.append({"prompt": p, "chosen": chosen, "rejected": rejected})
        return rows
