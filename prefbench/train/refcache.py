"""Reference log-probs: one no-grad pass per (reference checkpoint, view data), cached on disk.

The reference model is loaded only for this pass, so training never holds it in memory.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from prefbench.data.views import View
from prefbench.model.logprobs import CACHEABLE, score_view
from prefbench.methods import BatchLogps, SeqLogps


def view_fingerprint(view: View) -> str:
    h = hashlib.sha256(view.name.encode())
    for ex in view.examples:
        h.update(json.dumps(ex, sort_keys=True).encode())
    return h.hexdigest()[:16]


class ReferenceLogps:
    """S_ref and n (and the other statistics cached with them) for each (role, example) of a view; NaN
    where an example lacks the role. ``scored``: which examples were scored (all when None);
    ``rows_scored``: how many of them the call that returned it computed."""

    def __init__(self, tensors: dict[str, torch.Tensor], scored: torch.Tensor | None = None, rows_scored: int = 0):
        self.tensors, self.scored, self.rows_scored = tensors, scored, rows_scored

    def lookup(self, index: dict[str, torch.Tensor], device) -> BatchLogps:
        """Reference statistics for the examples ``index[role]`` of each role the batch has."""
        def role(name):
            idx = index[name].cpu()
            if self.scored is not None and not bool(self.scored[idx].all()):
                missing = idx[~self.scored[idx]].tolist()
                raise ValueError(f"reference log-probs: examples {missing[:5]} were not scored by the reference "
                                 f"pass (it scores the rows the run trains on: prefbench.train.batches.trained_rows)")
            n = self.tensors[f"{name}.n"][idx]
            fields = {}
            for key, values in self.tensors.items():
                role_name, _, field = key.partition(".")
                if role_name != name or field in ("sum", "n"):
                    continue
                values = values[idx] if values.dim() == 1 else values[idx, :int(n.max()) if len(n) else 0]
                fields[field] = torch.nan_to_num(values, nan=0.0).to(device)
            return SeqLogps(self.tensors[f"{name}.sum"][idx].to(device), n.to(device), **fields)

        return BatchLogps(**{name: role(name) for name in index})


def cached(cache_dir: Path, ref_key: str, view: View, load_model, pad_id: int, batch_size: int,
           device, context=contextlib.nullcontext, statistics: frozenset[str] = frozenset(),
           rows: list[int] | None = None) -> tuple[ReferenceLogps, bool]:
    """Reference log-probs of the examples ``rows`` of ``view`` (all when None) under the checkpoint ``ref_key``;
    returns (logps, cache_hit). One file per (checkpoint, view, statistics) holds every example scored so far:
    a call scores only the rows it lacks and adds them, so a longer run reuses what a shorter one computed.

    ``load_model`` is called only when rows are missing, and the pass runs inside ``context()`` (for LoRA:
    the policy with its adapters disabled). ``statistics``: also those of ``CACHEABLE`` (per-token log-probs,
    prompt log-probs, ...), cached in a file of their own so methods that don't ask never pay for them."""
    kept = sorted(set(statistics) & set(CACHEABLE))
    suffix = "".join(f"-{k}" for k in kept)
    path = Path(cache_dir) / "reflogps" / f"{ref_key}-{view_fingerprint(view)}{suffix}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    wanted = torch.zeros(len(view), dtype=torch.bool)
    wanted[list(range(len(view))) if rows is None else list(rows)] = True
    with FileLock(str(path) + ".lock"):
        tensors = load_file(path) if path.exists() else {}
        scored = tensors.pop("scored", torch.zeros(len(view), dtype=torch.uint8)).bool()
        missing = (wanted & ~scored).nonzero()[:, 0].tolist()
        if not missing:
            return ReferenceLogps(tensors, scored), True
        model = load_model().to(device)
        with context():
            new = score_view(model, view, pad_id, batch_size, device, statistics=frozenset(kept), rows=missing,
                             desc="reference pass")
        del model
        for key, values in new.items():  # same shapes: per-token widths are the view's longest completion
            if key in tensors:
                values[scored] = tensors[key][scored]
            tensors[key] = values
        scored |= wanted
        tmp = path.with_suffix(".tmp")
        save_file(tensors | {"scored": scored.to(torch.uint8)}, tmp)
        tmp.replace(path)
    return ReferenceLogps(tensors, scored, len(missing)), False
