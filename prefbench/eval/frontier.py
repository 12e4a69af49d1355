"""Reward-KL frontiers: best-of-n baselines, Gao et al. scaling-law fits, pareto fronts, length control. Pure numpy.

- Best-of-n KL: KL(pi_bon || pi) = log n - (n-1)/n (Stiennon et al. 2020, "Learning to summarize from human
  feedback", appendix; Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization", section 2). Exact for a
  reward without ties, an upper bound otherwise.
- Unbiased best-of-n estimates from m >= n samples: the expected maximum of n draws without replacement is
  sum_i w_i s_(i), w_i = C(i-1, n-1) / C(m, n) over the ascending order statistics (Nakano et al. 2021, WebGPT,
  appendix; Gao et al. 2022, section 2).
- Gold-reward forms in d = sqrt(KL) (Gao et al. 2022, eq. 1-2): best-of-n R(d) = d(alpha - beta d), RL
  R(d) = d(alpha - beta log d).
- Length-controlled win rate in the spirit of AlpacaEval 2 LC (Dubois et al. 2024, "Length-Controlled AlpacaEval"):
  a logistic GLM of the verdict on tanh(length difference / scale), read off at zero length difference.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NAN = float("nan")


def bon_kl(n: int) -> float:
    """KL(pi_bon || pi) = log n - (n-1)/n."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1 (got {n})")
    return math.log(n) - (n - 1) / n


def bon_weights(m: int, n: int) -> np.ndarray:
    """w_i = C(i-1, n-1) / C(m, n) for i = 1..m (0 for i < n): E[max of n of m] = sum_i w_i s_(i)."""
    if not 1 <= n <= m:
        raise ValueError(f"best-of-n needs 1 <= n <= m (got n={n}, m={m})")
    i = np.arange(n, m + 1, dtype=float)
    log_w = (np.array([math.lgamma(k) for k in i]) - math.lgamma(n) - np.array([math.lgamma(k - n + 1) for k in i])
             - (math.lgamma(m + 1) - math.lgamma(n + 1) - math.lgamma(m - n + 1)))
    w = np.zeros(m)
    w[n - 1:] = np.exp(log_w)
    return w / w.sum()  # exact sum is 1 (hockey-stick identity); removes the log-gamma rounding


def bon_score(scores: Sequence[float], n: int) -> float:
    """Unbiased E[max of n draws without replacement] = sum_i w_i s_(i)."""
    s = np.sort(np.asarray(scores, dtype=float))
    return float(bon_weights(len(s), n) @ s)


def bon_win_rate(scores: Sequence[float], others: Sequence[float], n: int) -> float:
    """sum_i w_i mean_j [1(s_(i) > o_j) + 1/2 1(s_(i) = o_j)]: the best-of-n sample against ``others``."""
    s = np.sort(np.asarray(scores, dtype=float))
    o = np.sort(np.asarray(others, dtype=float))
    w = bon_weights(len(s), n)
    if len(o) == 0:
        return NAN
    below, upto = np.searchsorted(o, s, "left"), np.searchsorted(o, s, "right")
    return float(w @ ((below + upto) / (2 * len(o))))


def bon_curve(scores_by_prompt: Sequence[Sequence[float]], anchor_by_prompt: Sequence[Sequence[float]],
              ns: Sequence[int]) -> list[dict]:
    """Per n: analytic KL, mean over prompts of the best-of-n score and of its win rate against the anchor."""
    if len(scores_by_prompt) != len(anchor_by_prompt):
        raise ValueError(f"{len(scores_by_prompt)} prompts of scores but {len(anchor_by_prompt)} of anchor scores")
    prompts = [(list(s), list(a)) for s, a in zip(scores_by_prompt, anchor_by_prompt) if len(s)]
    if not prompts:
        return []
    fewest = min(len(s) for s, _ in prompts)
    rows = []
    for n in ns:
        if n > fewest:
            continue
        wins = [bon_win_rate(s, a, n) for s, a in prompts if len(a)]
        rows.append({"n": n, "kl": bon_kl(n), "score_mean": float(np.mean([bon_score(s, n) for s, _ in prompts])),
                     "win_rate_vs_sft": float(np.mean(wins)) if wins else NAN})
    return rows


def _xlogx(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d == 0, 0.0, d * np.log(np.where(d > 0, d, np.nan)))


def _design(d: np.ndarray, form: str) -> np.ndarray:
    if form == "bon":
        return np.stack([d, -d * d], axis=1)
    if form == "rl":
        return np.stack([d, -_xlogx(d)], axis=1)
    raise ValueError(f"form must be 'bon' or 'rl' (got {form!r})")


PEAK_REACH = 2.0  # a fitted peak beyond this times the largest d measured is not reported: still rising where measured


def gao_fit(d: Sequence[float], r: Sequence[float], form: str) -> dict:
    """Least squares without intercept of R(d) = d(alpha - beta d) ("bon") or d(alpha - beta log d) ("rl"). The
    peak (``peak_kl``, ``peak_reward``) is reported when it lies within PEAK_REACH times the largest d fitted; a
    nearly straight curve (beta just above 0) would otherwise place it at an absurd KL such as 1e120."""
    if form not in ("bon", "rl"):
        raise ValueError(f"form must be 'bon' or 'rl' (got {form!r})")
    d, r = np.asarray(d, dtype=float).ravel(), np.asarray(r, dtype=float).ravel()
    if d.shape != r.shape:
        raise ValueError(f"d has {d.size} points but r has {r.size}")
    keep = np.isfinite(d) & np.isfinite(r) & ((d >= 0) if form == "rl" else True)
    d, r = d[keep], r[keep]
    out = {"form": form, "alpha": NAN, "beta": NAN, "peak_kl": NAN, "peak_reward": NAN, "r2": NAN,
           "n_points": int(len(d))}
    if len(d) < 2:
        return out
    x = _design(d, form)
    (alpha, beta), _, rank, _ = np.linalg.lstsq(x, r, rcond=None)
    if rank < 2:  # e.g. every point at d = 0: (alpha, beta) not identified
        return out
    out.update(alpha=float(alpha), beta=float(beta))
    if beta > 0 and (form == "rl" or alpha > 0):  # "bon" with alpha <= 0 peaks at d <= 0: no interior maximum
        peak = alpha / (2 * beta) if form == "bon" else math.exp(min(alpha / beta - 1, 700.0))
        if peak <= PEAK_REACH * d.max():
            out.update(peak_kl=float(peak**2), peak_reward=float(gao_curve(out, [peak])[0]))
    ss_tot = float(((r - r.mean()) ** 2).sum())
    if len(d) >= 3 and ss_tot > 0:
        out["r2"] = 1 - float(((r - x @ np.array([alpha, beta])) ** 2).sum()) / ss_tot
    return out


def gao_curve(fit: dict, d: Sequence[float]) -> np.ndarray:
    """R(d) of a ``gao_fit`` result: d(alpha - beta d) or d(alpha - beta log d) (NaN for d < 0 in "rl")."""
    return _design(np.asarray(d, dtype=float).ravel(), fit["form"]) @ np.array([fit["alpha"], fit["beta"]])


def pareto_front(kl: Sequence[float], value: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The non-dominated (KL, value) points, KL ascending and value strictly increasing; non-finite dropped."""
    k, v = np.asarray(kl, dtype=float).ravel(), np.asarray(value, dtype=float).ravel()
    if k.shape != v.shape:
        raise ValueError(f"kl has {k.size} points but value has {v.size}")
    keep = np.isfinite(k) & np.isfinite(v)
    k, v = k[keep], v[keep]
    order = np.lexsort((-v, k))  # KL ascending, at equal KL the best value first
    front_k, front_v = [], []
    for i in order:
        if not front_v or v[i] > front_v[-1]:
            front_k.append(k[i])
            front_v.append(v[i])
    return np.asarray(front_k), np.asarray(front_v)


def value_at_kl(kl: Sequence[float], value: Sequence[float], budget: float) -> float:
    """The piecewise-linear pareto front at KL = budget: NaN below its first KL, its last value past its last."""
    k, v = pareto_front(kl, value)
    if len(k) == 0 or not budget >= k[0]:
        return NAN
    return float(v[-1]) if budget >= k[-1] else float(np.interp(budget, k, v))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))


def lc_win_rate(verdicts: Sequence[float], length_diff: Sequence[float], scale: float | None = None,
                ridge: float = 1e-3) -> dict:
    """P(win) = sigma(a + b tanh(delta/s)) by penalised Newton; LC win rate sigma(a), the win rate at delta = 0.

    Maximises mean_k [y_k log p_k + (1 - y_k) log(1 - p_k)] - ridge/2 (a^2 + b^2), y_k in [0, 1] (ties 1/2).
    """
    y, delta = np.asarray(verdicts, dtype=float).ravel(), np.asarray(length_diff, dtype=float).ravel()
    if y.shape != delta.shape:
        raise ValueError(f"{y.size} verdicts but {delta.size} length differences")
    if not (np.isfinite(delta).all() and ((y >= 0) & (y <= 1)).all()):
        raise ValueError("verdicts must lie in [0, 1] and length differences be finite")
    if scale is not None and not scale >= 0:
        raise ValueError(f"scale must be >= 0 (got {scale})")
    if len(y) == 0:
        return {"lc_win_rate": NAN, "raw_win_rate": NAN, "length_coef": NAN,
                "scale": NAN if scale is None else float(scale), "n": 0}
    s = float(delta.std()) if scale is None else float(scale)
    with_length = s > 0 and np.ptp(delta) > 0
    x = np.stack([np.ones_like(delta), np.tanh(delta / s)], axis=1) if with_length else np.ones((len(y), 1))

    def objective(theta: np.ndarray) -> float:
        z = x @ theta
        return float(np.mean(y * z - np.logaddexp(0, z)) - ridge / 2 * theta @ theta)

    theta = np.zeros(x.shape[1])
    for _ in range(100):
        p = _sigmoid(x @ theta)
        grad = x.T @ (y - p) / len(y) - ridge * theta
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(y) + ridge * np.eye(len(theta))
        step = np.linalg.solve(hess, grad)
        current, t = objective(theta), 1.0
        while objective(theta + t * step) < current and t > 1e-8:  # backtracking: Newton overshoots under separation
            t /= 2
        theta = theta + t * step
        if np.abs(t * step).max() < 1e-12:
            break
    return {"lc_win_rate": float(_sigmoid(theta[0])), "raw_win_rate": float(y.mean()),
            "length_coef": float(theta[1]) if with_length else 0.0, "scale": s, "n": int(len(y))}
