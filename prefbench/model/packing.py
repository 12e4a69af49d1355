"""Padding-free forwards: a micro-batch's sequences run as one row with no padding.

The sequences are concatenated into a single row of T tokens, with position ids restarting at 0
for each. Every position-wise layer (embeddings, norms, projections, MLP) then computes exactly the
real tokens, in one large matrix product; attention runs causally within each sequence, one
scaled-dot-product call per sequence, so no sequence sees another and no T x T mask is built.

The per-sequence attention is a transformers attention backend ("prefbench_packed", registered
here). ``packed_attention(model)`` switches a model to it for a block of code and back; a block that
trains must contain the backward too, because gradient checkpointing re-runs the layers there.
Models it cannot serve exactly keep their own attention and the padded layout: attention
implementations other than sdpa (flash, flex, eager), sliding-window attention, logit soft-capping,
and architectures without transformers' attention backends.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "prefbench_packed"


def _packed_sdpa(module, query, key, value, attention_mask, segments=None, **kwargs):
    """sdpa, run causally on each sequence of the packed row (``segments``: their lengths) separately."""
    if segments is None:  # no mask is built under this backend, so a padded forward would be wrong
        raise RuntimeError("a forward without packed inputs ran inside packed_attention(); "
                           "run it outside the block (prefbench.model.logprobs packs its own forwards)")
    kwargs.pop("is_causal", None)
    # split, not slicing: its backward is one concatenation instead of a zero-filled tensor per piece
    outs = [sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]
            for q, k, v in zip(*(x.split(segments, dim=2) for x in (query, key, value)))]
    return torch.cat(outs, dim=1), None


AttentionInterface.register(NAME, _packed_sdpa)


def unwrap(model):
    """The transformers model inside distributed (DDP/FSDP) and peft wrappers."""
    inner = extract_model_from_parallel(model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def _config(model):
    inner = unwrap(model)
    return inner, getattr(inner, "config", None)


def can_pack(model) -> bool:
    """Whether ``model``'s forward is exact in the packed layout with per-sequence sdpa."""
    inner, config = _config(model)
    if config is None or not getattr(type(inner), "_supports_attention_backend", False):
        return False
    if config.is_encoder_decoder or config._attn_implementation not in ("sdpa", NAME):
        return False
    if getattr(config, "sliding_window", None) is not None or getattr(config, "attn_logit_softcapping", None):
        return False
    return all(t == "full_attention" for t in (getattr(config, "layer_types", None) or []))


def is_packed(model) -> bool:
    return getattr(_config(model)[1], "_attn_implementation", None) == NAME


@contextmanager
def packed_attention(model, enabled: bool = True):
    """Run ``model`` with per-sequence attention inside the block (a no-op where it cannot pack)."""
    _, config = _config(model)
    if not enabled or not can_pack(model) or is_packed(model):
        yield
        return
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def packed_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The right-padded (B, W) batch as one row: ``ids`` and ``position_ids`` (1, T), the batch row of
    each token (T,), and the length of each sequence in the row."""
    keep = attention_mask.bool()
    lengths = keep.sum(dim=1)
    row = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(len(row), device=row.device) - starts[row]
    segments = [n for n in lengths.tolist() if n > 0]
    return input_ids[keep][None], positions[None], row, segments


@contextmanager
def unpacked(model):
    """Padded forwards (generation with the KV cache) inside a packed_attention block: evaluation during training.
    Only sdpa models are ever packed (can_pack), so sdpa is what the block restores."""
    _, config = _config(model)
    if not is_packed(model):
        yield
        return
    config._attn_implementation = "sdpa"
    try:
        yield
    finally:
        config._attn_implementation = NAME
