"""The report's statistics over a runs table (``prefbench.report.build.load_runs``): which runs count, each
(series, model)'s mean over seeds with its hierarchical 95% CI, pairwise comparisons, ranking tables and
the conclusions in words. The methods are in ``prefbench.report.stats``; this module reads the run folders.

A run's per-prompt values come from its ``prompts.jsonl`` (written by ``prefbench.eval.evaluate``). Runs without one
(made before it existed) fall back to their summary's seed-level value: with several seeds the interval is
a bootstrap over seeds only, with one seed it is the run's own interval over prompts; ``ci_kind`` says which.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from prefbench.io.results import read_json, read_jsonl
from prefbench.methods import order_key
from prefbench.report import stats

OTHERS = {"sft": "win_vs_sft", "chosen": "win_vs_chosen"}  # the summary column is eval/win_rate_vs_<other>
SEED_ONLY = "seeds only (no prompts.jsonl)"
PROMPTS_ONLY = "prompts only (one seed)"
N_BOOT = 2000


def done(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].isin(["done", "partial"])] if "status" in df else df


def counted(df: pd.DataFrame) -> pd.DataFrame:
    """Done runs that are not collapsed: the runs whose win rates enter the seed means."""
    d = done(df)
    return d[~d["collapsed"].fillna(False).astype(bool)] if "collapsed" in d else d


def series_order(df) -> list[str]:
    """The series of ``df`` (methods, split by swept settings), their methods in the methods package's order
    (``prefbench.methods.order_key``: by family, then by name)."""
    present = df.dropna(subset=["series"]).drop_duplicates("series")
    return sorted(present["series"], key=lambda s: (order_key(s.split(" [")[0]), s))


def sizes(df) -> list[str]:
    """Model names ordered by parameter count."""
    return list(df.groupby("model")["n_params"].max().sort_values().index)


def _prompt_values(run_dir: str, key: str) -> dict[int, float]:
    return {r["prompt_index"]: float(r[key]) for r in read_jsonl(Path(run_dir) / "prompts.jsonl")
            if r.get(key) is not None}


def seed_values(df: pd.DataFrame, other: str = "sft") -> tuple[dict, dict]:
    """``{(series, model): {seed: {prompt_index: win fraction}}}`` over the counted runs, and each key's
    ci_kind. Without prompts.jsonl for every run of a key, each seed holds its summary value (prompt -1)."""
    col, values, kinds = f"eval/win_rate_vs_{other}", {}, {}
    d = counted(df)
    if col not in d:
        return values, kinds
    for (series, model), g in d.dropna(subset=[col]).groupby(["series", "model"]):
        per_seed = {int(r["seed"]): _prompt_values(r["run_dir"], OTHERS[other]) for _, r in g.iterrows()}
        if all(per_seed.values()):
            kinds[series, model] = stats.HIERARCHICAL if len(per_seed) > 1 else PROMPTS_ONLY
        else:
            per_seed = {int(r["seed"]): {-1: float(r[col])} for _, r in g.iterrows()}
            kinds[series, model] = SEED_ONLY if len(per_seed) > 1 else PROMPTS_ONLY
        values[series, model] = per_seed
    return values, kinds


def series_summary(df: pd.DataFrame, other: str = "sft", n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per (series, model): mean over seeds of the win rate vs ``other`` and its 95% CI (``ci_kind``), the
    seeds counted and the collapsed runs excluded."""
    values, kinds = seed_values(df, other)
    d, col, rows = done(df), f"eval/win_rate_vs_{other}", []
    for i, ((series, model), per_seed) in enumerate(sorted(values.items())):
        g = d[(d["series"] == series) & (d["model"] == model)]
        if kinds[series, model] == PROMPTS_ONLY and -1 in next(iter(per_seed.values())):
            run = g[g["seed"] == next(iter(per_seed))].iloc[0]  # one seed, no prompts: its own prompt CI
            ci = {"mean": float(run[col]), "ci_low": run.get(f"{col}_ci_low"), "ci_high": run.get(f"{col}_ci_high")}
        else:
            ci = stats.hierarchical_bootstrap([np.array(list(v.values())) for v in per_seed.values()], n_boot, i)
        rows.append({"series": series, "model": model, "n_params": g["n_params"].max(), "n_seeds": len(per_seed),
                     "n_collapsed": int(g["collapsed"].sum()) if "collapsed" in g else 0, "mean": ci["mean"],
                     "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "ci_kind": kinds[series, model]})
    return pd.DataFrame(rows, columns=["series", "model", "n_params", "n_seeds", "n_collapsed", "mean", "ci_low",
                                       "ci_high", "ci_kind"])


def pairwise(df: pd.DataFrame, other: str = "sft", n_boot: int = N_BOOT) -> pd.DataFrame:
    """``stats.pairwise_table`` of the win rate vs ``other`` for the series of each model (column ``model``)."""
    values, _ = seed_values(df, other)
    tables = []
    for model in sorted({m for _, m in values}):
        per_series = {s: v for (s, m), v in values.items() if m == model and _resamplable(v)}
        tables.append(stats.pairwise_table(per_series, n_boot).assign(model=model))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=stats.PAIR_COLUMNS + ["model"])


def _resamplable(per_seed: dict) -> bool:
    """Several seeds, or prompts within a seed: one seed's summary value alone has no spread to compare."""
    return len(per_seed) > 1 or any(p != -1 for v in per_seed.values() for p in v)


def rankings(summary: pd.DataFrame, pairs: pd.DataFrame, models: list[str]) -> dict[str, pd.DataFrame]:
    return {m: stats.rank_table(summary[summary["model"] == m], pairs[pairs["model"] == m]) for m in models
            if (summary["model"] == m).any()}


def collapsed_line(df: pd.DataFrame) -> str:
    """The warning naming every collapsed run, or ''."""
    d = done(df)
    if "collapsed" not in d or not d["collapsed"].any():
        return ""
    runs = [f"{r['series']} on {r['model']}, seed {r['seed']} ({r['collapse_reason']})"
            for _, r in d[d["collapsed"]].iterrows()]
    return (f"{len(runs)} collapsed / over-optimised run(s), shown as x markers and excluded from the seed means "
            f"and comparisons: {'; '.join(runs)}.")


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="", classes="runs")


def statistics_html(df: pd.DataFrame, pairs: pd.DataFrame, extra: pd.DataFrame | None = None) -> str:
    """The report's top: the collapsed-runs warning, Conclusions, and one ranking table per model size.
    ``pairs``: ``pairwise(df)``; ``extra``: more columns for the ranking tables, one row per (series, model)."""
    summary, models = series_summary(df), sizes(done(df))
    warn = collapsed_line(df)
    parts = [f"<p class='warn'>{html.escape(warn)}</p>" if warn else ""]
    words = stats.conclusions(summary, pairs, models)
    kinds = sorted(set(pairs["interval"]) - {""}) if "interval" in pairs else []
    method = ("A series' 95% CI: two-stage bootstrap over seeds, then prompts within each seed (Davison &amp; "
              "Hinkley 1997 section 3.8). Two series are tied when the simultaneous 95% CI of their difference, "
              "over all pairs of the size, contains 0 (" + html.escape("; ".join(kinds) or "none") + "; Tukey "
              "1953, Kramer 1956). Win rates are against each seed's SFT policy (the anchor), ties 1/2.")
    parts.append("<h2>Conclusions</h2><p>" + method + "</p>"
                 + ("<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words) + "</ul>" if words
                    else "<p>No win-rate estimates to conclude from.</p>"))
    for model, table in rankings(summary, pairs, models).items():
        table = table[["rank", "series", "mean", "ci_low", "ci_high", "n_seeds", "n_collapsed", "ci_kind",
                       "tied_with"]].rename(columns={"mean": "win rate vs SFT"})
        if extra is not None and not extra.empty:
            table = table.merge(extra[extra["model"] == model].drop(columns="model"), on="series", how="left")
        parts.append(f"<h3>Ranking on {html.escape(model)}</h3>" + _table(table))
    return "".join(parts)


def agreement_html(sweep_dir: Path) -> str:
    """The section for ``judge_agreement.json`` (``prefbench agree``), or "" when the sweep has none."""
    result = read_json(Path(sweep_dir) / "judge_agreement.json")
    if not result:
        return ""

    def cell(item) -> str:
        if not isinstance(item, dict):
            return "" if item is None else f"{item:.3f}"
        if item["value"] is None:
            return "no pair"
        return f"{item['value']:.3f} [{item['ci'][0]:.3f}, {item['ci'][1]:.3f}] (n={item['n']})"

    judge = html.escape(str(result["judge"].get("server_model") or result["judge"].get("model")))
    rows = "".join(f"<tr><td>{name}</td><td>{cell(result.get(key))}</td></tr>" for key, name in (
        ("spearman", "Spearman correlation of the scores"), ("pointwise_agreement", "pointwise: same reply preferred"),
        ("pairwise_agreement", "pairwise: same reply preferred"), ("pairwise_consistency", "pairwise: both orders agree")))
    return (f"<h2>Judge agreement</h2><p>The LLM judge {judge} asked about {result['pairs']} pairs of this sweep's "
            f"samples (two replies to one prompt), against the sweep's judge "
            f"({html.escape(', '.join(result['sweep_judge']))}); 0.5 is chance for the agreements, 95% bootstrap "
            f"intervals over pairs; {result['pairwise_ties']} pairwise ties, {result['unanswered']} unanswered "
            f"(<code>prefbench agree</code>).</p><table class='runs'>{rows}</table>")


def annotator_html(df: pd.DataFrame) -> str:
    """Per built-in task: who labelled its pairs (``task.annotator``) and how often the label agrees with the
    gold reward on the training pairs (``data/annotator_gold_agreement``, over the runs' seeds); "" without it."""
    key = "data/annotator_gold_agreement"
    if key not in df or df[key].isna().all():
        return ""
    settings = [c for c in df if c.startswith("config.task.annotator.")]
    rows = []
    for task, runs in df[df[key].notna()].groupby("task_setting" if "task_setting" in df else "task", sort=True):
        seeds = runs.drop_duplicates("seed")[key]
        rows.append({"task": task, **{c.removeprefix("config.task.annotator."): runs[c].iloc[0] for c in settings},
                     "agreement with gold (mean over seeds)": seeds.mean(),
                     "min": seeds.min(), "max": seeds.max(), "seeds": len(seeds)})
    return ("<h2>Annotators</h2><p>Who labelled each built-in task's preference pairs (simulated: Bradley-Terry "
            "noise, label flips, length bias; <code>task.annotator</code>), and how often the chosen side of a "
            "training pair has the higher gold reward. Evaluation always uses the noiseless gold reward.</p>"
            + _table(pd.DataFrame(rows)))
