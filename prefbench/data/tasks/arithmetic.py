"""Evaluate a small expression: a verifiable answer and a sparse gold reward (1 if exactly right, else 0).

Prompt: 'compute <a> <op> <b> [<op> <c>]' with single digits 1-9 and the operators + - *, e.g.
'compute 7 - 2 * 3'; the value follows the usual precedence (* before + and -, then left to right).
Format rule: the answer is the text after the completion's last '=' (the whole completion when it has
none), stripped of surrounding whitespace; it must be an integer written in ASCII digits with an optional
leading '-' ('1', '-4'; not '+1', '01', '1.0' or '1 apple'). The gold reward is 1.0 when the answer is the
value, else 0.0. The behaviour policy writes the answer alone or after the restated expression
('7 - 2 * 3 = 1'); its value is right, off by 1-3, or the left-to-right value (precedence ignored).
"""
from __future__ import annotations

import random
import re

from prefbench.data.tasks import register_task
from prefbench.data.tasks.base import SyntheticTask

PROMPT = re.compile(r"compute ([1-9](?: [-+*] [1-9]){1,2})")
INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


def expression(prompt: str) -> list[str]:
    """A prompt's expression as tokens: digit, operator, digit[, operator, digit]."""
    match = PROMPT.fullmatch(prompt)
    if match is None:
        raise ValueError(f"not an arithmetic prompt: {prompt!r}")
    return match[1].split(" ")


def value(tokens: list[str], precedence: bool = True) -> int:
    """The expression's value; ``precedence=False``: strictly left to right."""
    terms, ops = [int(tokens[0])], []
    for op, digit in zip(tokens[1::2], tokens[2::2]):
        if op == "*" and precedence:
            terms[-1] *= int(digit)
        else:
            terms.append(int(digit))
            ops.append(op)
    total = terms[0]
    for op, term in zip(ops, terms[1:]):
        total = total * term if op == "*" else total + term if op == "+" else total - term
    return total


def answer(completion: str) -> int | None:
    """The completion's answer under the format rule, or None when it is not an integer."""
    text = completion.rsplit("=", 1)[-1].strip()
    return int(text) if INTEGER.fullmatch(text) else None


@register_task
class Arithmetic(SyntheticTask):
    name = "arithmetic"
    max_new_tokens = 16
    binary_reward = True

    def prompt(self, rng: random.Random) -> str:
        tokens = [str(rng.randint(1, 9))]
        for _ in range(rng.randint(1, 2)):
            tokens += [rng.choice("+-*"), str(rng.randint(1, 9))]
        return "compute " + " ".join(tokens)

    def completion(self, prompt: str, rng: random.Random) -> str:
        tokens = expression(prompt)
        right, draw = value(tokens), rng.random()
        if draw < 0.45:
            got = right
        elif draw < 0.7 and value(tokens, precedence=False) != right:
            got = value(tokens, precedence=False)
        else:
            got = right + rng.choice([-3, -2, -1, 1, 2, 3])
        return f"{' '.join(tokens)} = {got}" if rng.random() < 0.5 else str(got)

    def reward(self, prompt: str, completion: str) -> float:
        return float(answer(completion) == value(expression(prompt)))
