"""The report's frontier figures (tables and statistics: prefbench.report.frontier_tables); each ``plot_*`` returns a
Figure, and FRONTIER_PLOTS registers them as prefbench.report.plots.PLOTS does."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from prefbench.eval import frontier
from prefbench.io.results import read_jsonl
from prefbench.report.frontier_tables import fits, load_best_of_n, load_curves
from prefbench.report.tables import done, series_order, sizes


def _envelope(ax, x, y, **kw):
    fx, fy = frontier.pareto_front(np.asarray(x, float) ** 2, np.asarray(y, float))
    ax.plot(np.sqrt(fx), fy, **kw)


def plot_frontier(df: pd.DataFrame) -> plt.Figure:
    """Judge score vs sqrt(KL to the anchor), one panel per size: each method's seed-mean curve points (its
    upper envelope drawn, each seed's points faint), its Gao RL-form fit (dotted), and best-of-n (black)."""
    curves, bon = load_curves(df), load_best_of_n(df)
    fit = fits(curves, bon)
    models = sizes(done(df))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.3), squeeze=False)
    for ax, model in zip(axes[0], models):
        c = curves[curves["model"] == model] if not curves.empty else curves
        anchor = float(done(df)[done(df)["model"] == model]["eval/anchor_score_mean"].mean())
        for i, method in enumerate(dict.fromkeys(s.split(" [")[0] for s in series_order(c)) if not c.empty else []):
            g, color = c[(c["method"] == method) & ~c["collapsed"].fillna(False).astype(bool)], f"C{i}"
            mean = g.groupby(["series", "step"])[["d", "score_mean"]].mean()
            ax.scatter(g["d"], g["score_mean"], s=8, alpha=0.25, color=color, lw=0)
            ax.scatter(mean["d"], mean["score_mean"], s=22, color=color, label=method)
            _envelope(ax, mean["d"], mean["score_mean"], color=color, lw=1.5)
            _fit_line(ax, fit, method, model, anchor, mean["d"].max(), color)
        b = bon[bon["model"] == model] if not bon.empty else bon
        if not b.empty:
            m = b.groupby("n")[["d", "score_mean"]].mean()
            ax.plot(m["d"], m["score_mean"], "k--", marker=".", lw=1.2, label="best-of-n (anchor)")
            for n, r in m.iterrows():
                if n in (1, 4, 16, 64):
                    ax.annotate(f"n={n}", (r["d"], r["score_mean"]), fontsize=7, xytext=(2, -9), textcoords="offset points")
            _fit_line(ax, fit, "best-of-n", model, anchor, m["d"].max(), "k")
        ax.axhline(anchor, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="sqrt(KL(pi || pi_SFT)), sqrt(nats)", ylabel="mean judge score", title=model)
        ax.legend(fontsize=7)
    fig.suptitle("reward vs KL along training (dotted: Gao et al. fits; grey: the SFT anchor's score)")
    fig.tight_layout()
    return fig


def _fit_line(ax, fit: pd.DataFrame, series: str, model: str, anchor: float, d_max: float, color) -> None:
    row = fit[(fit["series"] == series) & (fit["model"] == model)] if not fit.empty else fit
    if row.empty or not np.isfinite(row.iloc[0]["alpha"]) or not np.isfinite(d_max):
        return
    d = np.linspace(0, d_max * 1.05, 60)
    ax.plot(d, anchor + frontier.gao_curve(row.iloc[0].to_dict(), d), ls=":", color=color, lw=1)


def _samples(run_dir: str) -> list[dict]:
    return read_jsonl(Path(run_dir) / "samples.jsonl")


def plot_length(df: pd.DataFrame) -> plt.Figure:
    """Top: response-length distribution per series (all seeds' samples), per size. Bottom: mean response length
    vs KL along training (seed means per step)."""
    d, curves = done(df), load_curves(df)
    models = sizes(d)
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 6.4), squeeze=False)
    for j, model in enumerate(models):
        g = d[d["model"] == model]
        for series in series_order(g):
            lengths = [s["response_tokens"] for r in g[g["series"] == series]["run_dir"] for s in _samples(r)
                       if "response_tokens" in s]
            if lengths:
                axes[0][j].hist(lengths, bins=range(0, max(lengths) + 2, 2), histtype="step", density=True, label=series)
        axes[0][j].set(title=f"{model}: response length", xlabel="tokens", ylabel="density")
        c = curves[curves["model"] == model] if not curves.empty else curves
        for series in series_order(c) if not c.empty else []:
            m = c[c["series"] == series].groupby("step")[["kl", "response_tokens_mean"]].mean()
            axes[1][j].plot(m["kl"], m["response_tokens_mean"], marker=".", label=series)
        anchor_len = g["eval/anchor_response_tokens_mean"].mean() if "eval/anchor_response_tokens_mean" in g else np.nan
        axes[1][j].axhline(anchor_len, color="grey", lw=0.8, ls=":")
        axes[1][j].set(title=f"{model}: length vs KL along training", xlabel="KL(pi || pi_SFT), nats",
                       ylabel="mean response tokens")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_proxy_gold(df: pd.DataFrame) -> plt.Figure:
    """With a proxy judge on a built-in task: the proxy's score (solid) and the gold score (dashed) of the same
    samples vs sqrt(KL), seed means per step, and best-of-n by the proxy (black). The gap is over-optimisation."""
    curves, bon = load_curves(df), load_best_of_n(df)
    models = sizes(done(df))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        c = curves[curves["model"] == model]
        for series in series_order(c):
            m = c[c["series"] == series].groupby("step")[["d", "score_mean", "gold_score_mean"]].mean()
            line = ax.plot(m["d"], m["score_mean"], marker=".", label=f"{series} proxy")[0]
            ax.plot(m["d"], m["gold_score_mean"], ls="--", marker=".", color=line.get_color(), label=f"{series} gold")
        b = bon[bon["model"] == model] if not bon.empty and "gold_score_mean" in bon else pd.DataFrame()
        if not b.empty:
            m = b.groupby("n")[["d", "score_mean", "gold_score_mean"]].mean()
            ax.plot(m["d"], m["score_mean"], "k-", lw=1, label="best-of-n proxy")
            ax.plot(m["d"], m["gold_score_mean"], "k--", lw=1, label="best-of-n gold")
        ax.set(xlabel="sqrt(KL(pi || pi_SFT))", ylabel="score", title=f"{model}: proxy vs gold")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


FRONTIER_PLOTS = {  # as prefbench.report.plots.PLOTS
    "frontier": (plot_frontier, "Reward vs KL along training, with best-of-n",
                 "Each method's runs evaluated at several steps of training (eval.curve.fractions) and at the end: "
                 "judge score against sqrt(KL to the SFT anchor). Large dots: seed means per step (line: their "
                 "upper envelope); faint: each seed; dotted: Gao et al.'s fit; black dashed: best-of-n from the "
                 "anchor (n = 1 ... eval.best_of_n, analytic KL log n - (n-1)/n). Up and to the left is better.",
                 "eval/curve_points"),
    "length": (plot_length, "Response length",
               "Top: the distribution of response lengths over all samples of each series. Bottom: mean response "
               "length against KL along training; grey: the anchor's mean length.", "eval/curve_points"),
    "proxy_gold": (plot_proxy_gold, "Proxy reward vs gold reward",
                   "With a learned judge on a built-in task, the proxy's score and the gold score of the same samples "
                   "against sqrt(KL); where gold falls while the proxy rises, the policy over-optimises the proxy.",
                   "eval/gold_score_mean"),
}
