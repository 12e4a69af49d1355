"""Views of a tokenized split (the roles a method's batches hold, declared in ``prefbench.methods.views``), and
batching of their sequences into right-padded forward passes."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from datasets import Dataset

from prefbench.io.errors import UserError
from prefbench.methods import ViewSpec, view_spec
from prefbench.methods.views import Seq


@dataclass
class View:
    """The examples of a view (role -> (prompt_ids, completion_ids)); ``scores``: judge scores by role and
    example, for views of fresh samples (online methods)."""

    name: str
    examples: list[dict[str, Seq]]
    scores: dict[str, list[float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def spec(self) -> ViewSpec:
        return view_spec(self.name)

    @property
    def roles(self) -> list[str]:
        return sorted({r for ex in self.examples for r in ex})

    def n_tokens(self, indices, roles=None) -> int:
        """Tokens of the sequences trained on: the view's trained roles (no-grad roles such as KTO's
        mismatched excluded) unless ``roles`` says otherwise."""
        roles = self.spec.roles if roles is None else roles
        return sum(len(p) + len(c) for i in indices for r, (p, c) in self.examples[i].items() if r in roles)


def build_view(name: str, kind: str, ds: Dataset, seed: int) -> View:
    """The ``name`` view of a tokenized split of ``kind`` ('paired' or 'unpaired') data."""
    try:
        spec = view_spec(name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if kind not in spec.kinds:
        need = " or ".join(spec.kinds)
        raise UserError(f"the {name!r} view needs {need} data"
                        + (" (prompt/chosen/rejected)" if spec.kinds == ("paired",) else "")
                        + f"; this dataset is {kind}")
    return View(name, spec.build(kind, {c: list(ds[c]) for c in ds.column_names}, seed))


@dataclass
class PaddedBatch:
    """Sequences of several roles right-padded into one forward batch.

    ``completion_mask[b, t]`` is 1 where token t of row b is a completion token (scored).
    ``slices[role]`` selects that role's rows; ``index[role]`` their example indices in the view.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    slices: dict[str, slice]
    index: dict[str, torch.Tensor]

    def to(self, device) -> "PaddedBatch":
        return PaddedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device),
                      self.slices, {k: v.to(device) for k, v in self.index.items()})

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def pad_batch(view: View, indices: list[int], roles, pad_id: int) -> PaddedBatch | None:
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
    return PaddedBatch(input_ids, attention, completion, slices, index)
