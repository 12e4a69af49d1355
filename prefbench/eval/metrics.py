"""Evaluation metrics shared by every run (README, "summary.json"). Pure functions."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def judged(a: Sequence[Sequence], b: Sequence[Sequence]) -> tuple[list[list], list[list]]:
    """Per prompt, the judged samples of A and B (None = unjudged dropped), leaving out prompts with none on a side."""
    pairs = [([x for x in sa if x is not None], [y for y in sb if y is not None]) for sa, sb in zip(a, b)]
    pairs = [(sa, sb) for sa, sb in pairs if sa and sb]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def judged_mean(values) -> float | None:
    """The mean of the judged values (None = unjudged), or None when there is none."""
    valid = [v for v in values if v is not None]
    return float(np.mean(valid)) if valid else None


def prompt_win_rates(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    """Per prompt p: the fraction of (sample of A, sample of B) pairs where A scores higher, ties 1/2."""
    out = []
    for sa, sb in zip(a, b, strict=True):
        x, y = np.asarray(sa, float)[:, None], np.asarray(sb, float)[None, :]
        out.append(((x > y) + 0.5 * (x == y)).mean())
    return np.asarray(out)


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling prompts with replacement."""
    values = np.asarray(values, float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def win_rate(a, b, n_boot: int = 1000, seed: int = 0) -> dict:
    """Win rate of A over B on the same prompts with its 95% bootstrap CI over prompts."""
    per_prompt = prompt_win_rates(a, b)
    lo, hi = bootstrap_ci(per_prompt, n_boot, seed)
    return {"mean": float(per_prompt.mean()) if len(per_prompt) else float("nan"), "ci_low": lo, "ci_high": hi}


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the texts (whitespace tokens); higher = more diverse."""
    grams = [tuple(w[i: i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """D(O) of ORPO section 6.4: mean cosine similarity over distinct pairs; lower = more diverse."""
    e = np.asarray(embeddings, float)
    if len(e) < 2:
        return float("nan")
    e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
    sims = e @ e.T
    n = len(e)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def pid_aid(embeddings_by_prompt: Sequence[np.ndarray]) -> tuple[float, float]:
    """PID: mean over prompts of D(that prompt's samples); AID: D(the first sample of every prompt)."""
    pid = float(np.nanmean([mean_pairwise_cosine(e) for e in embeddings_by_prompt]))
    aid = mean_pairwise_cosine(np.stack([e[0] for e in embeddings_by_prompt]))
    return pid, aid


def kl_estimate(logp_policy: Sequence[float], logp_ref: Sequence[float]) -> float:
    """KL(pi || pi_ref) ~ mean over samples y ~ pi of [log pi(y|x) - log pi_ref(y|x)]."""
    return float(np.mean(np.asarray(logp_policy, float) - np.asarray(logp_ref, float)))


def prompt_means(values: Sequence[float], k: int) -> np.ndarray:
    """Per-prompt means of a flat list holding ``k`` consecutive values per prompt (the unit a
    bootstrap over prompts resamples)."""
    values = np.asarray(values, float)
    if len(values) % k:
        raise ValueError(f"{len(values)} values are not {k} per prompt")
    return values.reshape(-1, k).mean(axis=1)


def pass_at(scores_by_prompt: Sequence[Sequence[float]], k: int) -> float:
    """Mean over prompts of the unbiased pass@k from n >= k samples with c correct (Chen et al. 2021, eq. 1):
    pass@k = 1 - C(n - c, k) / C(n, k); a sample is correct when its gold reward is 1."""
    values = []
    for scores in scores_by_prompt:
        n, c = len(scores), sum(s == 1 for s in scores)
        values.append(1.0 - math.comb(n - c, k) / math.comb(n, k))
    return float(np.mean(values))
