"""Data views: the roles a method's batches hold and how they are built from a tokenized split.

A view is declared once (``ViewSpec``) and registered by name; a method names its view (``Method.view``).
The trainer packs a view's ``roles`` into one forward with gradients and its ``no_grad_roles`` into one
without, the reference cache scores every role, and the training metrics loop over the roles, so a new
view (a plugin's own, registered in the plugin's file) needs no edit anywhere else. Built-in views:

  paired:   chosen, rejected (aligned: the same prompt)
  sft:      chosen
  unpaired: chosen (desirable) or rejected (undesirable), plus the no-grad role mismatched: the prompt with
            the completion of an example of another prompt (``partners``: seeded, so its reference log-probs
            cache like the rest)
  online:   samples: one example per distinct prompt of the data (its completion unused); the trainer trains
            on the rollout's fresh samples of those prompts, ``samples_per_prompt`` consecutive ones per prompt
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Seq = tuple[list[int], list[int]]  # (prompt token ids, completion token ids)
Columns = Mapping[str, list]  # a split's columns: prompt_ids + chosen_ids, rejected_ids (paired data) or
#                               completion_ids, label (unpaired data)
Builder = Callable[[str, Columns, int], list[dict[str, Seq]]]  # (data kind, columns, seed) -> examples


@dataclass(frozen=True)
class ViewSpec:
    """``build(kind, columns, seed)`` returns one dict per example, role -> (prompt_ids, completion_ids); an
    example may lack a role. ``kinds``: the data kinds it builds from ('paired', 'unpaired'). ``margin``:
    the (preferred, dispreferred) roles of an aligned pair, for the reward-margin metrics."""

    name: str
    roles: tuple[str, ...]
    build: Builder
    kinds: tuple[str, ...] = ("paired",)
    no_grad_roles: tuple[str, ...] = ()
    margin: tuple[str, str] | None = None


_VIEWS: dict[str, ViewSpec] = {}


def register_view(spec: ViewSpec) -> ViewSpec:
    _VIEWS[spec.name] = spec
    return spec


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation without fixed points: a random cycle through all n items (KTO's partners)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = list(range(n))
    for a, b in zip(order, order[1:] + order[:1]):
        partner[a] = b
    return partner


def partners(prompts: list[list[int]], seed: int) -> list[int]:
    """KTO's mismatched partners: a seeded permutation without fixed points that gives each example another
    prompt's example. Examples are grouped by prompt (groups and members in a seeded order) and rotated by
    the largest group's size, so no partner shares the example's prompt unless one prompt holds more than
    half of the examples (then some must)."""
    rng, groups = random.Random(seed), {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(tuple(prompt), []).append(i)
    keys = list(groups)
    rng.shuffle(keys)
    order = []
    for key in keys:
        members = groups[key][:]
        rng.shuffle(members)
        order += members
    n, shift = len(order), max(map(len, groups.values()), default=0)
    shift = shift if shift < n else min(1, n - 1)  # a single prompt: any other example
    partner = [0] * n
    for j, i in enumerate(order):
        partner[i] = order[(j + shift) % n]
    return partner


def _paired(kind: str, c: Columns, seed: int) -> list[dict[str, Seq]]:
    p = c["prompt_ids"]
    return [{"chosen": (p[i], c["chosen_ids"][i]), "rejected": (p[i], c["rejected_ids"][i])} for i in range(len(p))]


def _sft(kind: str, c: Columns, seed: int) -> list[dict[str, Seq]]:
    p = c["prompt_ids"]
    if kind == "paired":
        return [{"chosen": (p[i], c["chosen_ids"][i])} for i in range(len(p))]
    return [{"chosen": (p[i], c["completion_ids"][i])} for i in range(len(p)) if c["label"][i]]


def _unpaired(kind: str, c: Columns, seed: int) -> list[dict[str, Seq]]:
    p = c["prompt_ids"]
    if kind == "paired":  # each pair gives one desirable and one undesirable example
        prompts, completions = p + p, c["chosen_ids"] + c["rejected_ids"]
        labels = [True] * len(p) + [False] * len(p)
    else:
        prompts, completions, labels = p, c["completion_ids"], c["label"]
    partner = partners(prompts, seed)
    return [{("chosen" if labels[i] else "rejected"): (prompts[i], completions[i]),
             "mismatched": (prompts[i], completions[partner[i]])} for i in range(len(prompts))]


def _online(kind: str, c: Columns, seed: int) -> list[dict[str, Seq]]:
    seen, out = set(), []
    completions = c["chosen_ids"] if kind == "paired" else c["completion_ids"]
    for prompt, completion in zip(c["prompt_ids"], completions):
        if tuple(prompt) not in seen:
            seen.add(tuple(prompt))
            out.append({"samples": (prompt, completion)})
    return out


register_view(ViewSpec("paired", ("chosen", "rejected"), _paired, margin=("chosen", "rejected")))
register_view(ViewSpec("sft", ("chosen",), _sft, kinds=("paired", "unpaired")))
register_view(ViewSpec("unpaired", ("chosen", "rejected"), _unpaired, kinds=("paired", "unpaired"),
                       no_grad_roles=("mismatched",)))
register_view(ViewSpec("online", ("samples",), _online, kinds=("paired", "unpaired")))
