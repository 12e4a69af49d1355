"""How far an LLM judge agrees with a sweep's own judge on the same replies.

`prefbench agree SWEEP_DIR [judge=llm_local] [pairs=N]` takes, from each finished run of the sweep, the first two
policy samples of each evaluation prompt as its judge scored them (``samples.jsonl``'s ``score``, e.g. the in-suite
reward model), draws ``pairs`` of those pairs at random, and asks the LLM judge about the same replies: pointwise
(a 1-10 score each) and pairwise (both orders, Zheng et al. 2023 sec. 3.4). It writes ``judge_agreement.json`` in
the sweep folder, which the report shows:

- ``spearman``: rank correlation of the LLM's pointwise scores with the sweep judge's scores, over the replies;
- ``pointwise_agreement``: over the pairs where both judges separate the two replies, the fraction where the
  LLM's higher score goes to the reply the sweep judge scores higher (0.5 = chance);
- ``pairwise_agreement``: the same for the LLM's pairwise verdict (its share of the win over both orders, pairs
  where it is not 0.5);
- ``pairwise_consistency``: the fraction of pairs whose two orders got the same verdict (1 = no position bias);
each with a 95% bootstrap interval over pairs where it is a fraction, and the counts behind it.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from omegaconf import OmegaConf

from prefbench import CONF_DIR
from prefbench.eval.llm_judge import LLMJudge
from prefbench.io.errors import UserError
from prefbench.io.results import read_json, read_jsonl, write_json

FILE = "judge_agreement.json"


def sample_pairs(sweep_dir: Path, n: int, seed: int) -> list[dict]:
    """Up to ``n`` pairs (two scored samples of one prompt of one finished run), drawn at random with ``seed``."""
    pairs = []
    for run in sorted(p.parent for p in sweep_dir.glob("*/samples.jsonl")):
        if read_json(run / "summary.json", {}).get("status") != "done":
            continue
        by_prompt: dict[int, list[dict]] = {}
        for row in read_jsonl(run / "samples.jsonl"):
            if row.get("score") is not None:
                by_prompt.setdefault(row["prompt_index"], []).append(row)
        pairs += [{"run": run.name, "prompt": rows[0]["prompt"], "a": rows[0]["response"], "b": rows[1]["response"],
                   "score_a": rows[0]["score"], "score_b": rows[1]["score"]}
                  for _, rows in sorted(by_prompt.items()) if len(rows) >= 2]
    if not pairs:
        raise UserError(f"{sweep_dir}: no finished run with two judged samples of a prompt (samples.jsonl)")
    return random.Random(seed).sample(pairs, min(n, len(pairs)))


def _fraction(hits: np.ndarray, seed: int, resamples: int = 1000) -> dict:
    """The mean of 0/1 ``hits``, its 95% bootstrap interval, and how many there were."""
    if not len(hits):
        return {"value": None, "ci": [None, None], "n": 0}
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, len(hits), (resamples, len(hits)))].mean(axis=1)
    return {"value": float(hits.mean()), "ci": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
            "n": int(len(hits))}


def agreement(pairs: list[dict], llm_a: list, llm_b: list, verdicts: list, agreed: list, seed: int = 0) -> dict:
    """The statistics above, from the sweep judge's scores in ``pairs`` and the LLM's answers about them
    (``llm_a``/``llm_b``: pointwise scores of each pair's replies; ``verdicts``: reply a's share of the win;
    ``agreed``: whether the two orders agreed; None where no answer came)."""
    judge_diff = np.array([p["score_a"] - p["score_b"] for p in pairs])
    scored = [(s, p[k]) for p, a, b in zip(pairs, llm_a, llm_b) for s, k in ((a, "score_a"), (b, "score_b"))
              if s is not None]
    rho = spearmanr(*zip(*scored)).statistic if len(scored) > 2 else None
    point = [(a - b) * d > 0 for a, b, d in zip(llm_a, llm_b, judge_diff)
             if a is not None and b is not None and a != b and d != 0]
    pair = [(v > 0.5) == (d > 0) for v, d in zip(verdicts, judge_diff) if v is not None and v != 0.5 and d != 0]
    return {"pairs": len(pairs), "replies_scored": len(scored),
            "spearman": None if rho is None or np.isnan(rho) else float(rho),
            "pointwise_agreement": _fraction(np.array(point, dtype=float), seed),
            "pairwise_agreement": _fraction(np.array(pair, dtype=float), seed),
            "pairwise_ties": int(sum(v == 0.5 for v in verdicts if v is not None)),
            "pairwise_consistency": _fraction(np.array([a for a in agreed if a is not None], dtype=float), seed),
            "unanswered": int(sum(x is None for x in list(llm_a) + list(llm_b) + list(verdicts)))}


def judge_agreement(sweep_dir: Path, judge_cfg, n_pairs: int = 150, seed: int = 0) -> dict:
    """Ask the LLM judge ``judge_cfg`` about ``n_pairs`` pairs of the sweep's samples; write and return the result."""
    pairs = sample_pairs(sweep_dir, n_pairs, seed)
    judge = LLMJudge(judge_cfg)
    prompts = [p["prompt"] for p in pairs]
    llm = judge.score(prompts + prompts, [p["a"] for p in pairs] + [p["b"] for p in pairs])
    verdicts, agreed = judge.compare(prompts, [p["a"] for p in pairs], [p["b"] for p in pairs])
    judged_by = {k: judge_cfg.get(k) for k in ("model", "response_format")} | (
        {"server_model": str(judge_cfg.server.model)} if judge_cfg.get("server") else {"base_url": judge_cfg.base_url})
    result = {"judge": judged_by, "seed": seed, "sweep_judge": sorted(
        {read_json(sweep_dir / p["run"] / "summary.json", {}).get("eval/judge") for p in pairs} - {None})}
    result |= agreement(pairs, llm[:len(pairs)], llm[len(pairs):], verdicts, agreed, seed)
    write_json(sweep_dir / FILE, result)
    return result


def main(args: list[str]) -> int:
    """``prefbench agree SWEEP_DIR [judge=llm_local] [pairs=150] [seed=0] [judge.KEY=VALUE ...]``."""
    if not args or "=" in args[0]:
        raise UserError("usage: prefbench agree SWEEP_DIR [judge=llm_local] [pairs=N] [seed=N] [judge.KEY=VALUE ...]")
    settings = dict(item.partition("=")[::2] for item in args[1:])
    name = settings.pop("judge", "llm_local")
    path = CONF_DIR / "judge" / f"{name}.yaml"
    if not path.is_file() or OmegaConf.load(path).get("name") != "llm":
        raise UserError(f"judge={name!r}: agreement is measured for an LLM judge (llm, llm_local, or a yaml like them)")
    n_pairs, seed = int(settings.pop("pairs", 150)), int(settings.pop("seed", 0))
    unknown = [k for k in settings if not k.startswith("judge.")]
    if unknown:
        raise UserError(f"prefbench agree: unknown setting(s) {', '.join(unknown)}; allowed: judge=, pairs=, seed=, "
                        "judge.KEY=")
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(
        [f"{k.removeprefix('judge.')}={v}" for k, v in settings.items()]))
    result = judge_agreement(Path(args[0]), cfg, n_pairs, seed)
    shown = {k: result[k]["value"] if isinstance(result[k], dict) else result[k]
             for k in ("pairs", "spearman", "pointwise_agreement", "pairwise_agreement", "pairwise_consistency")}
    print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    print(f"written: {Path(args[0]) / FILE}")
    return 0
