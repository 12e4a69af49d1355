"""Statistics over seeds and prompts for the comparison report. Pure functions (numpy, pandas).

The unit of evidence is the seed: methods of one seed share the SFT anchor, the data split and the eval
prompts, so a run's prompts are not independent replicates of the method. Confidence intervals come from
the two-stage (hierarchical) nonparametric bootstrap of Davison & Hinkley (1997, *Bootstrap Methods and
their Application*, section 3.8; strategy "resample at both stages") as studied by Ren et al. (2010,
"Nonparametric bootstrapping for hierarchical data", J. Applied Statistics 37(9)): resample seeds with
replacement, then prompts with replacement within each resampled seed. Intervals are percentile intervals.

Collapsed / over-optimised runs (``collapsed``): a run whose KL to the anchor ``eval/kl`` exceeds
``COLLAPSE_KL`` nats, or whose mean response length ``eval/response_tokens_mean`` is below
``LENGTH_RATIO[0]`` or above ``LENGTH_RATIO[1]`` times its anchor's (``eval/anchor_response_tokens_mean``).
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import studentized_range

COLLAPSE_KL = 15.0  # nats per sample, KL(pi || pi_anchor) estimated on the run's own samples
LENGTH_RATIO = (0.5, 2.0)  # allowed range of mean response length / the anchor's mean response length
LEVEL = 0.95
HIERARCHICAL = "seeds and prompts"  # the ci_kind of a two-stage interval; others name their fallback


def _seed_choices(n_seeds: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n_seeds, (n_boot, n_seeds))


def _two_stage_draws(per_seed: Sequence[np.ndarray], choices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of the mean over seed slots of the per-slot prompt mean. ``choices`` (draws x slots)
    holds the resampled seeds; each slot resamples its seed's prompts (rows) afresh. Arrays may have columns
    (series on the same prompts): their rows are resampled together. Returns (draws,) or (draws, columns)."""
    n_boot, n_slots = choices.shape
    slot_means = np.empty((n_boot, n_slots) + per_seed[0].shape[1:])
    for s, values in enumerate(per_seed):
        where = np.nonzero(choices == s)
        rows = rng.integers(0, len(values), (len(where[0]), len(values)))
        slot_means[where] = values[rows].mean(axis=1)
    return slot_means.mean(axis=1)


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def hierarchical_bootstrap(per_seed_values: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0,
                           level: float = LEVEL) -> dict:
    """Two-stage bootstrap of the mean over seeds of each seed's mean over prompts (Davison & Hinkley 1997
    section 3.8; Ren et al. 2010): seeds resampled with replacement, then each resampled seed's prompts with
    replacement. ``per_seed_values[s]`` holds seed s's per-prompt values (seeds may have different numbers of
    prompts). Returns ``mean`` (the plain mean of the seed means), ``ci_low``, ``ci_high`` (percentile) and
    ``draws`` (the bootstrap distribution, for comparisons). One seed reduces to the prompt bootstrap."""
    per_seed = [np.asarray(v, float) for v in per_seed_values if len(v)]
    if not per_seed:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "draws": np.array([])}
    rng = np.random.default_rng(seed)
    draws = _two_stage_draws(per_seed, _seed_choices(len(per_seed), n_boot, rng), rng)
    lo, hi = _interval(draws, level)
    return {"mean": float(np.mean([v.mean() for v in per_seed])), "ci_low": lo, "ci_high": hi, "draws": draws}


def paired_comparison(a: Mapping[int, Mapping[int, float]], b: Mapping[int, Mapping[int, float]],
                      n_boot: int = 2000, seed: int = 0, level: float = LEVEL) -> dict:
    """A vs B, each ``{seed: {prompt_index: value}}``, on the seeds both have. Seeds are paired: both series
    get the same resampled seeds in every draw (a seed's methods share its anchor, data split and prompts).
    Prompts are resampled jointly when each shared seed has the same prompts on both sides, else separately.
    Returns ``p_a_beats_b`` (fraction of joint draws where A's mean exceeds B's; ties count 1/2), the
    difference A - B with its percentile CI (and ``draws``, its bootstrap distribution), the number of shared
    seeds and whether prompts were paired."""
    seeds = sorted(set(a) & set(b))
    out = {"n_seeds": len(seeds), "p_a_beats_b": float("nan"), "diff": float("nan"), "diff_low": float("nan"),
           "diff_high": float("nan"), "prompts_paired": False, "draws": np.array([])}
    seeds = [s for s in seeds if a[s] and b[s]]
    if not seeds:
        return out
    rng = np.random.default_rng(seed)
    choices = _seed_choices(len(seeds), n_boot, rng)
    paired = all(set(a[s]) == set(b[s]) for s in seeds)
    if paired:
        stacked = [np.array([[a[s][p], b[s][p]] for p in sorted(a[s])], float) for s in seeds]
        both = _two_stage_draws(stacked, choices, rng)
        da, db = both[:, 0], both[:, 1]
    else:
        da = _two_stage_draws([np.array(list(a[s].values()), float) for s in seeds], choices, rng)
        db = _two_stage_draws([np.array(list(b[s].values()), float) for s in seeds], choices, rng)
    diff = da - db
    lo, hi = _interval(diff, level)
    mean = np.mean([np.mean(list(a[s].values())) - np.mean(list(b[s].values())) for s in seeds])
    return out | {"p_a_beats_b": float((diff > 0).mean() + 0.5 * (diff == 0).mean()), "diff": float(mean),
                  "diff_low": lo, "diff_high": hi, "prompts_paired": paired, "draws": diff}


@functools.lru_cache(maxsize=256)
def _studentized_range(level: float, k: int, df: int) -> float:
    return float(studentized_range.ppf(level, k, df))


def block_pairs(seed_means: Mapping[str, Mapping[int, float]], level: float = LEVEL) -> dict:
    """Simultaneous ``level`` intervals for every difference of series means, seeds as blocks: the additive
    model y[m, s] = tau[m] + beta[s] + e[m, s] (Montgomery 2017, eq. 4.1) fitted by least squares on the cells
    present (a left-out collapsed run is a missing cell), and the Tukey-Kramer half-width
    q(level; k, df_E) / sqrt(2) * se(tau_a - tau_b), with q the studentized range of k series and
    df_E = cells - rank of the design residual degrees of freedom. ``seed_means``: ``{series: {seed: mean}}``.
    Returns ``{(a, b): (tau_a - tau_b, half_width, df_E)}`` for each estimable pair (a before b in the input's
    order); empty when there is no residual degree of freedom (e.g. one seed)."""
    names = list(seed_means)
    if len(names) < 2:
        return {}
    blocks = sorted({s for v in seed_means.values() for s in v})
    cells = [(i, blocks.index(s), float(v)) for i, m in enumerate(names) for s, v in seed_means[m].items()]
    x = np.zeros((len(cells), len(names) + len(blocks) - 1))
    for row, (i, j, _) in enumerate(cells):
        x[row, i] = 1.0
        if j:
            x[row, len(names) + j - 1] = 1.0
    y = np.array([v for *_, v in cells])
    df_e = len(y) - np.linalg.matrix_rank(x)
    if df_e < 1:
        return {}
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    mse = float(((y - x @ coef) ** 2).sum()) / df_e
    xtx_inv, projector = np.linalg.pinv(x.T @ x), np.linalg.pinv(x) @ x
    q = _studentized_range(level, len(names), df_e) / np.sqrt(2)
    out = {}
    for a, b in itertools.combinations(range(len(names)), 2):
        c = np.zeros(x.shape[1])
        c[a], c[b] = 1.0, -1.0
        if np.allclose(projector @ c, c):  # estimable: the two series are connected through shared seeds
            out[names[a], names[b]] = (float(c @ coef), q * float(np.sqrt(mse * c @ xtx_inv @ c)), int(df_e))
    return out


PAIR_COLUMNS = ["a", "b", "n_seeds", "p_a_beats_b", "diff", "diff_low", "diff_high", "interval", "boot_low",
                "boot_high", "prompts_paired", "distinguishable"]
TUKEY = "Tukey-Kramer, seeds as blocks"
BONFERRONI = "bootstrap over prompts, Bonferroni"


def pairwise_table(values: Mapping[str, Mapping[int, Mapping[int, float]]], n_boot: int = 2000, seed: int = 0,
                   level: float = LEVEL) -> pd.DataFrame:
    """Every ordered pair of series (``{series: {seed: {prompt: value}}}``): ``paired_comparison``'s chance
    that A beats B and its bootstrap CI (``boot_low``, ``boot_high``), and the simultaneous interval the words
    and ranks use (``diff_low``, ``diff_high``, ``interval``): ``block_pairs`` on the seed means, or with one
    seed (no residual degree of freedom) the prompt bootstrap at the Bonferroni level 1 - (1 - level) / pairs.
    A pair is ``distinguishable`` when its simultaneous interval excludes 0."""
    blocks = block_pairs({x: {s: float(np.mean(list(p.values()))) for s, p in v.items() if p}
                          for x, v in values.items()}, level)
    n_pairs = max(1, len(values) * (len(values) - 1) // 2)
    rows = []
    for i, (x, y) in enumerate(itertools.combinations(values, 2)):
        c = paired_comparison(values[x], values[y], n_boot, seed + i, level)
        draws = c.pop("draws")
        c["boot_low"], c["boot_high"] = c["diff_low"], c["diff_high"]
        if (x, y) in blocks:
            diff, half, _ = blocks[x, y]
            c |= {"diff": diff, "diff_low": diff - half, "diff_high": diff + half, "interval": TUKEY}
        elif len(draws) and not blocks:
            c["diff_low"], c["diff_high"] = _interval(draws, 1 - (1 - level) / n_pairs)
            c["interval"] = BONFERRONI
        else:
            c |= {"diff_low": float("nan"), "diff_high": float("nan"), "interval": ""}
        flipped = c | {"p_a_beats_b": 1 - c["p_a_beats_b"], "diff": -c["diff"], "diff_low": -c["diff_high"],
                       "diff_high": -c["diff_low"], "boot_low": -c["boot_high"], "boot_high": -c["boot_low"]}
        rows += [{"a": x, "b": y, **c}, {"a": y, "b": x, **flipped}]
    df = pd.DataFrame(rows, columns=PAIR_COLUMNS[:-1])
    df["distinguishable"] = (df["diff_low"] > 0) | (df["diff_high"] < 0)
    return df


def rank_table(summary: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Series sorted by mean (best first) with rank ranges: a series' best rank is 1 + the number of series
    whose difference to it has a CI above 0, its worst rank the number of series minus those it beats so.
    Ranks that overlap are statistically tied and shown as a range, e.g. ``1-2``. ``summary`` has columns
    ``series`` and ``mean``; ``pairs`` is a ``pairwise_table`` over the same series."""
    s = summary.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)
    n = len(s)
    above = pairs[pairs["diff_low"] > 0]
    best = [1 + int((above["b"] == x).sum()) for x in s["series"]]
    worst = [n - int((above["a"] == x).sum()) for x in s["series"]]
    s.insert(0, "rank", [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in zip(best, worst)])
    s["tied_with"] = [", ".join(pairs[(pairs["a"] == x) & ~pairs["distinguishable"]]["b"]) for x in s["series"]]
    return s


def collapse_reasons(df: pd.DataFrame, max_kl: float = COLLAPSE_KL,
                     length_ratio: tuple[float, float] = LENGTH_RATIO) -> pd.Series:
    """Per run, why it counts as collapsed / over-optimised ('' when it does not): KL to the anchor above
    ``max_kl`` nats, or mean response length outside ``length_ratio`` times the anchor's. A missing column
    (e.g. runs from before the anchor length was recorded) skips that test."""
    empty = pd.Series(np.nan, index=df.index)
    kl = pd.to_numeric(df.get("eval/kl", empty), errors="coerce")
    ratio = (pd.to_numeric(df.get("eval/response_tokens_mean", empty), errors="coerce")
             / pd.to_numeric(df.get("eval/anchor_response_tokens_mean", empty), errors="coerce"))
    reasons = []
    for k, r in zip(kl, ratio):
        why = [f"KL {k:.1f} nats > {max_kl:g}"] if k > max_kl else []
        if r < length_ratio[0] or r > length_ratio[1]:
            why.append(f"response length {r:.2f}x the anchor's (allowed {length_ratio[0]:g}-{length_ratio[1]:g}x)")
        reasons.append("; ".join(why))
    return pd.Series(reasons, index=df.index, dtype=object)


def _label(series: str) -> str:
    head, sep, tail = series.partition(" [")
    return head.upper() + sep + tail


def _where(sizes: list[str], all_sizes: list[str]) -> str:
    return "all sizes" if len(all_sizes) > 1 and set(sizes) == set(all_sizes) else ", ".join(sizes)


def _ci_note(row) -> str:
    notes = [] if row["ci_kind"] == HIERARCHICAL else [row["ci_kind"]]
    if row.get("n_collapsed", 0):
        notes.append(f"{int(row['n_collapsed'])} collapsed run(s) excluded")
    return f" ({'; '.join(notes)})" if notes else ""



def conclusions(summary: pd.DataFrame, pairs: pd.DataFrame, sizes: list[str], anchor: str = "SFT") -> list[str]:
    """Sentences the 95% CIs support, nothing else. ``summary``: one row per (series, model) with the win
    rate vs the anchor (``mean``, ``ci_low``, ``ci_high``, ``ci_kind``, ``n_collapsed``); ``pairs``: the
    ``pairwise_table`` rows of every model (column ``model``). A series is above / below the anchor at a size
    when its CI lies above / below 0.5, and not distinguishable from it when the CI contains 0.5; two series
    differ when the simultaneous CI of their difference excludes 0 (pairs with the series named like the anchor are left out:
    the first sentences say that already). Sizes without an estimate get no words."""
    out = []
    order = summary.groupby("series")["mean"].mean().sort_values(ascending=False).index.tolist()
    for series in order:
        rows = summary[(summary["series"] == series) & summary["ci_low"].notna()].set_index("model")
        rows = rows.loc[[m for m in sizes if m in rows.index]]
        verdicts = {"above": [], "below": [], "tied": []}
        for model, r in rows.iterrows():
            key = "above" if r["ci_low"] > 0.5 else "below" if r["ci_high"] < 0.5 else "tied"
            verdicts[key].append(f"{model} {r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]{_ci_note(r)}")
        name, parts = _label(series), []
        for key, words, bound in (("above", f"{name} > {anchor}", "above 0.5"),
                                  ("below", f"{name} < {anchor}", "below 0.5"),
                                  ("tied", f"{name} vs {anchor} not distinguishable", "contains 0.5")):
            if verdicts[key]:
                at = [v.split(" ")[0] for v in verdicts[key]]
                parts.append(f"{words} at {_where(at, sizes)} (win rate vs {anchor}, 95% CI {bound}: "
                             f"{', '.join(verdicts[key])})")
        if parts:
            out.append("; ".join(parts) + ".")
    others = [s for s in order if _label(s) != anchor]  # vs the anchor: above
    if len(others) > GROUPED_ABOVE:
        return out + _grouped_pairs(others, pairs, sizes, anchor)
    for a, b in itertools.combinations(others, 2):
        p = pairs[(pairs["a"] == a) & (pairs["b"] == b) & pairs["diff_low"].notna()].set_index("model")
        p = p.loc[[m for m in sizes if m in p.index]]
        if p.empty:
            continue
        wins = [m for m, r in p.iterrows() if r["diff_low"] > 0]
        losses = [m for m, r in p.iterrows() if r["diff_high"] < 0]
        tied = [m for m in p.index if m not in wins + losses]
        la, lb, parts = _label(a), _label(b), []
        for first, second, at in ((la, lb, wins), (lb, la, losses)):
            if at:
                chance = ", ".join(f"{p.loc[m, 'p_a_beats_b'] if first == la else 1 - p.loc[m, 'p_a_beats_b']:.2f}"
                                   for m in at)
                parts.append(f"{first} > {second} at {_where(at, sizes)} (simultaneous 95% CI of the difference in "
                             f"win rate vs {anchor} above 0; P({first} beats {second}) = {chance})")
        if tied:
            parts.append(f"{la} vs {lb} not distinguishable at {_where(tied, sizes)}" if not parts
                         else f"not distinguishable at {_where(tied, sizes)}")
        out.append("; ".join(parts) + ".")
    return out


GROUPED_ABOVE = 6  # more series than this: one sentence per series and size lists the series it beats


def _grouped_pairs(order: list[str], pairs: pd.DataFrame, sizes: list[str], anchor: str) -> list[str]:
    """The pairwise verdicts of many series, grouped: per series and size, the series it is ahead of."""
    out = []
    for series in order:
        for model in sizes:
            at = pairs[(pairs["model"] == model) & pairs["diff_low"].notna()]
            beats = at[(at["a"] == series) & (at["diff_low"] > 0)]["b"].tolist() + \
                at[(at["b"] == series) & (at["diff_high"] < 0)]["a"].tolist()
            if beats:
                names = ", ".join(_label(b) for b in order if b in beats)
                out.append(f"{_label(series)} > {names} at {model} (simultaneous 95% CIs of the differences in win "
                           f"rate vs {anchor} above 0).")
    return out + ["Every other pair is not distinguishable (the ranking's tied_with column)."]
