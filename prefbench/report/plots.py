"""The report's figures of a runs table (``prefbench.report.build.load_runs``); each ``plot_*`` returns a Figure.

Win rates are aggregated by series (method plus any swept setting) over seeds, with collapsed runs
(``prefbench.report.stats.collapse_reasons``) drawn as x markers and left out of the means.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from prefbench.eval import metrics as em
from prefbench.io.results import read_jsonl
from prefbench.report.tables import counted, done, series_order, series_summary, sizes


def _is_collapsed(d: pd.DataFrame) -> pd.Series:
    return d["collapsed"].fillna(False).astype(bool) if "collapsed" in d else pd.Series(False, index=d.index)


def _seed_points(ax, d, x_col, y_col, color, dodge: float = 1.0):
    """Each seed as a faint point; a collapsed run as an x (not a method result)."""
    bad = _is_collapsed(d)
    ax.scatter(d.loc[~bad, x_col] * dodge, d.loc[~bad, y_col], color=color, alpha=0.35, s=18, lw=0)
    ax.scatter(d.loc[bad, x_col] * dodge, d.loc[bad, y_col], color=color, alpha=0.8, s=40, marker="x")


def _legend(ax, **kwargs) -> None:
    """A legend of what the axes labelled; none, and no matplotlib warning, where nothing was drawn."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _errorbar(ax, x, s: pd.DataFrame, label: str):
    err = np.nan_to_num(np.vstack([s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]]).astype(float))
    return ax.errorbar(x, s["mean"], yerr=err, marker="o", capsize=3, label=label)[0]


def plot_win_rate_vs_size(df: pd.DataFrame) -> plt.Figure:
    """Win rate vs model size per series: mean over seeds with its hierarchical 95% CI (seeds, then prompts)
    as error bars, every seed as a faint point and collapsed runs as x; vs SFT (left) and vs chosen (right)."""
    d = done(df)
    many = len(series_order(d)) > MANY_SERIES
    fig, axes = plt.subplots(1, 2, figsize=(14 if many else 11, 4.6 if many else 4), sharey=True)
    for ax, other in zip(axes, ["sft", "chosen"]):
        if many:  # a colour each, beyond the default cycle's ten
            ax.set_prop_cycle(color=list(plt.cm.tab20.colors) + list(plt.cm.tab20b.colors))
        col = f"eval/win_rate_vs_{other}"
        if col not in d:
            ax.set_axis_off()
            continue
        summary, names = series_summary(df, other), series_order(d)
        for i, series in enumerate(names):
            dodge = 1.04 ** (i - (len(names) - 1) / 2)  # side by side on the log axis, so bars do not overlap
            s = summary[summary["series"] == series].sort_values("n_params")
            line = _errorbar(ax, s["n_params"] * dodge, s, series)
            _seed_points(ax, d[d["series"] == series], "n_params", col, line.get_color(), dodge)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="model (parameters)",
               title=f"win rate vs {'the SFT policy' if other == 'sft' else 'dataset chosen'}")
        n = d.groupby("model")["n_params"].max().sort_values()
        ax.set_xticks(n.values, [f"{m}\n{v / 1e6:.2g}M" for m, v in n.items()])
        ax.minorticks_off()
    axes[0].set_ylabel("win rate (ties = 1/2)")
    if many:  # beside the panels, in columns, instead of over the points
        fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(0.8, 0.5), ncol=2,
                   fontsize=7)
        fig.tight_layout(rect=(0, 0, 0.8, 1))
    else:
        axes[0].legend(fontsize=8)
        fig.tight_layout()
    return fig


MANY_SERIES = 10


def plot_win_rate_vs_flops(df: pd.DataFrame) -> plt.Figure:
    """Win rate vs SFT against each run's total training FLOPs (its own training plus its init stage's):
    every seed as a faint point (x: collapsed), each (series, size) as its seed mean with the 95% CI."""
    d, summary = done(df), series_summary(df, "sft")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    flops = counted(df).groupby(["series", "model"])["cost/total_train_flops"].mean()
    for series in series_order(d):
        s = summary[summary["series"] == series].sort_values("n_params")
        x = [flops.get((series, m), np.nan) for m in s["model"]]
        line = _errorbar(ax, x, s, series)
        _seed_points(ax, d[d["series"] == series], "cost/total_train_flops", "eval/win_rate_vs_sft", line.get_color())
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="total training FLOPs per run (incl. its init stage)", ylabel="win rate vs SFT",
           title="win rate vs training compute (one line per series, points = model sizes)")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _scores_by_prompt(run_dir: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in read_jsonl(Path(run_dir) / "samples.jsonl"):
        if r.get("score") is not None:
            out.setdefault(r["prompt_index"], []).append(r["score"])
    return out


def win_rate_matrix(df: pd.DataFrame, model: str, seed=None) -> pd.DataFrame:
    """Row series' win rate over column series on ``model``: per seed, the prompt win rate between the two
    runs' samples on the prompts both share (samples.jsonl), then the mean over the seeds both have. Collapsed
    runs are left out; ``seed`` restricts to one seed."""
    d = counted(df)
    d = d[(d["model"] == model) & ((d["seed"] == seed) if seed is not None else True)]
    scores = {(r["series"], int(r["seed"])): _scores_by_prompt(r["run_dir"]) for _, r in d.iterrows()}
    names = series_order(d)
    mat = pd.DataFrame(np.nan, index=names, columns=names)
    for a, b in itertools.permutations(names, 2):
        per_seed = []
        for s in sorted({s for n, s in scores if n == a} & {s for n, s in scores if n == b}):
            sa, sb = scores[a, s], scores[b, s]
            shared = sorted(set(sa) & set(sb))
            if shared:
                per_seed.append(em.prompt_win_rates([sa[p] for p in shared], [sb[p] for p in shared]).mean())
        if per_seed:
            mat.loc[a, b] = float(np.mean(per_seed))
    return mat


def plot_win_rate_matrix(df: pd.DataFrame) -> plt.Figure:
    models = sizes(done(df))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        mat = win_rate_matrix(df, model)
        n_seeds = counted(df)[lambda d: d["model"] == model]["seed"].nunique()
        im = ax.imshow(mat.values, vmin=0, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(mat)), mat.columns, rotation=45)
        ax.set_yticks(range(len(mat)), mat.index)
        for (i, j), v in np.ndenumerate(mat.values):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"{model}: row beats column\n(mean over {n_seeds} seed{'s' * (n_seeds != 1)})", fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return fig


def plot_reward_distributions(df: pd.DataFrame) -> plt.Figure:
    """Judge-score distribution of every series' samples, one panel per size (ORPO Fig. 5 style)."""
    d = done(df)
    models = sizes(d)
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.6), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        g = d[d["model"] == model]
        values = {series: [s for r in g[g["series"] == series]["run_dir"] for v in _scores_by_prompt(r).values()
                           for s in v] for series in series_order(g)}
        pooled = [v for vals in values.values() for v in vals]
        edges = np.histogram_bin_edges(pooled, bins=30) if pooled else 30  # one binning for every series
        for series, vals in values.items():
            if vals:
                ax.hist(vals, bins=edges, histtype="step", density=True, label=series, lw=1.5)
        ax.set(title=model, xlabel="judge score")
    axes[0][0].set_ylabel("density")
    _legend(axes[0][0])
    fig.tight_layout()
    return fig


def plot_logp_dynamics(df: pd.DataFrame) -> plt.Figure:
    """Held-out log p(chosen) (solid) and log p(rejected) (dashed) during training, one panel per series."""
    d = done(df)
    names = series_order(d)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False, sharey=True)
    models = sizes(d)  # sizes in shades of grey, so they are not read as the methods' colours
    colors = {m: str(0.65 * i / max(len(models) - 1, 1)) for i, m in enumerate(reversed(models))}
    for ax, series in zip(axes[0], names):
        for _, run in d[d["series"] == series].iterrows():
            rows = [r for r in read_jsonl(Path(run["run_dir"]) / "metrics.jsonl") if "probe/logps_chosen" in r]
            if rows:
                steps = [r["step"] for r in rows]
                c = colors.get(run["model"])
                ax.plot(steps, [r["probe/logps_chosen"] for r in rows], color=c, label=run["model"])
                ax.plot(steps, [r["probe/logps_rejected"] for r in rows], color=c, ls="--")
        ax.set(title=series, xlabel="step")
    axes[0][0].set_ylabel("summed log-prob (held-out)")
    _legend(axes[0][0], title="solid chosen, dashed rejected", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    return fig


def plot_reward_kl(df: pd.DataFrame) -> plt.Figure:
    """Mean judge score vs KL(pi || pi_SFT), one point per run (DPO Fig. 2 style; a beta sweep traces it).
    Collapsed runs are drawn as x."""
    d = done(df)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    rank = {m: i for i, m in enumerate(sizes(d))}
    for method in dict.fromkeys(m.split(" [")[0] for m in series_order(d)):  # one colour per method
        g = d[d["method"] == method]
        bad = _is_collapsed(g)
        dots = ax.scatter(g.loc[~bad, "eval/kl"], g.loc[~bad, "eval/score_mean"], label=method,
                          s=18 + 30 * np.array([rank.get(m, 0) for m in g.loc[~bad, "model"]]))
        ax.scatter(g.loc[bad, "eval/kl"], g.loc[bad, "eval/score_mean"], marker="x", color=dots.get_facecolor()[:1])
        varying = [c for c in g.columns if c.startswith("method.") and g[c].nunique() > 1]
        for _, r in g.iterrows():  # label points only by the hyper-parameters that vary (a beta sweep)
            if varying:
                label = ",".join(f"{c.removeprefix('method.')}={r[c]:g}" for c in varying)
                ax.annotate(label, (r["eval/kl"], r["eval/score_mean"]), fontsize=7, alpha=0.8)
    ax.set(xlabel="KL(pi || pi_SFT), nats per sample", ylabel="mean judge score",
           title="reward vs KL frontier (marker size = model size, x = collapsed)")
    methods = ax.legend(fontsize=8, loc="upper left", title="method", title_fontsize=8)
    ax.add_artist(methods)
    ax.legend([ax.scatter([], [], s=18 + 30 * i, color="grey") for i in rank.values()], list(rank), fontsize=8,
              loc="lower right", title="model size", title_fontsize=8)
    fig.tight_layout()
    return fig


def _bars(df: pd.DataFrame, columns: dict[str, str], title: str) -> plt.Figure:
    d = done(df)
    models, names = sizes(d), series_order(d)
    columns = {c: label for c, label in columns.items() if c in d and d[c].notna().any()} or columns  # no empty panels
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    width = 0.8 / max(len(names), 1)
    for ax, (col, label) in zip(axes[0], columns.items()):
        if col not in d:
            continue
        for i, series in enumerate(names):
            g = d[d["series"] == series].groupby("model")[col].mean()
            ax.bar(np.arange(len(models)) + i * width, [g.get(s, np.nan) for s in models], width, label=series)
        ax.set_xticks(np.arange(len(models)) + width * (len(names) - 1) / 2, models)
        ax.set_title(label, fontsize=10)
    drawn = [ax for ax in axes[0] if ax.get_legend_handles_labels()[0]]
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    if drawn:  # below the panels, where it covers no bar
        fig.legend(*drawn[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(names), 6), fontsize=8)
    return fig


def plot_diversity(df: pd.DataFrame) -> plt.Figure:
    return _bars(df, {"eval/pid": "PID: within-prompt cosine (lower = more diverse)",
                      "eval/aid": "AID: across-prompt cosine (lower = more diverse)",
                      "eval/distinct_1": "distinct-1 (higher = more diverse)",
                      "eval/distinct_2": "distinct-2 (higher = more diverse)"}, "lexical diversity")


def plot_reward_margins(df: pd.DataFrame) -> plt.Figure:
    return _bars(df, {"eval/reward_margin": "implicit reward margin (held-out pairs)",
                      "eval/reward_accuracy": "reward accuracy (margin > 0)"}, "implicit reward on held-out pairs")


def plot_compute(df: pd.DataFrame) -> plt.Figure:
    return _bars(df, {"cost/train_seconds": "training wall seconds", "cost/train_tokens_per_s": "training tokens/s",
                      "cost/peak_memory_mb": "peak memory (MiB)", "wall_seconds": "job wall seconds (train+eval)"},
                 "compute cost")


PLOTS = {  # name: (plot, title, caption, the column it needs beyond the basics or None)
    "win_rate_vs_size": (plot_win_rate_vs_size, "Win rate vs model size",
                         "Each series' samples against its seed's SFT policy (left) and the dataset's chosen response "
                         "(right) on the same held-out prompts, judged by the configured judge; ties count 1/2. "
                         "Dots with bars: mean over seeds with the 95% two-stage bootstrap CI (seeds, then prompts); "
                         "faint points: the individual seeds; x: collapsed runs, left out of the mean.", None),
    "win_rate_vs_flops": (plot_win_rate_vs_flops, "Win rate vs training compute",
                          "Win rate vs SFT against each run's total training FLOPs, its own training plus its init "
                          "stage's (a DPO run counts the SFT stage it starts from). Bars: 95% CI over seeds and "
                          "prompts.", "cost/total_train_flops"),
    "win_rate_matrix": (plot_win_rate_matrix, "Pairwise win rates",
                        "Cell (row, column): how often the row series' sample beats the column series' on the same "
                        "prompt, per model size, per seed and then averaged over the seeds both have (collapsed "
                        "runs left out).", None),
    "reward_distributions": (plot_reward_distributions, "Judge-score distributions",
                             "All samples of each series, per size (ORPO Fig. 5). Mass to the right = higher reward.",
                             None),
    "logp_dynamics": (plot_logp_dynamics, "Log-prob dynamics during training",
                      "Summed log-prob of held-out chosen (solid) and rejected (dashed) completions. A growing gap = "
                      "the method separates them.", None),
    "reward_kl": (plot_reward_kl, "Reward vs KL frontier",
                  "Mean judge score against KL from the SFT policy, estimated on each run's own samples. Up and "
                  "to the left is better; a beta sweep (sweep=beta) traces each method's frontier. x: collapsed.",
                  None),
    "reward_margins": (plot_reward_margins, "Implicit reward margins",
                       "beta * [(log pi - log pi_SFT)(chosen) - (log pi - log pi_SFT)(rejected)] on the held-out "
                       "pairs, mean per series and size (one meaning for every method: the SFT anchor, "
                       "eval.beta = 0.1), and the share of pairs it ranks right.", "eval/reward_margin"),
    "diversity": (plot_diversity, "Lexical diversity",
                  "PID/AID: mean pairwise cosine similarity of MiniLM embeddings within a prompt's samples / across "
                  "prompts (ORPO section 6.4), lower = more diverse; distinct-n, higher = more diverse.", None),
    "compute": (plot_compute, "Compute cost", "Per job, excluding the shared base and SFT stages.", None),
}
