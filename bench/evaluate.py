"""Evaluation of a trained policy with definitions shared by every method.

On the held-out prompts: K samples per prompt (ancestral sampling at eval.temperature, batched with the
KV cache; the policy and the anchor draw from independent seeded streams), judged; win rates against
the group's SFT policy and against the dataset's chosen responses; implicit-reward margins and
accuracy on held-out pairs and KL(pi_T || pi_anchor,T) with a bootstrap CI over prompts, both against
the group's anchor (its SFT policy), so reference-free methods are measured on the same scale (the KL
under the temperature-T distributions the samples were drawn from); lexical diversity; compute cost.
Writes samples.jsonl; returns flat summary keys (documented in the README).
"""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from transformers import GenerationConfig

from bench import eval_metrics as em
from bench.embedder import embed
from bench.faults import kill_point
from bench.judges import make_judge
from bench.logprobs import score_view
from bench.pipeline import load_model
from bench.results import read_json, write_json, write_jsonl
from bench.views import View, build_view


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one model's sampling stream: the policy's and the anchor's samples share no random
    numbers, and every method of one seed draws from the same policy stream (common random numbers)."""
    return int.from_bytes(hashlib.sha256(f"prefbench-eval/{seed}/{stream}".encode()).digest()[:8], "big") >> 1


def sampling_config(cfg, max_new_tokens: int, eos: int, pad: int) -> GenerationConfig:
    """Every setting that shapes the samples, set explicitly: pure ancestral sampling at
    ``eval.temperature`` (``eval.top_p`` is 1, bench.config), nothing else reweighting the logits."""
    return GenerationConfig(
        do_sample=True, num_beams=1, temperature=float(cfg.eval.temperature), top_p=float(cfg.eval.top_p), top_k=0,
        typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, min_new_tokens=0,
        max_new_tokens=max_new_tokens, num_return_sequences=int(cfg.eval.samples_per_prompt), renormalize_logits=False,
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
def generate(model, tokenizer, prompt_ids: list[list[int]], cfg, max_new_tokens: int, seed: int,
             stream: str = "policy") -> list[list[list[int]]]:
    """K sampled completions (token ids, through the first eos) for each prompt, drawn from the
    sampling stream ``stream`` of ``seed`` (stream_seed); the caller's random state is left as it was."""
    model.eval()
    device = next(model.parameters()).device
    k, eos, pad = int(cfg.eval.samples_per_prompt), tokenizer.eos_token_id, tokenizer.pad_token_id
    config, out = sampling_config(cfg, max_new_tokens, eos, pad), []
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _no_model_defaults(model):
        torch.manual_seed(stream_seed(seed, stream))
        for start in range(0, len(prompt_ids), int(cfg.eval.batch_size)):
            chunk = prompt_ids[start: start + int(cfg.eval.batch_size)]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)  # left padding
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist()
            for i in range(len(chunk)):
                out.append([_through_eos(g, eos) for g in gen[i * k: (i + 1) * k]])
    return out


def _through_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def _anchor_samples(cfg, group, anchor, prompt_ids, max_new_tokens) -> list[list[list[int]]]:
    """The anchor's samples for the eval prompts, generated once per group and cached."""
    key = hashlib.sha256(json.dumps([prompt_ids, dict(cfg.eval), max_new_tokens, int(cfg.seed), "anchor"],
                                    default=str).encode()).hexdigest()[:12]
    path = Path(cfg.cache_dir) / "anchor_samples" / f"{Path(group.sft).name}-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        cached = read_json(path)
        if cached is None:
            cached = generate(anchor, group.tokenizer, prompt_ids, cfg, max_new_tokens, int(cfg.seed), "anchor")
            write_json(path, cached)
    return cached


def _by_prompt(flat: list, k: int) -> list[list]:
    return [flat[i: i + k] for i in range(0, len(flat), k)]


def evaluate(cfg, group, model, run_dir: Path) -> dict:
    t0 = time.perf_counter()
    ev, k, seed = getattr(group.data, cfg.eval.get("split", "eval")), int(cfg.eval.samples_per_prompt), int(cfg.seed)
    if len(ev) == 0:
        return {"eval_status": "done", "eval/n_prompts": 0}
    device = next(model.parameters()).device
    tok, max_new = group.tokenizer, int(cfg.task.max_new_tokens)
    prompts, prompt_ids = list(ev["prompt"]), list(ev["prompt_ids"])
    t_gen = time.perf_counter()
    samples = generate(model, tok, prompt_ids, cfg, max_new, seed)
    gen_seconds, gen_tokens = time.perf_counter() - t_gen, sum(len(c) for s in samples for c in s)
    flat = [(i, c) for i, s in enumerate(samples) for c in s]
    sample_view = View("sft", [{"chosen": (prompt_ids[i], c)} for i, c in flat])
    temperature = float(cfg.eval.temperature)  # both scored under the distribution the samples were drawn from
    logp_pi = score_view(model, sample_view, group.pad_id, 64, device, temperature)["chosen.sum"]

    anchor = load_model(group.sft).to(device)
    logp_ref = score_view(anchor, sample_view, group.pad_id, 64, device, temperature)["chosen.sum"]
    kl_low, kl_high = em.bootstrap_ci(em.prompt_means(logp_pi - logp_ref, k), int(cfg.eval.bootstrap), seed)
    out: dict = {}
    if group.data.kind == "paired":
        pairs = build_view("paired", "paired", ev, seed)
        pol, anc = (score_view(m, pairs, group.pad_id, 64, device) for m in (model, anchor))
        beta = float(cfg.eval.beta)
        margin = beta * ((pol["chosen.sum"] - anc["chosen.sum"]) - (pol["rejected.sum"] - anc["rejected.sum"]))
        out |= {"eval/reward_margin": float(margin.mean()), "eval/reward_accuracy": float((margin > 0).float().mean()),
                "eval/logps_chosen": float(pol["chosen.sum"].mean()),
                "eval/logps_rejected": float(pol["rejected.sum"].mean())}
    anchor_ids = _anchor_samples(cfg, group, anchor, prompt_ids, max_new)
    del anchor
    kill_point("evaluate")

    texts = [tok.decode(c, skip_special_tokens=True) for _, c in flat]
    anchor_texts = [tok.decode(c, skip_special_tokens=True) for s in anchor_ids for c in s]
    judge = make_judge(cfg, group)
    t_judge = time.perf_counter()
    scores = judge.score([prompts[i] for i, _ in flat], texts)
    anchor_scores = judge.score([p for p in prompts for _ in range(k)], anchor_texts)
    chosen_scores = judge.score(prompts, list(ev["chosen_text"])) if "chosen_text" in ev.column_names else None
    judge_seconds = time.perf_counter() - t_judge
    unjudged = sum(s is None for s in scores + anchor_scores + (chosen_scores or []))

    write_jsonl(run_dir / "samples.jsonl", [
        {"prompt_index": i, "prompt": prompts[i], "response": t, "score": s, "logp": float(lp), "logp_ref": float(lr)}
        for (i, _), t, s, lp, lr in zip(flat, texts, scores, logp_pi.tolist(), logp_ref.tolist())])

    valid = [s for s in scores if s is not None]
    out |= {"eval/judge": cfg.judge.name, "eval/n_prompts": len(prompts), "eval/samples_per_prompt": k, "eval/unjudged": unjudged,
            "eval/score_mean": float(np.mean(valid)) if valid else None,
            "eval/score_std": float(np.std(valid)) if valid else None,
            "eval/anchor_score_mean": _mean(anchor_scores),
            "eval/chosen_score_mean": _mean(chosen_scores or []),
            "eval/kl": em.kl_estimate(logp_pi, logp_ref), "eval/kl_ci_low": kl_low, "eval/kl_ci_high": kl_high,
            "eval/response_tokens_mean": gen_tokens / max(len(flat), 1),
            "eval/distinct_1": em.distinct_n(texts, 1), "eval/distinct_2": em.distinct_n(texts, 2)}
    mine = _by_prompt(scores, k)
    for name, other in (("sft", _by_prompt(anchor_scores, k)),
                        ("chosen", [[s] for s in chosen_scores] if chosen_scores else None)):
        if other is not None:
            wr = em.win_rate(*_judged(mine, other), n_boot=int(cfg.eval.bootstrap), seed=seed)
            out |= {f"eval/win_rate_vs_{name}": wr["mean"], f"eval/win_rate_vs_{name}_ci_low": wr["ci_low"],
                    f"eval/win_rate_vs_{name}_ci_high": wr["ci_high"]}
    if cfg.eval.diversity:
        out["eval/pid"], out["eval/aid"] = em.pid_aid(_by_prompt(list(embed(texts)), k))
    n_params = sum(p.numel() for p in model.parameters())
    scored_tokens = sum(len(p) + len(c) for p, c in (e["chosen"] for e in sample_view.examples))
    out |= {"cost/eval_seconds": time.perf_counter() - t0, "cost/generate_seconds": gen_seconds,
            "cost/generate_tokens_per_s": gen_tokens / max(gen_seconds, 1e-9), "cost/judge_seconds": judge_seconds,
            "cost/eval_flops": 2 * n_params * (gen_tokens + 2 * scored_tokens),
            "eval_status": "partial" if unjudged else "done",
            "eval/anchor_response_tokens_mean": float(np.mean([len(c) for s in anchor_ids for c in s]))}
    write_jsonl(run_dir / "prompts.jsonl", _prompt_rows(mine, _by_prompt(anchor_scores, k), chosen_scores,
                                                        _by_prompt((logp_pi - logp_ref).tolist(), k), samples))
    return out


def _mean(values) -> float | None:
    valid = [v for v in values if v is not None]
    return float(np.mean(valid)) if valid else None


def _judged(a: list[list], b: list[list]) -> tuple[list[list], list[list]]:
    """Drop unjudged samples, and prompts left with none on either side."""
    pairs = [([x for x in sa if x is not None], [y for y in sb if y is not None]) for sa, sb in zip(a, b)]
    pairs = [(sa, sb) for sa, sb in pairs if sa and sb]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _prompt_rows(mine, anchor, chosen, kl_by_prompt, samples) -> list[dict]:
    """prompts.jsonl: per eval prompt, the win fraction over its judged K x K (policy, anchor) sample pairs
    and over (policy sample, chosen) pairs (ties 1/2; None when a side has no judged sample), the mean
    log pi - log pi_anchor of its samples and their mean length: the units bench.stats resamples."""
    def win(a, b):
        a, b = [x for x in a if x is not None], [y for y in b if y is not None]
        return float(em.prompt_win_rates([a], [b])[0]) if a and b else None

    return [{"prompt_index": i, "win_vs_sft": win(mine[i], anchor[i]),
             **({"win_vs_chosen": win(mine[i], [chosen[i]])} if chosen else {}),
             "kl": float(np.mean(kl_by_prompt[i])), "response_tokens": float(np.mean([len(c) for c in samples[i]]))}
            for i in range(len(mine))]
