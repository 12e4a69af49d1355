"""Data views that methods declare, and batching of their sequences into padded forward passes.

An example of a view maps roles to (prompt_ids, completion_ids) sequences:
  paired:   chosen, rejected
  sft:      chosen
  unpaired: chosen (desirable) or rejected (undesirable), plus mismatched (the prompt with another
            example's completion, a seeded derangement, so its reference log-probs cache like the rest)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from datasets import Dataset

from bench.data import derangement
from bench.errors import UserError

Seq = tuple[list[int], list[int]]
TRAINED_ROLES = ("chosen", "rejected")
PROBE_ROLES = ("mismatched",)


@dataclass
class View:
    name: str
    examples: list[dict[str, Seq]]

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def roles(self) -> list[str]:
        return sorted({r for ex in self.examples for r in ex})

    def n_tokens(self, indices, roles=TRAINED_ROLES) -> int:
        """Tokens of the sequences trained on (probe roles such as KTO's mismatched excluded)."""
        return sum(len(p) + len(c) for i in indices for r, (p, c) in self.examples[i].items() if r in roles)


def build_view(name: str, kind: str, ds: Dataset, seed: int) -> View:
    """The ``name`` view of a tokenized split of ``kind`` ('paired' or 'unpaired') data."""
    p = list(ds["prompt_ids"])
    if kind == "paired":
        c, r = list(ds["chosen_ids"]), list(ds["rejected_ids"])
        if name == "paired":
            return View(name, [{"chosen": (p[i], c[i]), "rejected": (p[i], r[i])} for i in range(len(p))])
        if name == "sft":
            return View(name, [{"chosen": (p[i], c[i])} for i in range(len(p))])
        if name == "unpaired":  # each pair gives one desirable and one undesirable example
            prompts, completions, labels = p + p, c + r, [True] * len(p) + [False] * len(p)
            return _unpaired(prompts, completions, labels, seed)
    else:
        comp, labels = list(ds["completion_ids"]), list(ds["label"])
        if name == "unpaired":
            return _unpaired(p, comp, labels, seed)
        if name == "sft":
            return View(name, [{"chosen": (p[i], comp[i])} for i in range(len(p)) if labels[i]])
    raise UserError(f"the {name!r} view needs paired data (prompt/chosen/rejected); this dataset is {kind}")


def _unpaired(prompts, completions, labels, seed: int) -> View:
    partner = derangement(len(prompts), seed)
    return View("unpaired", [
        {("chosen" if labels[i] else "rejected"): (prompts[i], completions[i]),
         "mismatched": (prompts[i], completions[partner[i]])}
        for i in range(len(prompts))
    ])


@dataclass
class Packed:
    """Sequences of several roles right-padded into one forward batch.

    ``completion_mask[b, t]`` is 1 where token t of row b is a completion token (scored).
    ``slices[role]`` selects that role's rows; ``index[role]`` their example indices in the view.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    slices: dict[str, slice]
    index: dict[str, torch.Tensor]

    def to(self, device) -> "Packed":
        return Packed(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device),
                      self.slices, {k: v.to(device) for k, v in self.index.items()})

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def pack(view: View, indices: list[int], roles, pad_id: int) -> Packed | None:
    seqs, slices, index = [], {}, {}
    for role in roles:
        rows = [i for i in indices if role in view.examples[i]]
        if rows:
            slices[role] = slice(len(seqs), len(seqs) + len(rows))
            index[role] = torch.tensor(rows)
            seqs += [view.examples[i][role] for i in rows]
    if not seqs:
        return None
    width = max(len(p) + len(c) for p, c in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    completion = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, (p, c) in enumerate(seqs):
        input_ids[b, : len(p) + len(c)] = torch.tensor(p + c)
        attention[b, : len(p) + len(c)] = 1
        completion[b, len(p): len(p) + len(c)] = 1
    return Packed(input_ids, attention, completion, slices, index)
