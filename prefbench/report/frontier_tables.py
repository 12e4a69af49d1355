"""The report's reward-KL frontier: every run's curve (prefbench.eval.curve), best-of-n from the anchor, Gao et al.'s
fits, win rates at a matched KL budget, length, proxy vs gold, and per-run diagnostics.

Gao et al. (2022, eq. 1-2) model the gold reward gain over the anchor as a function of d = sqrt(KL):
best-of-n R(d) = d(alpha - beta d), RL R(d) = d(alpha - beta log d). Here every method's points (all seeds,
checkpoints and swept settings) are fit with the RL form, best-of-n with its own, by least squares
(prefbench.eval.frontier.gao_fit). The matched-KL win rate of a run is the best win rate vs SFT on its curve's
upper envelope at KL <= the budget (prefbench.eval.frontier.value_at_kl); the budget per size is the median final
KL of the counted runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prefbench.eval import frontier
from prefbench.io.results import read_jsonl
from prefbench.report import stats
from prefbench.report.tables import counted, done

DISPLACEMENT = "likelihood displacement"
DISPLACEMENT_NATS = 0.5  # flagged when the held-out chosen log-prob falls and the margin rises, each by at least this
KL_BLOWUP = 2.0, 5.0  # flagged when KL grows more than 2x over the second half of training and ends above 5 nats
LENGTH_DRIFT = (0.8, 1.25)  # flagged when the final mean length leaves this range times the anchor's
N_BOOT = 2000


def load_curves(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (done run, curve point), with the run's identity, its anchor's score and ``d`` = sqrt(KL)
    (KL estimates below 0, noise around the anchor, count as 0)."""
    rows = []
    for _, r in done(df).iterrows():
        for p in read_jsonl(Path(r["run_dir"]) / "curve.jsonl"):
            rows.append({**{k: r.get(k) for k in ("run_dir", "series", "method", "model", "seed", "n_params",
                                                  "collapsed", "eval/anchor_score_mean")}, **p})
    c = pd.DataFrame(rows)
    if not c.empty:
        c["d"] = np.sqrt(c["kl"].clip(lower=0))
        c["gain"] = c["score_mean"] - c["eval/anchor_score_mean"]
    return c


def load_best_of_n(df: pd.DataFrame) -> pd.DataFrame:
    """Best-of-n rows per (model, seed), from the first done run of each group that has them."""
    rows = []
    for (model, seed), g in done(df).groupby(["model", "seed"]):
        for _, r in g.iterrows():
            found = read_jsonl(Path(r["run_dir"]) / "best_of_n.jsonl")
            if found:
                rows += [{"model": model, "seed": seed, "eval/anchor_score_mean": r.get("eval/anchor_score_mean"),
                          **b} for b in found]
                break
    b = pd.DataFrame(rows)
    if not b.empty:
        b["d"] = np.sqrt(b["kl"])
        b["gain"] = b["score_mean"] - b["eval/anchor_score_mean"]
    return b


def fits(curves: pd.DataFrame, bon: pd.DataFrame) -> pd.DataFrame:
    """Gao et al.'s fit per (method, model) (RL form) and of best-of-n per model (its form)."""
    rows = []
    if not curves.empty:
        for (method, model), g in curves[~curves["collapsed"].fillna(False).astype(bool)].groupby(["method", "model"]):
            rows.append({"series": method, "model": model, **frontier.gao_fit(g["d"], g["gain"], "rl")})
    if not bon.empty:
        for model, g in bon.groupby("model"):
            rows.append({"series": "best-of-n", "model": model, **frontier.gao_fit(g["d"], g["gain"], "bon")})
    return pd.DataFrame(rows)


def kl_budgets(df: pd.DataFrame) -> dict[str, float]:
    """Per model: the median final KL to the anchor of the counted runs."""
    d = counted(df)
    return {m: float(np.median(g["eval/kl"].clip(lower=0))) for m, g in d.groupby("model") if g["eval/kl"].notna().any()}


def matched_kl(df: pd.DataFrame, curves: pd.DataFrame, bon: pd.DataFrame) -> pd.DataFrame:
    """Per (series, model): each seed's best win rate vs SFT at KL <= the size's budget on its curve's upper
    envelope, the mean over seeds and a 95% bootstrap CI over seeds; best-of-n likewise (NaN beyond its largest n)."""
    if curves.empty:
        return pd.DataFrame(columns=["series", "model", "kl_budget", "mean", "ci_low", "ci_high", "n_seeds"])
    keep = set(counted(df)["run_dir"])
    c = curves[curves["run_dir"].isin(keep)]
    per_seed = [(s, m, seed, g["kl"].clip(lower=0), g["win_rate_vs_sft"])
                for (s, m, seed), g in c.groupby(["series", "model", "seed"])]
    if not bon.empty:
        per_seed += [("best-of-n", m, seed, g["kl"], g["win_rate_vs_sft"]) for (m, seed), g in bon.groupby(["model", "seed"])]
    budgets, rows, rng = kl_budgets(df), {}, np.random.default_rng(0)
    for series, model, _, kl, wr in per_seed:
        if model in budgets:
            rows.setdefault((series, model), []).append(frontier.value_at_kl(kl, wr, budgets[model]))
    out = []
    for (series, model), values in rows.items():
        v = np.array([x for x in values if np.isfinite(x)])
        draws = rng.choice(v, (N_BOOT, len(v))).mean(axis=1) if len(v) else np.array([np.nan])
        out.append({"series": series, "model": model, "kl_budget": budgets[model], "mean": v.mean() if len(v) else np.nan,
                    "ci_low": np.quantile(draws, 0.025), "ci_high": np.quantile(draws, 0.975), "n_seeds": len(v)})
    return pd.DataFrame(out)


def gold_peaks(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (series, model): the KL at which the seed-mean gold score peaks along training, the gold score there and
    at the end, with the end's 95% two-stage bootstrap CI (seeds, then prompts, from each run's samples.jsonl;
    collapsed runs included: over-optimisation is what this table shows), and the proxy's score at the end."""
    if curves.empty or "gold_score_mean" not in curves:
        return pd.DataFrame()
    rows = []
    for i, ((series, model), g) in enumerate(curves.groupby(["series", "model"])):
        m = g.groupby("step")[["kl", "score_mean", "gold_score_mean"]].mean()
        best = m["gold_score_mean"].idxmax()
        ci = stats.hierarchical_bootstrap([_prompt_gold(run) for run in g["run_dir"].unique()], N_BOOT, i)
        rows.append({"series": series, "model": model, "peak_step": best, "peak_kl": m.loc[best, "kl"],
                     "gold_at_peak": m.loc[best, "gold_score_mean"], "gold_at_end": m["gold_score_mean"].iloc[-1],
                     "gold_end_ci_low": ci["ci_low"], "gold_end_ci_high": ci["ci_high"],
                     "proxy_at_end": m["score_mean"].iloc[-1]})
    return pd.DataFrame(rows)


def _prompt_gold(run_dir: str) -> np.ndarray:
    """A run's mean gold score per held-out prompt, from its final samples."""
    by_prompt: dict[int, list[float]] = {}
    for r in read_jsonl(Path(run_dir) / "samples.jsonl"):
        if r.get("gold_score") is not None:
            by_prompt.setdefault(r["prompt_index"], []).append(r["gold_score"])
    return np.array([np.mean(v) for v in by_prompt.values()])


def diagnostics(df: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Per done run, the flags with their numbers: likelihood displacement (held-out chosen log-prob falls
    while the chosen-rejected margin rises, by DISPLACEMENT_NATS or more, from metrics.jsonl's probe), KL blow-up (KL_BLOWUP) and length
    drift (LENGTH_DRIFT). One row per flag."""
    rows = []
    for _, r in done(df).iterrows():
        base = {"run": Path(r["run_dir"]).name, "series": r["series"], "model": r["model"], "seed": r["seed"]}
        probe = [m for m in read_jsonl(Path(r["run_dir"]) / "metrics.jsonl") if "probe/logps_chosen" in m]
        if len(probe) >= 2:
            c0, c1 = probe[0]["probe/logps_chosen"], probe[-1]["probe/logps_chosen"]
            g0, g1 = (p["probe/logps_chosen"] - p["probe/logps_rejected"] for p in (probe[0], probe[-1]))
            if c1 <= c0 - DISPLACEMENT_NATS and g1 >= g0 + DISPLACEMENT_NATS:
                rows.append(base | {"flag": DISPLACEMENT, "detail": f"held-out chosen log-prob {c0:.1f} -> {c1:.1f} "
                                    f"nats while the margin rose {g0:.1f} -> {g1:.1f}"})
        c = curves[curves["run_dir"] == r["run_dir"]].sort_values("step") if not curves.empty else curves
        if len(c) >= 2:
            half = c[c["step"] <= c["step"].max() / 2].iloc[-1]
            end = c.iloc[-1]
            if end["kl"] > KL_BLOWUP[1] and end["kl"] > KL_BLOWUP[0] * max(half["kl"], 1e-9):
                rows.append(base | {"flag": "KL blow-up", "detail": f"KL {half['kl']:.1f} nats at step {int(half['step'])}"
                                    f" -> {end['kl']:.1f} at the end"})
        ratio = r.get("eval/response_tokens_mean", np.nan) / r.get("eval/anchor_response_tokens_mean", np.nan)
        if ratio < LENGTH_DRIFT[0] or ratio > LENGTH_DRIFT[1]:
            rows.append(base | {"flag": "length drift", "detail": f"mean response length {ratio:.2f}x the anchor's"})
    return pd.DataFrame(rows, columns=["run", "series", "model", "seed", "flag", "detail"])


def ranking_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Columns for the ranking tables per (series, model): the matched-KL win rate vs SFT (with its CI over
    seeds), the mean over seeds of the length-controlled win rate, and of pass@1 and pass@k (k samples a prompt)
    on a task whose gold reward is right or wrong."""
    m = matched_kl(df, load_curves(df), load_best_of_n(df))
    out = m.rename(columns={"mean": "win rate at matched KL", "ci_low": "matched_ci_low",
                            "ci_high": "matched_ci_high"})[["series", "model", "kl_budget", "win rate at matched KL",
                                                            "matched_ci_low", "matched_ci_high"]]
    c = counted(df)
    if "eval/lc_win_rate_vs_sft" in c:
        lc = c.groupby(["series", "model"])["eval/lc_win_rate_vs_sft"].mean().rename("LC win rate").reset_index()
        out = out.merge(lc, on=["series", "model"], how="outer")
    passes = [k for k in ("eval/pass_at_1", "eval/pass_at_k") if k in c and c[k].notna().any()]
    if passes:  # a task whose gold reward is right or wrong: the seed means of pass@1 and pass@k
        p = c.groupby(["series", "model"])[passes].mean().reset_index()
        out = out.merge(p.rename(columns={k: k.removeprefix("eval/").replace("_at_", "@") for k in passes}),
                        on=["series", "model"], how="outer")
    return out


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="", classes="runs")


def frontier_html(df: pd.DataFrame) -> str:
    """The frontier section's tables: Gao fits, matched-KL win rates (with best-of-n), where the gold score
    peaks under a proxy judge, and the per-run diagnostics."""
    curves, bon = load_curves(df), load_best_of_n(df)
    if curves.empty:
        return ""
    parts = ["<h2>Frontier fits and matched-KL win rates</h2><p>Fits of the gain in judge score over the anchor, "
             "R(d) with d = sqrt(KL): RL form d(alpha - beta log d) for each method (all its seeds, checkpoints and "
             "settings), best-of-n form d(alpha - beta d) for best-of-n (Gao et al. 2022, eq. 1-2). peak_kl: where "
             "the fit peaks (blank: no peak, or one beyond twice the largest sqrt(KL) measured: still rising).</p>"]
    f = fits(curves, bon)
    if not f.empty:
        parts.append(_table(f[["series", "model", "form", "alpha", "beta", "peak_kl", "peak_reward", "r2", "n_points"]]))
    m = matched_kl(df, curves, bon)
    if not m.empty:
        parts.append("<p>Win rate vs SFT at a matched KL budget (per size: the median final KL of the counted runs): "
                     "each seed's best point on its curve's upper envelope with KL at most the budget, then the mean "
                     "over seeds with a 95% bootstrap CI over seeds. Best-of-n is blank where the budget is beyond "
                     "its largest n.</p>" + _table(m.sort_values(["model", "mean"], ascending=[True, False])))
    peaks = gold_peaks(curves)
    if not peaks.empty:
        parts.append("<h3>Proxy vs gold</h3><p>Where the seed-mean gold score peaks along training, the gold score "
                     "at the end with its 95% two-stage bootstrap CI (seeds, then prompts; collapsed runs included), "
                     "and the proxy judge's score at the end.</p>" + _table(peaks))
    diag = diagnostics(df, curves)
    parts.append("<h3>Diagnostics</h3>" + (_table(diag.drop(columns="run")) if not diag.empty else "<p>No run flagged.</p>")
                 + f"<p>Flags: {DISPLACEMENT} (the held-out chosen log-prob falls while the margin over rejected rises, "
                 f"each by at least {DISPLACEMENT_NATS:g} nats from step 0 to the end); "
                 f"KL blow-up (KL more than {KL_BLOWUP[0]:g}x over the second half of training, ending above "
                 f"{KL_BLOWUP[1]:g} nats); length drift (final mean length outside {LENGTH_DRIFT[0]:g}-"
                 f"{LENGTH_DRIFT[1]:g}x the anchor's).</p>")
    return "".join(parts)
