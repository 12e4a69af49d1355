"""Evaluation of a trained policy with definitions shared by every method.

On the held-out prompts: K samples per prompt (ancestral sampling at eval.temperature, batched with the
KV cache; the policy and the anchor draw from independent seeded streams), judged; win rates against
the group's SFT policy and against the dataset's chosen responses; implicit-reward margins and
accuracy on held-out pairs and KL(pi_T || pi_anchor,T) with a bootstrap CI over prompts, both against
the group's anchor (its SFT policy), so reference-free methods are measured on the same scale (the KL
under the temperature-T distributions the samples were drawn from); lexical diversity; the length-controlled
win rate; compute cost. The points sampled along training become curve.jsonl, and the group's best-of-n
baseline best_of_n.jsonl (prefbench.eval.curve). Writes samples.jsonl and prompts.jsonl; returns flat summary keys
(documented in the README).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from prefbench.data.views import View, build_view
from prefbench.eval import metrics as em
from prefbench.eval.curve import best_of_n_rows, curve_rows, curve_seconds, point
from prefbench.eval.embedder import embed
from prefbench.eval.frontier import lc_win_rate
from prefbench.eval.judges import Judging
from prefbench.eval.sampling import generate
from prefbench.eval.spec import EvalSpec
from prefbench.io.faults import kill_point
from prefbench.io.results import write_jsonl
from prefbench.io.stages import cached_json
from prefbench.model.logprobs import score_view
from prefbench.model.models import load_model
from prefbench.model.models import n_params as count_params


def _anchor_samples(spec: EvalSpec, group, anchor, prompt_ids) -> list[list[list[int]]]:
    """The anchor's samples for the eval prompts, generated once per group and cached."""
    return cached_json(spec.cache_dir, "anchor_samples", Path(group.sft_stage()).name,
                       [prompt_ids, spec.sampling.key(), spec.seed, "anchor"],
                       lambda: generate(anchor, group.tokenizer, prompt_ids, spec.sampling, spec.seed, "anchor"))


def _anchor_pair_logps(spec: EvalSpec, group, anchor, pairs: View) -> dict[str, torch.Tensor]:
    """The anchor's ``score_view`` of the held-out pairs: the same for every run of a group, computed once and
    cached (float32 values round-trip JSON exactly)."""
    device = next(anchor.parameters()).device

    def build() -> dict:
        return {key: value.tolist() for key, value in score_view(anchor, pairs, group.pad_id, 64, device).items()}

    found = cached_json(spec.cache_dir, "anchor_pair_logps", Path(group.sft_stage()).name,
                        [pairs.examples, "anchor_pair_logps"], build)
    return {key: torch.tensor([float("nan") if v is None else v for v in values], dtype=torch.float32)
            for key, values in found.items()}


def _anchor_judged(spec: EvalSpec, group, judging: Judging, prompts: list, anchor_texts: list[str], k: int,
                   chosen_texts: list[str] | None) -> tuple[list, list | None]:
    """The judge's scores of the anchor's samples and of the dataset's chosen replies. Every run of a group
    asks for the same ones, so a judge that scores a text the same way each time (``cacheable``: the gold
    reward, a reward model) computes them once, cached; an LLM judge is asked again."""
    judge = judging.judge

    def build() -> dict:
        return {"anchor": judge.score([p for p in prompts for _ in range(k)], anchor_texts),
                "chosen": judge.score(prompts, chosen_texts) if chosen_texts is not None else None}

    if not getattr(judge, "cacheable", False):
        found = build()
    else:
        found = cached_json(spec.cache_dir, "anchor_scores", Path(group.sft_stage()).name,
                            [prompts, anchor_texts, chosen_texts, judging.config, "anchor_scores"], build)
    return found["anchor"], found["chosen"]


def _by_prompt(flat: list, k: int) -> list[list]:
    return [flat[i: i + k] for i in range(0, len(flat), k)]


def evaluate(spec: EvalSpec, group, model, run_dir: Path, judging: Judging, step: int | None = None) -> dict:
    """The run's full evaluation (``step``: the training step the model is at, the last point of its curve)."""
    t0 = time.perf_counter()
    ev, k, seed = getattr(group.data, spec.split), spec.sampling.samples_per_prompt, spec.seed
    if len(ev) == 0:
        return {"eval_status": "done", "eval/n_prompts": 0}
    device = next(model.parameters()).device
    tok, temperature = group.tokenizer, spec.sampling.temperature
    prompts, prompt_ids = list(ev["prompt"]), list(ev["prompt_ids"])
    t_gen = time.perf_counter()
    samples = generate(model, tok, prompt_ids, spec.sampling, seed)
    gen_seconds, gen_tokens = time.perf_counter() - t_gen, sum(len(c) for s in samples for c in s)
    flat = [(i, c) for i, s in enumerate(samples) for c in s]
    sample_view = View("sft", [{"chosen": (prompt_ids[i], c)} for i, c in flat])
    # both scored under the distribution the samples were drawn from
    logp_pi = score_view(model, sample_view, group.pad_id, 64, device, temperature)["chosen.sum"]

    anchor = load_model(group.sft_stage()).to(device)
    logp_ref = score_view(anchor, sample_view, group.pad_id, 64, device, temperature)["chosen.sum"]
    kl_low, kl_high = em.bootstrap_ci(em.prompt_means(logp_pi - logp_ref, k), spec.bootstrap, seed)
    out: dict = {}
    if group.data.kind == "paired":
        pairs = build_view("paired", "paired", ev, seed)
        pol, anc = score_view(model, pairs, group.pad_id, 64, device), _anchor_pair_logps(spec, group, anchor, pairs)
        margin = spec.beta * ((pol["chosen.sum"] - anc["chosen.sum"]) - (pol["rejected.sum"] - anc["rejected.sum"]))
        out |= {"eval/reward_margin": float(margin.mean()), "eval/reward_accuracy": float((margin > 0).float().mean()),
                "eval/logps_chosen": float(pol["chosen.sum"].mean()),
                "eval/logps_rejected": float(pol["rejected.sum"].mean())}
    anchor_ids = _anchor_samples(spec, group, anchor, prompt_ids)
    kill_point("evaluate")

    texts = [tok.decode(c, skip_special_tokens=True) for _, c in flat]
    anchor_texts = [tok.decode(c, skip_special_tokens=True) for s in anchor_ids for c in s]
    judge, gold = judging.judge, judging.gold
    t_judge = time.perf_counter()
    scores = judge.score([prompts[i] for i, _ in flat], texts)
    gold_scores = gold.score([prompts[i] for i, _ in flat], texts) if gold else None
    anchor_scores, chosen_scores = _anchor_judged(spec, group, judging, prompts, anchor_texts, k,
                                                  list(ev["chosen_text"]) if "chosen_text" in ev.column_names else None)
    pairwise = _pairwise_vs_anchor(judge, prompts, texts, anchor_texts, k, spec.bootstrap, seed) \
        if judging.config.get("mode") == "pairwise" else {}
    judge_seconds = time.perf_counter() - t_judge
    unjudged = sum(s is None for s in scores + anchor_scores + (chosen_scores or [])) \
        + pairwise.get("eval/pairwise_unjudged", 0)

    write_jsonl(run_dir / "samples.jsonl", [
        {"prompt_index": i, "prompt": prompts[i], "response": t, "response_tokens": len(c), "score": s,
         **({"gold_score": gold_scores[j]} if gold_scores else {}), "logp": float(lp), "logp_ref": float(lr)}
        for j, ((i, c), t, s, lp, lr) in enumerate(zip(flat, texts, scores, logp_pi.tolist(), logp_ref.tolist()))])

    valid = [s for s in scores if s is not None]
    out |= pairwise
    out |= {"eval/judge": judging.name, "eval/n_prompts": len(prompts), "eval/samples_per_prompt": k, "eval/unjudged": unjudged,
            "eval/score_mean": float(np.mean(valid)) if valid else None,
            "eval/score_std": float(np.std(valid)) if valid else None,
            "eval/anchor_score_mean": em.judged_mean(anchor_scores),
            "eval/chosen_score_mean": em.judged_mean(chosen_scores or []),
            "eval/kl": em.kl_estimate(logp_pi, logp_ref), "eval/kl_ci_low": kl_low, "eval/kl_ci_high": kl_high,
            "eval/response_tokens_mean": gen_tokens / max(len(flat), 1),
            "eval/distinct_1": em.distinct_n(texts, 1), "eval/distinct_2": em.distinct_n(texts, 2)}
    mine = _by_prompt(scores, k)
    for name, other in (("sft", _by_prompt(anchor_scores, k)),
                        ("chosen", [[s] for s in chosen_scores] if chosen_scores else None)):
        if other is not None:
            wr = em.win_rate(*em.judged(mine, other), n_boot=spec.bootstrap, seed=seed)
            out |= {f"eval/win_rate_vs_{name}": wr["mean"], f"eval/win_rate_vs_{name}_ci_low": wr["ci_low"],
                    f"eval/win_rate_vs_{name}_ci_high": wr["ci_high"]}
    anchor_by_prompt = _by_prompt(anchor_scores, k)
    out |= _length_controlled(mine, anchor_by_prompt, samples, anchor_ids)
    final = {"step": step, **point(spec, samples, logp_pi.tolist(), logp_ref.tolist(), scores, anchor_by_prompt,
                                   gold_scores)}
    curve = curve_rows(spec, group, anchor, judging, run_dir, prompts, anchor_by_prompt, final)
    bon = best_of_n_rows(spec, group, anchor, judging, prompts, prompt_ids, anchor_by_prompt)
    write_jsonl(run_dir / "best_of_n.jsonl", bon)
    del anchor
    out |= {"eval/curve_points": len(curve), "eval/best_of_n_max": bon[-1]["n"] if bon else 0,
            "cost/curve_sample_seconds": curve_seconds(run_dir)}
    if gold_scores is not None:
        out["eval/gold_score_mean"] = em.judged_mean(gold_scores)
    task = getattr(judging.gold or judging.judge, "task", None)
    if task is not None and task.binary_reward:  # scored by the gold reward, here or beside a proxy judge
        truth = _by_prompt(gold_scores if gold_scores is not None else scores, k)
        out |= {"eval/pass_at_1": em.pass_at(truth, 1), "eval/pass_at_k": em.pass_at(truth, k)}
    if spec.diversity:
        out["eval/pid"], out["eval/aid"] = em.pid_aid(_by_prompt(list(embed(texts)), k))
    n_params = count_params(model)
    scored_tokens = sum(len(p) + len(c) for p, c in (e["chosen"] for e in sample_view.examples))
    out |= {"cost/eval_seconds": time.perf_counter() - t0, "cost/generate_seconds": gen_seconds,
            "cost/generate_tokens_per_s": gen_tokens / max(gen_seconds, 1e-9), "cost/judge_seconds": judge_seconds,
            "cost/eval_flops": 2 * n_params * (gen_tokens + 2 * scored_tokens),
            "eval_status": "partial" if unjudged else "done",
            "eval/anchor_response_tokens_mean": float(np.mean([len(c) for s in anchor_ids for c in s]))}
    write_jsonl(run_dir / "prompts.jsonl", _prompt_rows(mine, _by_prompt(anchor_scores, k), chosen_scores,
                                                        _by_prompt((logp_pi - logp_ref).tolist(), k), samples))
    return out


def _pairwise_vs_anchor(judge, prompts, texts, anchor_texts, k: int, n_boot: int, seed: int) -> dict:
    """A pairwise judge's win rate of the policy over the anchor: sample j of each prompt against the anchor's
    sample j of it, each pair shown in both orders (prefbench.eval.llm_judge); per prompt the mean over its judged
    pairs, with a bootstrap CI over prompts; and how often the two orders agreed (1: no position bias seen)."""
    shares, agreed = judge.compare([p for p in prompts for _ in range(k)], texts, anchor_texts)
    per_prompt = np.array([np.mean(v) for v in ([x for x in s if x is not None] for s in _by_prompt(shares, k)) if v])
    low, high = em.bootstrap_ci(per_prompt, n_boot, seed) if len(per_prompt) else (None, None)
    both = [a for a in agreed if a is not None]
    return {"eval/pairwise_win_rate_vs_sft": float(per_prompt.mean()) if len(per_prompt) else None,
            "eval/pairwise_win_rate_vs_sft_ci_low": low, "eval/pairwise_win_rate_vs_sft_ci_high": high,
            "eval/pairwise_consistency": float(np.mean(both)) if both else None,
            "eval/pairwise_unjudged": sum(s is None for s in shares)}


def _length_controlled(mine, anchor, samples, anchor_ids) -> dict:
    """The length-controlled win rate vs the anchor (prefbench.eval.frontier.lc_win_rate) over every judged
    (policy sample, anchor sample) pair of a prompt, with the length difference in tokens. Per prompt:
    ``mine``/``anchor`` the judge scores, ``samples``/``anchor_ids`` the token ids of the same samples."""
    verdicts, diffs = [], []
    for ms, anc, ps, ac in zip(mine, anchor, samples, anchor_ids):
        for x, px in zip(ms, ps):
            for y, py in zip(anc, ac):
                if x is not None and y is not None:
                    verdicts.append(1.0 if x > y else 0.5 if x == y else 0.0)
                    diffs.append(len(px) - len(py))
    lc = lc_win_rate(verdicts, diffs)
    return {"eval/lc_win_rate_vs_sft": lc["lc_win_rate"], "eval/length_coef": lc["length_coef"], "eval/lc_pairs": lc["n"]}


def _prompt_rows(mine, anchor, chosen, kl_by_prompt, samples) -> list[dict]:
    """prompts.jsonl: per eval prompt, the win fraction over its judged K x K (policy, anchor) sample pairs
    and over (policy sample, chosen) pairs (ties 1/2; None when a side has no judged sample), the mean
    log pi - log pi_anchor of its samples and their mean length: the units prefbench.report.stats resamples."""
    def win(a, b):
        a, b = [x for x in a if x is not None], [y for y in b if y is not None]
        return float(em.prompt_win_rates([a], [b])[0]) if a and b else None

    return [{"prompt_index": i, "win_vs_sft": win(mine[i], anchor[i]),
             **({"win_vs_chosen": win(mine[i], [chosen[i]])} if chosen else {}),
             "kl": float(np.mean(kl_by_prompt[i])), "response_tokens": float(np.mean([len(c) for c in samples[i]]))}
            for i in range(len(mine))]
