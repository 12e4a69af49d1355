"""The comparison report of a sweep folder: one pandas table of all runs, plots, and index.html.

The same functions serve notebooks/compare.ipynb: ``load_runs``, then any ``plot_*`` (each returns a
matplotlib Figure), or ``build_report`` for everything at once.
"""
from __future__ import annotations

import html
import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench import eval_metrics as em
from bench.errors import UserError
from bench.faults import kill_point
from bench.results import read_json, read_jsonl, write_atomic
from bench.sweep import run_rows, status_line, swept_keys

METHOD_ORDER = ["sft", "dpo", "ipo", "kto", "orpo"]


def _hyper(row: dict) -> dict:
    params = {k.removeprefix("config.method."): v for k, v in row.items()
              if k.startswith("config.method.") and k != "config.method.name"}
    return {"hyper": ",".join(f"{k}={v}" for k, v in params.items()), **{f"method.{k}": v for k, v in params.items()}}


def load_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job the sweep asked for (``sweep.json``) and per run folder, whatever its status.
    ``series`` is the method, plus the values of any swept config key other than method, model and seed,
    so runs of different settings are never averaged together; ``df.attrs["swept"]`` lists those keys."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: no such sweep folder")
    rows = run_rows(sweep_dir)
    swept = swept_keys(rows)
    for row in rows:
        row |= _hyper(row)
        variant = ",".join(f"{k}={row.get('config.' + k)}" for k in swept)
        row["series"] = f"{row.get('method')} [{variant}]" if variant else row.get("method")
    df = pd.DataFrame(rows)
    df.attrs["swept"] = swept
    return df


def _done(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].isin(["done", "partial"])] if "status" in df else df


def _methods(df) -> list[str]:
    """The series of ``df`` (methods, split by swept settings), in METHOD_ORDER."""
    present = df.dropna(subset=["series"]).drop_duplicates("series")
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(present["series"], key=lambda s: (rank.get(s.split(" [")[0], len(rank)), s))


def _sizes(df) -> list[str]:
    """Model names ordered by parameter count."""
    return list(df.groupby("model")["n_params"].max().sort_values().index)


def plot_win_rate_vs_size(df: pd.DataFrame) -> plt.Figure:
    """Win rate (judge) vs model size per method, with 95% bootstrap CI bands; vs SFT and vs chosen."""
    d = _done(df)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, other in zip(axes, ["sft", "chosen"]):
        col = f"eval/win_rate_vs_{other}"
        if col not in d:
            continue
        for method in _methods(d):
            g = d[d["series"] == method].groupby("model").agg(
                n=("n_params", "max"), m=(col, "mean"), lo=(f"{col}_ci_low", "mean"), hi=(f"{col}_ci_high", "mean"))
            g = g.sort_values("n")
            line, = ax.plot(g["n"], g["m"], marker="o", label=method)
            ax.fill_between(g["n"], g["lo"], g["hi"], color=line.get_color(), alpha=0.15)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="model (parameters)",
               title=f"win rate vs {'the SFT policy' if other == 'sft' else 'dataset chosen'}")
        sizes = d.groupby("model")["n_params"].max().sort_values()
        ax.set_xticks(sizes.values, [f"{m}\n{n / 1e6:.2g}M" for m, n in sizes.items()])
        ax.minorticks_off()
    axes[0].set_ylabel("win rate (ties = 1/2)")
    axes[0].legend()
    fig.tight_layout()
    return fig


def _scores_by_prompt(run_dir: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in read_jsonl(Path(run_dir) / "samples.jsonl"):
        if r.get("score") is not None:
            out.setdefault(r["prompt_index"], []).append(r["score"])
    return out


def win_rate_matrix(df: pd.DataFrame, model: str, seed=None) -> pd.DataFrame:
    """Row method's win rate over column method on the prompts both runs share (from samples.jsonl)."""
    d = _done(df)
    d = d[(d["model"] == model) & (d["seed"] == (seed if seed is not None else d["seed"].min()))]
    d = d.drop_duplicates("series")
    scores = {m: _scores_by_prompt(r) for m, r in zip(d["series"], d["run_dir"])}
    names = [m for m in _methods(d)]
    mat = pd.DataFrame(np.nan, index=names, columns=names)
    for a, b in itertools.product(names, names):
        shared = sorted(set(scores[a]) & set(scores[b]))
        if shared and a != b:
            mat.loc[a, b] = em.prompt_win_rates([scores[a][p] for p in shared], [scores[b][p] for p in shared]).mean()
    return mat


def plot_win_rate_matrix(df: pd.DataFrame) -> plt.Figure:
    sizes = _sizes(_done(df))
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.8), squeeze=False)
    for ax, model in zip(axes[0], sizes):
        mat = win_rate_matrix(df, model)
        im = ax.imshow(mat.values, vmin=0, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(mat)), mat.columns, rotation=45)
        ax.set_yticks(range(len(mat)), mat.index)
        for (i, j), v in np.ndenumerate(mat.values):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"{model}: row beats column")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return fig


def plot_reward_distributions(df: pd.DataFrame) -> plt.Figure:
    """Judge-score distribution of every method's samples, one panel per size (ORPO Fig. 5 style)."""
    d = _done(df)
    sizes = _sizes(d)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.6), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], sizes):
        g = d[d["model"] == model]
        for method in _methods(g):
            vals = [s for r in g[g["series"] == method]["run_dir"] for v in _scores_by_prompt(r).values() for s in v]
            if vals:
                ax.hist(vals, bins=30, histtype="step", density=True, label=method, lw=1.5)
        ax.set(title=model, xlabel="judge score")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend()
    fig.tight_layout()
    return fig


def plot_logp_dynamics(df: pd.DataFrame) -> plt.Figure:
    """Held-out log p(chosen) (solid) and log p(rejected) (dashed) during training, one panel per method."""
    d = _done(df)
    methods = _methods(d)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False, sharey=True)
    colors = dict(zip(_sizes(d), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, method in zip(axes[0], methods):
        for _, run in d[d["series"] == method].iterrows():
            rows = [r for r in read_jsonl(Path(run["run_dir"]) / "metrics.jsonl") if "probe/logps_chosen" in r]
            if rows:
                steps = [r["step"] for r in rows]
                c = colors.get(run["model"])
                ax.plot(steps, [r["probe/logps_chosen"] for r in rows], color=c, label=run["model"])
                ax.plot(steps, [r["probe/logps_rejected"] for r in rows], color=c, ls="--")
        ax.set(title=method, xlabel="step")
    axes[0][0].set_ylabel("summed log-prob (held-out)")
    axes[0][0].legend(title="solid chosen, dashed rejected", fontsize=7, title_fontsize=7)
    fig.tight_layout()
    return fig


def plot_reward_kl(df: pd.DataFrame) -> plt.Figure:
    """Mean judge score vs KL(pi || pi_SFT), one point per run (DPO Fig. 2 style; a beta sweep traces it)."""
    d = _done(df)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method in dict.fromkeys(m.split(" [")[0] for m in _methods(d)):  # one colour per method
        g = d[d["method"] == method]
        ax.scatter(g["eval/kl"], g["eval/score_mean"], label=method, s=18 + 30 * _size_rank(d, g))
        varying = [c for c in g.columns if c.startswith("method.") and g[c].nunique() > 1]
        for _, r in g.iterrows():  # label points only by the hyper-parameters that vary (a beta sweep)
            if varying:
                label = ",".join(f"{c.removeprefix('method.')}={r[c]:g}" for c in varying)
                ax.annotate(label, (r["eval/kl"], r["eval/score_mean"]), fontsize=7, alpha=0.8)
    ax.set(xlabel="KL(pi || pi_SFT), nats per sample", ylabel="mean judge score",
           title="reward vs KL frontier (marker size = model size)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _size_rank(d, g) -> np.ndarray:
    order = {m: i for i, m in enumerate(_sizes(d))}
    return np.array([order.get(m, 0) for m in g["model"]])


def _bars(df: pd.DataFrame, columns: dict[str, str], title: str) -> plt.Figure:
    d = _done(df)
    sizes, methods = _sizes(d), _methods(d)
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    width = 0.8 / max(len(methods), 1)
    for ax, (col, label) in zip(axes[0], columns.items()):
        if col not in d:
            continue
        for i, method in enumerate(methods):
            g = d[d["series"] == method].groupby("model")[col].mean()
            ax.bar(np.arange(len(sizes)) + i * width, [g.get(s, np.nan) for s in sizes], width, label=method)
        ax.set_xticks(np.arange(len(sizes)) + width * (len(methods) - 1) / 2, sizes)
        ax.set_title(label, fontsize=10)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_diversity(df: pd.DataFrame) -> plt.Figure:
    return _bars(df, {"eval/pid": "PID: within-prompt cosine (lower = more diverse)",
                      "eval/aid": "AID: across-prompt cosine (lower = more diverse)",
                      "eval/distinct_1": "distinct-1 (higher = more diverse)",
                      "eval/distinct_2": "distinct-2 (higher = more diverse)"}, "lexical diversity")


def plot_compute(df: pd.DataFrame) -> plt.Figure:
    return _bars(df, {"cost/train_seconds": "training wall seconds", "cost/train_tokens_per_s": "training tokens/s",
                      "cost/peak_memory_mb": "peak memory (MiB)", "wall_seconds": "job wall seconds (train+eval)"},
                 "compute cost")


PLOTS = {
    "win_rate_vs_size": (plot_win_rate_vs_size, "Win rate vs model size",
                         "Each method's samples against the SFT policy's (left) and the dataset's chosen response "
                         "(right) on the same held-out prompts, judged by the configured judge; ties count 1/2. "
                         "Bands: 95% bootstrap CI over prompts. Above 0.5 on the left = better than SFT."),
    "win_rate_matrix": (plot_win_rate_matrix, "Pairwise win rates",
                        "Cell (row, column): how often the row method's sample beats the column method's on the "
                        "same prompt, per model size."),
    "reward_distributions": (plot_reward_distributions, "Judge-score distributions",
                             "All samples of each method, per size (ORPO Fig. 5). Mass to the right = higher reward."),
    "logp_dynamics": (plot_logp_dynamics, "Log-prob dynamics during training",
                      "Summed log-prob of held-out chosen (solid) and rejected (dashed) completions. A growing gap = "
                      "the method separates them; SFT tends to raise both (ORPO's observation)."),
    "reward_kl": (plot_reward_kl, "Reward vs KL frontier",
                  "Mean judge score against KL from the SFT policy, estimated on each run's own samples. Up and "
                  "to the left is better; a beta sweep (sweep=beta) traces each method's frontier."),
    "diversity": (plot_diversity, "Lexical diversity",
                  "PID/AID: mean pairwise cosine similarity of MiniLM embeddings within a prompt's samples / across "
                  "prompts (ORPO section 6.4), lower = more diverse; distinct-n, higher = more diverse."),
    "compute": (plot_compute, "Compute cost", "Per job, excluding the shared base and SFT stages."),
}

def load_perf(folder: str | Path) -> pd.DataFrame:
    """One row per (``prefbench perf`` JSON, method), from ``folder`` and its ``perf/`` subfolder."""
    folder = Path(folder)
    rows = []
    for path in sorted([*folder.glob("perf-*.json"), *folder.glob("perf/perf-*.json")]):
        data = read_json(path, None)
        if not isinstance(data, dict) or "table" not in data:
            continue
        cfg, env = data.get("config", {}), data.get("environment", {})
        label = f"{cfg.get('data', '?')} data, {env.get('device', 'cpu')}"
        rows += [{"file": path.name, "setting": label, **{f"config.{k}": v for k, v in cfg.items() if k != "methods"},
                  **r} for r in data["table"]]
    return pd.DataFrame(rows)


def plot_perf(perf: pd.DataFrame) -> plt.Figure:
    """Speed and peak-memory ratios prefbench/TRL per method, one bar per perf run."""
    methods = [m for m in METHOD_ORDER if m in set(perf["method"])] + sorted(set(perf["method"]) - set(METHOD_ORDER))
    runs = list(dict.fromkeys(zip(perf["file"], perf["setting"])))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(runs)
    for ax, col, title, line in ((axes[0], "speed_ratio", "tokens/s, prefbench / TRL (higher = faster)", 1.25),
                                 (axes[1], "memory_ratio", "peak memory, prefbench / TRL (lower = less)", 1.0)):
        for i, (file, setting) in enumerate(runs):
            g = perf[perf["file"] == file].set_index("method")[col]
            ax.bar(np.arange(len(methods)) + i * width, [g.get(m, np.nan) for m in methods], width, label=setting)
        ax.axhline(1.0, color="k", lw=0.8)
        if line != 1.0:
            ax.axhline(line, color="k", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(methods)) + width * (len(runs) - 1) / 2, methods)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle("prefbench vs TRL on identical inputs (prefbench perf)")
    fig.tight_layout()
    return fig


PERF_CAPTION = ("Each bar: the median over alternating repetitions of one `prefbench perf` run (same model, rows, "
                "order, batch, optimizer and gradient checkpointing on both sides). Dashed: the 1.25x speed target.")

PERF_COLUMNS = ["setting", "method", "trl_trainer", "prefbench_tokens_per_s", "trl_tokens_per_s", "speed_ratio",
                "prefbench_peak_mb", "trl_peak_mb", "memory_ratio", "prefbench_final_loss", "trl_final_loss",
                "step_cost_vs_orpo"]
TABLE_COLUMNS = ["method", "series", "model", "seed", "hyper", "status", "n_params", "eval/win_rate_vs_sft",
                 "eval/win_rate_vs_chosen", "eval/score_mean", "eval/reward_margin", "eval/reward_accuracy",
                 "eval/kl", "eval/pid", "eval/distinct_2", "cost/train_tokens_per_s", "wall_seconds", "error"]


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="", classes="runs")


def build_report(sweep_dir: str | Path) -> Path:
    """Write runs.csv, runs.parquet, report/*.png and report/index.html; returns index.html's path.
    ``prefbench perf`` results in the folder (or its perf/ subfolder) get a section and perf.csv."""
    sweep_dir = Path(sweep_dir)
    df, perf = load_runs(sweep_dir), load_perf(sweep_dir)
    if df.empty and perf.empty:
        raise UserError(f"{sweep_dir}: no runs and no prefbench perf results found")
    out = sweep_dir / "report"
    out.mkdir(exist_ok=True)
    sections, table, status = [], "", ""
    figures = []  # (file name, plot function, its table, title, caption)
    if not df.empty and not _done(df).empty and "n_params" in df:
        figures += [(name, plot, df, title, caption) for name, (plot, title, caption) in PLOTS.items()]
    if not perf.empty:
        figures.append(("perf", plot_perf, perf, "prefbench vs TRL", PERF_CAPTION))
        write_atomic(sweep_dir / "perf.csv", perf.to_csv(index=False))
    for name, plot, data, title, caption in figures:
        fig = plot(data)
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        sections.append(f'<h2>{title}</h2><p>{html.escape(caption)}</p><img src="{name}.png" alt="{title}">')
        kill_point("report")
    if not perf.empty:
        sections.append(_html_table(perf[[c for c in PERF_COLUMNS if c in perf]]))
    if not df.empty:
        write_atomic(sweep_dir / "runs.csv", df.to_csv(index=False))
        write_atomic(sweep_dir / "runs.parquet", df.to_parquet(index=False))
        cols = [c for c in TABLE_COLUMNS if c in df]
        table = "<h2>All runs</h2><p>Full table: runs.csv / runs.parquet beside this folder.</p>" + _html_table(
            df[cols].sort_values(["model", "series"], key=lambda s: s.astype(str)))
        line = status_line(list(df["status"]))
        status = (f"<p>{line}</p>" if line.startswith("All ") else
                  f"<p class='warn'>{html.escape(line)} They are listed in the table with their error.</p>")
        swept = df.attrs.get("swept", [])
        status += (f"<p>Swept besides method, model and seed: {html.escape(', '.join(swept))}. Runs are averaged "
                   f"over seeds only; each combination of these values is its own series.</p>" if swept else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>prefbench: {html.escape(sweep_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}}img{{max-width:100%}}
table.runs{{border-collapse:collapse;font-size:12px}}table.runs td,table.runs th{{border:1px solid #ccc;padding:2px 5px}}
.warn{{color:#a00;font-weight:bold}}</style></head><body>
<h1>prefbench report: {html.escape(sweep_dir.name)}</h1>{status}
{''.join(sections)}
{table}</body></html>"""
    write_atomic(out / "index.html", page)
    return out / "index.html"
