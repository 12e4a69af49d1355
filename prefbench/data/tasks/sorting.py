"""Sort a list of digits: the gold reward is how much of the sorted list the completion gets right.

Prompt: 'sort: 7 2 9 2' (3-8 digits). The completion's tokens are its whitespace-separated words. Reward:
the fraction of the sorted list's positions that the completion's token at that position matches,
minus 0.5 when the completion has more or fewer tokens than the list, and minus 1 (once) when any
token is not a single ASCII digit 0-9 ('12', 'x' or a non-ASCII digit are not).
"""
from __future__ import annotations

import random
import string

from prefbench.data.tasks import register_task
from prefbench.data.tasks.base import SyntheticTask

DIGITS = frozenset(string.digits)


@register_task
class Sorting(SyntheticTask):
    name = "sorting"
    max_new_tokens = 24
    version = 2  # 2: only the ASCII digits 0-9 count as digits

    def prompt(self, rng: random.Random) -> str:
        return "sort: " + " ".join(str(rng.randrange(10)) for _ in range(rng.randint(3, 8)))

    def completion(self, prompt: str, rng: random.Random) -> str:
        digits = sorted(prompt.split(" ")[1:])
        for _ in range(rng.choice([0, 0, 1, 2, 3])):  # a few local mistakes
            i = rng.randrange(len(digits))
            digits[i] = str(rng.randrange(10)) if rng.random() < 0.7 else "x"
        if rng.random() < 0.2:
            digits = digits[:-1] if rng.random() < 0.5 else digits + [str(rng.randrange(10))]
        return " ".join(digits)

    def reward(self, prompt: str, completion: str) -> float:
        target = sorted(prompt.split(" ")[1:])
        got = completion.split()
        correct = sum(a == b for a, b in zip(got, target)) / len(target)
        return correct - 0.5 * (len(got) != len(target)) - 1.0 * any(g not in DIGITS for g in got)
