"""Evaluation along training and the best-of-n baseline: the points of the reward-KL frontier.

Each run becomes a curve of (KL to the anchor, judge score, win rate vs SFT, response length), as the
frontier plots of Rafailov et al. 2023 (Fig. 2) and Gao et al. 2022 compare methods along whole curves:

1. During training, ``CurveSampler`` (prefbench.train.trainer's ``curve`` callback) samples the evaluation prompts
   from the policy at ``curve_steps`` (fractions of the run, ``eval.curve.fractions``; step 0 is the init
   model) and writes the samples with their policy log-probs to ``curve/step-NNNNNN.json``. Training is
   exact on resume, so a resumed run finds the same samples it would have written.
2. After training, ``curve_rows`` scores them under the anchor and judges them; ``curve.jsonl`` holds one
   row per point, its last row the run's full evaluation.

``best_of_n_rows``: n = 1, 2, 4, ... samples of the anchor, the best by the judge. Its KL is the analytic
log n - (n-1)/n and its expected score and win rate come from order statistics (prefbench.eval.frontier), from
``eval.best_of_n`` anchor samples per prompt drawn once per group and cached.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from prefbench.data.views import View
from prefbench.eval import frontier
from prefbench.eval import metrics as em
from prefbench.eval.judges import Judging
from prefbench.eval.sampling import generate
from prefbench.eval.spec import EvalSpec
from prefbench.io.results import read_json, write_json, write_jsonl
from prefbench.io.stages import cached_json
from prefbench.model.logprobs import score_view

CURVE_DIR = "curve"


def curve_steps(spec: EvalSpec, total_steps: int) -> set[int]:
    """The training steps evaluated along the way: each fraction of ``eval.curve.fractions`` of the run's
    steps (rounded; the end is left to the full evaluation)."""
    return {s for s in (round(f * total_steps) for f in spec.curve_fractions) if 0 <= s < total_steps}


def _flat_view(prompt_ids, samples) -> View:
    return View("sft", [{"chosen": (prompt_ids[i], c)} for i, s in enumerate(samples) for c in s])


class CurveSampler:
    """The trainer's ``curve`` callback: the policy's samples at ``steps`` with their log-probs under the
    policy at the sampling temperature, one file per step."""

    def __init__(self, spec: EvalSpec, group, run_dir: Path):
        self.spec, self.group, self.dir = spec, group, Path(run_dir) / CURVE_DIR
        ev = getattr(group.data, spec.split)
        self.prompt_ids = list(ev["prompt_ids"]) if len(ev) else []

    def steps(self, total_steps: int) -> set[int]:
        return curve_steps(self.spec, total_steps)

    def __call__(self, model, step: int) -> None:
        path = self.dir / f"step-{step:06d}.json"
        if path.exists() or not self.prompt_ids:  # written before a kill: the same model, the same samples
            return
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # a broken init: training says so itself
            return
        spec, t0 = self.spec, time.perf_counter()
        samples = generate(model, self.group.tokenizer, self.prompt_ids, spec.sampling, spec.seed,
                           k=spec.curve_samples_per_prompt)
        device = next(model.parameters()).device
        logp = score_view(model, _flat_view(self.prompt_ids, samples), self.group.pad_id, 64, device,
                          spec.sampling.temperature)["chosen.sum"]
        self.dir.mkdir(exist_ok=True)
        write_json(path, {"step": step, "samples": samples, "logp": logp.tolist(),
                          "seconds": time.perf_counter() - t0})


def _win(mine: list[list], anchor: list[list]) -> float:
    wins = em.prompt_win_rates(*em.judged(mine, anchor))
    return float(wins.mean()) if len(wins) else float("nan")


def point(spec: EvalSpec, samples, logp, logp_ref, scores, anchor_scores, gold_scores=None) -> dict:
    """One point of a run's curve: KL to the anchor with its CI over prompts, judge score, win rate vs the
    anchor's samples, mean response length (tokens), and the gold score when the judge is a proxy."""
    k = len(samples[0]) if samples else 1
    diff = np.asarray(logp, float) - np.asarray(logp_ref, float)
    lo, hi = em.bootstrap_ci(em.prompt_means(diff, k), spec.bootstrap, spec.seed)
    row = {"kl": float(diff.mean()) if len(diff) else float("nan"), "kl_ci_low": lo, "kl_ci_high": hi,
           "score_mean": em.judged_mean(scores), "win_rate_vs_sft": _win([scores[i: i + k] for i in range(0, len(scores), k)], anchor_scores),
           "response_tokens_mean": float(np.mean([len(c) for s in samples for c in s]))}
    return row | ({"gold_score_mean": em.judged_mean(gold_scores)} if gold_scores is not None else {})


def curve_rows(spec: EvalSpec, group, anchor, judging: Judging, run_dir: Path, prompts: list,
               anchor_scores: list[list], final: dict) -> list[dict]:
    """curve.jsonl: every step sampled during training, scored under ``anchor`` and judged (with the gold
    reward too when the judge is a proxy), then ``final`` (the full evaluation's point). Returns the rows."""
    judge, gold = judging.judge, judging.gold
    device = next(anchor.parameters()).device
    prompt_ids, rows = list(getattr(group.data, spec.split)["prompt_ids"]), []
    for path in sorted((Path(run_dir) / CURVE_DIR).glob("step-*.json")):
        saved = read_json(path)
        samples = saved["samples"]
        k = len(samples[0])
        logp_ref = score_view(anchor, _flat_view(prompt_ids, samples), group.pad_id, 64, device,
                              spec.sampling.temperature)["chosen.sum"].tolist()
        texts = [group.tokenizer.decode(c, skip_special_tokens=True) for s in samples for c in s]
        flat_prompts = [p for p in prompts for _ in range(k)]
        scores = judge.score(flat_prompts, texts)
        gold_scores = gold.score(flat_prompts, texts) if gold is not None else None
        rows.append({"step": saved["step"], **point(spec, samples, saved["logp"], logp_ref, scores, anchor_scores,
                                                     gold_scores)})
    rows.append(final)
    write_jsonl(Path(run_dir) / "curve.jsonl", rows)
    return rows


def curve_seconds(run_dir: Path) -> float:
    """Wall seconds spent sampling and scoring the policy along training (not counted as training)."""
    return float(sum(read_json(p).get("seconds", 0.0) for p in (Path(run_dir) / CURVE_DIR).glob("step-*.json")))


def best_of_n_rows(spec: EvalSpec, group, anchor, judging: Judging, prompts: list, prompt_ids: list,
                   anchor_scores: list[list]) -> list[dict]:
    """The best-of-n baseline of the group's anchor for n = 1, 2, 4, ... up to ``eval.best_of_n``: its analytic
    KL, expected judge score and win rate vs the anchor's evaluation samples (and, for a proxy judge, the
    gold score of the sample the proxy picks). Drawn once per group (the anchor's "best_of_n" stream), cached."""
    m = spec.best_of_n
    if m < 1 or not prompt_ids:
        return []
    judge, gold = judging.judge, judging.gold

    def build() -> list[dict]:
        samples = generate(anchor, group.tokenizer, prompt_ids, spec.sampling, spec.seed, "best_of_n", k=m)
        texts = [group.tokenizer.decode(c, skip_special_tokens=True) for s in samples for c in s]
        flat_prompts = [p for p in prompts for _ in range(m)]
        scores, golds = judge.score(flat_prompts, texts), gold.score(flat_prompts, texts) if gold else None
        return _bon_table(scores, golds, anchor_scores, m)

    return cached_json(spec.cache_dir, "best_of_n", Path(group.sft_stage()).name,
                       [prompt_ids, spec.sampling.key(), m, spec.seed, judging.config, anchor_scores, "best_of_n"],
                       build)


def _bon_table(scores, golds, anchor_scores, m: int) -> list[dict]:
    ns = [2 ** i for i in range(int(np.log2(m)) + 1)]
    by_prompt = [[(s, g) for s, g in zip(scores[i: i + m], (golds or scores)[i: i + m]) if s is not None]
                 for i in range(0, len(scores), m)]
    judged = [([s for s, _ in p], [a for a in anc if a is not None]) for p, anc in zip(by_prompt, anchor_scores)]
    rows = frontier.bon_curve([s for s, _ in judged], [a for _, a in judged], ns)
    if golds is not None:  # the gold score of the proxy's pick: the same order-statistic weights, on gold values
        for row in rows:
            picks = [float(np.dot(frontier.bon_weights(len(p), row["n"]), [g for _, g in sorted(p, key=lambda x: x[0])]))
                     for p in by_prompt if len(p) >= row["n"]]
            row["gold_score_mean"] = float(np.mean(picks)) if picks else None
    return rows
