"""Sampling from a model for evaluation: pure ancestral sampling (``SamplingSpec``) from a seeded stream.

Every setting that shapes the samples is explicit (a hub model's own generation_config is ignored), and each
model draws from its own stream (``stream_seed``), so the policy's and the anchor's samples share no random
numbers while every method of one seed shares the policy stream (common random numbers).
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch
from transformers import GenerationConfig

from prefbench.eval.spec import SamplingSpec
from prefbench.io.bars import bar


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one model's sampling stream: the policy's and the anchor's samples share no random
    numbers, and every method of one seed draws from the same policy stream (common random numbers)."""
    return int.from_bytes(hashlib.sha256(f"prefbench-eval/{seed}/{stream}".encode()).digest()[:8], "big") >> 1


def sampling_config(sampling: SamplingSpec, eos: int, pad: int, k: int | None = None) -> GenerationConfig:
    """Every setting that shapes the samples, set explicitly: pure ancestral sampling at
    ``sampling.temperature`` (``top_p`` is 1, prefbench.job.config), nothing else reweighting the logits."""
    return GenerationConfig(
        do_sample=True, num_beams=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
        typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, min_new_tokens=0,
        max_new_tokens=sampling.max_new_tokens, num_return_sequences=k or sampling.samples_per_prompt,
        renormalize_logits=False,
        remove_invalid_values=False, use_cache=True, return_dict_in_generate=False, output_scores=False,
        pad_token_id=pad, eos_token_id=eos)


@contextmanager
def _no_model_defaults(model):
    """``model.generate`` fills every setting left unset (None) in the config it is given from the
    model's own generation_config (a hub model's generation_config.json: min_p, suppress_tokens, ...).
    Here that is a blank one, so only the given config and the library's neutral defaults apply."""
    saved, model.generation_config = model.generation_config, GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], sampling: SamplingSpec, seed: int,
             stream: str = "policy", k: int | None = None) -> list[list[list[int]]]:
    """``k`` (default ``sampling.samples_per_prompt``) sampled completions (token ids, through the first eos) for
    each prompt, drawn from the sampling stream ``stream`` of ``seed`` (stream_seed); the caller's random state
    is left as it was. A generate call holds ``batch_size`` x ``samples_per_prompt`` sequences, so a larger k
    takes fewer prompts per call (a wide KV cache costs more per sequence on a CPU)."""
    model.eval()
    device = next(model.parameters()).device
    k, eos, pad = k or sampling.samples_per_prompt, tokenizer.eos_token_id, tokenizer.pad_token_id
    config, out = sampling_config(sampling, eos, pad, k), []
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _no_model_defaults(model):
        torch.manual_seed(stream_seed(seed, stream))
        per_call = max(1, sampling.batch_size * sampling.samples_per_prompt // k)
        starts = range(0, len(prompt_ids), per_call)
        for start in bar(starts, f"sampling ({stream})", unit="call"):
            chunk = prompt_ids[start: start + per_call]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)  # left padding
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist()
            for i in range(len(chunk)):
                out.append([_through_eos(g, eos) for g in gen[i * k: (i + 1) * k]])
    return out


def _through_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids
