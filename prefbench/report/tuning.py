"""The tuning protocol behind the methods' defaults: ``prefbench sweep sweep=tune``, then
``prefbench tune results/tune``.

Every method gets the same grid and budget: learning rate x ``strength`` (the pull towards the SFT
anchor: DPO/IPO/KTO's beta, 1/lambda for ORPO), evaluated on the validation prompts (``eval.split=val``),
which are disjoint from the evaluation prompts the main job reports on. The rule, per (method, model):
among the configurations whose seed-mean KL to the SFT anchor is at most ``KL_BOUND`` nats, choose the
highest seed-mean validation gold reward (``eval/score_mean``); equal scores go to the larger strength
(closer to the anchor), then to the smaller learning rate. A method with no configuration under the
bound gets none, and the table says so.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from prefbench.io.errors import UserError
from prefbench.io.results import write_atomic
from prefbench.report.build import load_runs

KL_BOUND = 10.0
GRID = ["config.trainer.lr", "config.strength"]


def strength_fields() -> list[str]:
    """Every field some registered method marks for ``strength``: the values the grid resolved to, for the yamls."""
    from prefbench import methods
    return sorted({name for cls in methods.registry().values() for name in methods.strength_fields(cls)})


def tuning_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method, lr, strength): seed means of validation score and KL, and ``chosen``."""
    done = df[df["status"] == "done"]
    if done.empty:
        raise UserError("no finished runs to tune from")
    if set(done.get("config.eval.split", pd.Series(["eval"]))) != {"val"}:
        raise UserError("tuning needs runs evaluated on the validation prompts (eval.split=val, as sweep=tune sets)")
    values = {}  # the run's effective value (summary method/KEY); runs from before it: the config's
    for key in strength_fields():
        column = next((c for c in (f"method/{key}", f"config.method.{key}") if c in done), None)
        if column:
            values[f"method.{key}"] = (column, "first")
    table = done.groupby(["model", "method", *GRID], dropna=False).agg(
        val_score=("eval/score_mean", "mean"), kl=("eval/kl", "mean"), seeds=("seed", "nunique"),
        **values).reset_index()
    table["eligible"] = table["kl"] <= KL_BOUND
    order = table.sort_values(["val_score", "config.strength", "config.trainer.lr"], ascending=[False, False, True])
    best = order[order["eligible"]].groupby(["model", "method"]).head(1).index
    table["chosen"] = table.index.isin(best)
    return table.sort_values(["model", "method", *GRID]).reset_index(drop=True)


def write_tuning(sweep_dir: str | Path) -> pd.DataFrame:
    """tuning.csv and tuning.md in the sweep folder; returns the chosen rows."""
    sweep_dir = Path(sweep_dir)
    table = tuning_table(load_runs(sweep_dir))
    write_atomic(sweep_dir / "tuning.csv", table.to_csv(index=False))
    rule = (f"Rule: per (method, model), the highest seed-mean validation gold reward among configurations "
            f"whose seed-mean KL to the SFT anchor is at most {KL_BOUND:g} nats (prefbench/report/tuning.py).")
    write_atomic(sweep_dir / "tuning.md", f"# Tuning: {sweep_dir.name}\n\n{rule}\n\n{_markdown(table)}\n")
    chosen = table[table["chosen"]]
    missing = table.groupby(["model", "method"]).filter(lambda g: not g["chosen"].any())
    for (model, method), _ in missing.groupby(["model", "method"]):
        print(f"[prefbench] {method} on {model}: no configuration with KL <= {KL_BOUND:g}")
    return chosen


def _markdown(table: pd.DataFrame) -> str:
    rows = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r] for r in table.itertuples(index=False)]
    lines = [list(map(str, table.columns)), ["---"] * len(table.columns), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
