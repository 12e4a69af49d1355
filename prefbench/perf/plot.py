"""The perf section of a report: ``prefbench perf`` JSONs as a table and one figure of the ratios."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from prefbench.io.results import read_json
from prefbench.perf.trl_adapters import ADAPTERS

PERF_CAPTION = ("Each bar: the median over alternating repetitions of one `prefbench perf` run (same model, rows, "
                "order, batch, optimizer and gradient checkpointing on both sides); tokens/s credits each side "
                "with the tokens it trains. Dashed: the 1.25x speed target.")
PERF_COLUMNS = ["setting", "method", "trl_trainer", "prefbench_tokens_per_s", "trl_tokens_per_s", "speed_ratio",
                "time_ratio", "prefbench_cpu_seconds", "trl_cpu_seconds", "prefbench_peak_mb", "trl_peak_mb",
                "memory_ratio", "prefbench_final_loss", "trl_final_loss", "baseline", "step_cost_vs_baseline"]
STEP_COST = "step_cost_vs_"  # + the baseline method's name: a perf table row's step cost (prefbench.perf.step_costs)


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
                  **baseline_cost(r)} for r in data["table"]]
    return pd.DataFrame(rows)


def baseline_cost(row: dict) -> dict:
    """A perf table row with its ``step_cost_vs_<baseline>`` as ``baseline`` and ``step_cost_vs_baseline``, so
    runs with different baselines share the report's columns."""
    key = next((k for k in row if k.startswith(STEP_COST)), None)
    if key is None:
        return row
    return {k: v for k, v in row.items() if k != key} | {"baseline": key.removeprefix(STEP_COST),
                                                        "step_cost_vs_baseline": row[key]}


def plot_perf(perf: pd.DataFrame) -> plt.Figure:
    """Speed and peak-memory ratios prefbench/TRL per method, one bar per perf run."""
    present = set(perf["method"])
    methods = [m for m in ADAPTERS if m in present] + sorted(present - set(ADAPTERS))
    runs = list(dict.fromkeys(zip(perf["file"], perf["setting"])))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(runs)
    for ax, col, title, line in ((axes[0], "speed_ratio", "tokens/s, prefbench / TRL (higher = faster)", 1.25),
                                 (axes[1], "memory_ratio", "peak memory, prefbench / TRL (lower = less)", 1.0)):
        for i, (file, setting) in enumerate(runs):
            g = perf[perf["file"] == file].set_index("method")
            values = g[col] if col in g else pd.Series(dtype=float)
            ax.bar(np.arange(len(methods)) + i * width, [values.get(m, np.nan) for m in methods], width, label=setting)
        ax.axhline(1.0, color="k", lw=0.8)
        if line != 1.0:
            ax.axhline(line, color="k", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(methods)) + width * (len(runs) - 1) / 2, methods)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle("prefbench vs TRL on identical inputs (prefbench perf)")
    fig.tight_layout()
    return fig
