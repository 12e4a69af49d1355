"""Which conclusions travel: a sweep over several tasks ranks the methods per (task, size), then measures how
far the rankings agree across tasks and sizes, and names every pair of methods whose order inverts.

- Kendall's W (coefficient of concordance, Kendall & Babington Smith 1939, with the tie correction) of the
  methods' seed-mean win rates over the tasks at one size; its p-value by permuting each task's ranks.
- Kendall's tau-b between two tasks at one size, or two sizes of one task, with a 95% CI from resampling each
  (method, cell)'s seeds.
- Verdicts come from the ranking tables' simultaneous CIs (``prefbench.report.stats.pairwise_table``): A > B in a
  cell when the CI of the difference is above 0. An inversion is A > B in one cell and B > A in another.
"""
from __future__ import annotations

import html
import itertools

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, rankdata

from prefbench.report import stats
from prefbench.report.tables import pairwise, seed_values, series_order, series_summary, sizes

N_PERM = 2000
N_BOOT = 1000


def by_task(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each task setting's runs (``task_setting``: a task, or a task under one annotator), their series named
    without the task's settings (``dpo [task.name=arithmetic]`` -> ``dpo``)."""
    out = {}
    for task, runs in df.groupby("task_setting", sort=True):
        runs = runs.copy()
        runs["series"] = runs["series"].map(_without_task)
        out[str(task)] = runs
    return out


def _without_task(series: str) -> str:
    head, _, tail = series.partition(" [")
    rest = [p for p in tail.rstrip("]").split(",") if p and not p.startswith("task.")]
    return f"{head} [{','.join(rest)}]" if rest else head


def kendall_w(ranks: np.ndarray) -> float:
    """W of an (m raters x n items) matrix of ranks, ties as average ranks:
    W = 12 S / (m^2 (n^3 - n) - m sum_t (t^3 - t)), S the squared deviations of the items' rank sums from
    their mean, t the sizes of each rater's groups of tied ranks."""
    m, n = ranks.shape
    sums = ranks.sum(axis=0)
    s = float(((sums - sums.mean()) ** 2).sum())
    ties = sum(float((c ** 3 - c).sum()) for c in (np.unique(row, return_counts=True)[1] for row in ranks))
    denominator = m ** 2 * (n ** 3 - n) - m * ties
    return 12 * s / denominator if denominator > 0 else float("nan")


def concordance(means: np.ndarray, n_perm: int = N_PERM, seed: int = 0) -> tuple[float, float]:
    """Kendall's W of the rows' rankings (rows: tasks, columns: methods, higher is better) and the permutation
    p-value P(W' >= W) when every task's ranking is shuffled independently, (1 + hits) / (1 + n_perm)."""
    ranks = rankdata(-means, axis=1)
    w = kendall_w(ranks)
    rng = np.random.default_rng(seed)
    hits = sum(kendall_w(np.array([rng.permutation(r) for r in ranks])) >= w - 1e-12 for _ in range(n_perm))
    return w, (1 + hits) / (1 + n_perm)


def tau_with_ci(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n_boot: int = N_BOOT,
                seed: int = 0) -> dict:
    """Kendall's tau-b between two cells' seed-mean win rates of the methods both have (``a``, ``b``: method ->
    its seeds' win rates), and the 95% percentile CI over resampled seeds."""
    methods = sorted(set(a) & set(b))
    if len(methods) < 3:
        return {"tau": None, "ci_low": None, "ci_high": None, "n_methods": len(methods)}
    rng = np.random.default_rng(seed)

    def tau(pick) -> float:
        return kendalltau([pick(a[m]) for m in methods], [pick(b[m]) for m in methods]).statistic

    draws = [tau(lambda v: rng.choice(v, size=len(v)).mean()) for _ in range(n_boot)]
    low, high = np.nanpercentile(draws, [2.5, 97.5]) if not np.isnan(draws).all() else (np.nan, np.nan)
    return {"tau": tau(np.mean), "ci_low": float(low), "ci_high": float(high), "n_methods": len(methods)}


def seed_means(df: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """``{(series, model): the seeds' win rates vs SFT}`` (each seed's mean over its prompts)."""
    values, _ = seed_values(df)
    return {key: np.array([np.mean(list(p.values())) for p in per_seed.values()]) for key, per_seed in values.items()}


def verdicts(pairs: dict[str, pd.DataFrame]) -> dict[tuple[str, str], dict[str, list[str]]]:
    """Per unordered pair of series (a, b), a before b by name: the cells ``task/size`` where a > b (key "a")
    and where b > a (key "b")."""
    out: dict = {}
    for task, table in pairs.items():
        for _, r in table.iterrows():
            winner = r["a"] if r["diff_low"] > 0 else r["b"] if r["diff_high"] < 0 else None
            a, b = sorted((r["a"], r["b"]))
            found = out.setdefault((a, b), {"a": [], "b": []})
            cell = f"{task}/{r['model']}"
            if winner is not None and cell not in found["a" if winner == a else "b"]:  # a table may hold both orders
                found["a" if winner == a else "b"].append(cell)
    return out


def travel_sentences(summaries: dict[str, pd.DataFrame], pairs: dict[str, pd.DataFrame],
                     anchor: str = "sft") -> list[str]:
    """One sentence per method against the anchor and per pair of methods with a verdict somewhere: where it
    holds, and whether that is every (task, size) with an estimate; inversions first."""
    rows = pd.concat([s.assign(cell=t + "/" + s["model"]) for t, s in summaries.items()], ignore_index=True)
    rows = rows[rows["ci_low"].notna()]
    inversions, holds = [], []
    for (a, b), v in sorted(verdicts(pairs).items()):
        if anchor in (a, b) or not (v["a"] or v["b"]):
            continue
        both = set(rows.loc[rows["series"] == a, "cell"]) & set(rows.loc[rows["series"] == b, "cell"])
        la, lb = stats._label(a), stats._label(b)
        if v["a"] and v["b"]:
            inversions.append(f"Inversion: {la} > {lb} on {', '.join(v['a'])}, but {lb} > {la} on "
                              f"{', '.join(v['b'])}.")
            continue
        win, lose, cells = (la, lb, v["a"]) if v["a"] else (lb, la, v["b"])
        where = "every task and size" if set(cells) == both else ", ".join(cells) + " only"
        holds.append(f"{win} > {lose} on {where} (of {len(both)} with both).")
    for series in sorted(set(rows["series"]) - {anchor}):
        mine = rows[rows["series"] == series]
        above, below = list(mine.loc[mine["ci_low"] > 0.5, "cell"]), list(mine.loc[mine["ci_high"] < 0.5, "cell"])
        name = stats._label(series)
        if above and len(above) == len(mine):
            holds.append(f"{name} > SFT on every task and size ({len(mine)}).")
        elif above or below:
            rest = len(mine) - len(above) - len(below)
            parts = ([f"> SFT on {', '.join(above)}"] if above else []) + \
                ([f"< SFT on {', '.join(below)}"] if below else []) + \
                ([f"not distinguishable from SFT on the other {rest}"] if rest else [])
            holds.append(f"{name} {'; '.join(parts)}.")
    return inversions + holds


def _method_by_task(summaries: dict[str, pd.DataFrame], model: str) -> pd.DataFrame:
    """Rows: series; columns: tasks; cells: the seed mean of the win rate vs SFT with its 95% CI."""
    table: dict[str, dict[str, str]] = {}
    for task, s in summaries.items():
        for _, r in s[s["model"] == model].iterrows():
            ci = f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if pd.notna(r["ci_low"]) else ""
            table.setdefault(r["series"], {})[task] = f"{r['mean']:.2f}{ci}"
    order = series_order(pd.DataFrame({"series": list(table)}))
    return pd.DataFrame([{"method": stats._label(s), **table[s]} for s in order])


def _concordance_line(summaries: dict[str, pd.DataFrame], model: str) -> tuple[str, dict]:
    means = {t: s[s["model"] == model].set_index("series")["mean"] for t, s in summaries.items()}
    means = {t: m for t, m in means.items() if not m.empty}
    common = sorted(set.intersection(*(set(m.index) for m in means.values()))) if means else []
    if len(means) < 2 or len(common) < 3:
        return f"Kendall's W at {model}: needs 2 tasks and 3 methods that each task has.", {}
    w, p = concordance(np.array([[means[t][s] for s in common] for t in means]))
    return (f"Kendall's W over {len(means)} tasks at {html.escape(model)}: <b>{w:.2f}</b> (permutation p = "
            f"{p:.3f}, {len(common)} methods; 1 = the same order on every task, 0 = no agreement).",
            {"model": model, "w": w, "p": p, "tasks": len(means), "methods": len(common)})


def _tau_rows(pairs_of_cells) -> pd.DataFrame:
    rows = []
    for (name_a, a), (name_b, b) in pairs_of_cells:
        t = tau_with_ci(a, b)
        defined = t["tau"] is not None and not np.isnan(t["tau"])
        ci = f"[{t['ci_low']:.2f}, {t['ci_high']:.2f}]" if defined and not np.isnan(t["ci_low"]) else ""
        note = "" if defined else "fewer than 3 methods" if t["tau"] is None else "one side ranks all methods equal"
        rows.append({"between": f"{name_a} and {name_b}", "Kendall tau-b": t["tau"] if defined else None,
                     "95% CI (seeds)": ci, "methods": t["n_methods"], "note": note})
    return pd.DataFrame(rows)


def transfer_html(df: pd.DataFrame) -> tuple[str, list[dict]]:
    """The report's *Across tasks* section for a sweep over two or more tasks ("" otherwise), and the Kendall W
    rows it states."""
    tasks = by_task(df)
    if len(tasks) < 2:
        return "", []
    summaries = {t: series_summary(d) for t, d in tasks.items()}
    pairs = {t: pairwise(d) for t, d in tasks.items()}
    means = {t: seed_means(d) for t, d in tasks.items()}
    models = [m for m in sizes(df.dropna(subset=["n_params"]))
              if any((s["model"] == m).any() for s in summaries.values())]
    words = travel_sentences(summaries, pairs)
    parts = ["<h2>Across tasks</h2><p>Each task setting (a task, or one task under each annotator) is ranked "
             "on its own (its section below); here is what holds on every one and every size, and what does not. A verdict is the ranking's: the simultaneous 95% CI of a "
             "difference in win rate vs SFT excludes 0. An inversion is A &gt; B somewhere and B &gt; A "
             "elsewhere. Kendall's W measures how alike the tasks rank the methods (seed means; permutation "
             "p-value); Kendall's tau-b compares two tasks or two sizes, with a 95% CI over resampled seeds.</p>",
             "<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words) + "</ul>" if words
             else "<p>No verdict in any task and size.</p>"]
    ws = []
    for model in models:
        line, w = _concordance_line(summaries, model)
        ws += [w] if w else []
        by_method = {t: {s: v for (s, m), v in means[t].items() if m == model} for t in tasks}
        taus = _tau_rows(itertools.combinations([(t, by_method[t]) for t in tasks], 2))
        parts.append(f"<h3>Win rate vs SFT by task at {html.escape(model)}</h3>"
                     + _method_by_task(summaries, model).to_html(index=False, classes="runs", na_rep="")
                     + f"<p>{line}</p>" + taus.to_html(index=False, classes="runs", float_format=lambda v: f"{v:.2f}",
                                                      na_rep=""))
    for task in tasks if len(models) > 1 else []:
        by_model = [(m, {s: v for (s, mm), v in means[task].items() if mm == m}) for m in models]
        taus = _tau_rows(itertools.combinations(by_model, 2))
        parts.append(f"<h3>Between sizes on {html.escape(task)}</h3>"
                     + taus.to_html(index=False, classes="runs", float_format=lambda v: f"{v:.2f}", na_rep=""))
    return "".join(parts), ws
