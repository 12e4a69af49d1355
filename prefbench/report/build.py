"""The comparison report of a sweep folder: one pandas table of all runs, plots, and index.html.

The same functions serve notebooks/compare.ipynb: ``load_runs``, then any ``plot_*`` (each returns a
matplotlib Figure, from ``prefbench.report.plots``), or ``build_report`` for everything at once. The statistics
(seed means, hierarchical CIs, rankings, conclusions) are in ``prefbench.report.tables`` and ``prefbench.report.stats``.
"""
from __future__ import annotations

import html
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from prefbench.io.errors import UserError
from prefbench.io.faults import kill_point
from prefbench.io.results import write_atomic
from prefbench.job.sweep import run_rows, status_line, swept_keys
from prefbench.perf.plot import PERF_CAPTION, PERF_COLUMNS, load_perf, plot_perf
from prefbench.report.frontier_plots import FRONTIER_PLOTS
from prefbench.report.frontier_tables import frontier_html, ranking_columns
from prefbench.report.plots import PLOTS
from prefbench.report.samples import samples_page
from prefbench.report.stats import collapse_reasons
from prefbench.report.tables import agreement_html, annotator_html, done, pairwise, sizes, statistics_html
from prefbench.report.transfer import by_task, transfer_html


def _hyper(row: dict) -> dict:
    params = {k.removeprefix("config.method."): v for k, v in row.items()  # the tuned table fed the values
              if k.startswith("config.method.") and k != "config.method.name" and not k.startswith("config.method.tuned")}
    return {"hyper": ",".join(f"{k}={v}" for k, v in params.items()), **{f"method.{k}": v for k, v in params.items()}}


def load_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job the sweep asked for (``sweep.json``) and per run folder, whatever its status.
    ``series`` is the method, plus the values of any swept config key other than method, model and seed,
    so runs of different settings are never averaged together; ``df.attrs["swept"]`` lists those keys.
    ``task_setting`` is the task plus its swept settings (``reviews [annotator.flip_rate=0.25]``).
    ``collapsed`` / ``collapse_reason`` mark done runs that are collapsed or over-optimised (prefbench.report.stats)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: no such sweep folder")
    rows = run_rows(sweep_dir)
    swept = _task_named_once(swept_keys(rows), rows)
    for row in rows:
        row |= _hyper(row)
        row["series"] = _named(row.get("method"), row, swept)
        row["task_setting"] = _named(row.get("task"), row, [k for k in swept if k.startswith("task.")
                                                            and k != "task.name"], "task.")
    df = pd.DataFrame(rows)
    reasons = collapse_reasons(df).where(df["status"].isin(["done", "partial"]), "") if "status" in df else ""
    df["collapse_reason"] = reasons
    df["collapsed"] = df["collapse_reason"] != ""
    df.attrs["swept"] = swept
    return df


def _named(head, row: dict, keys: list[str], strip: str = "") -> str:
    """``head [k=v,...]`` with the row's values of ``keys`` (a key this method lacks is None or NaN: left out)."""
    values = {k: row.get("config." + k) for k in keys}
    variant = ",".join(f"{k.removeprefix(strip)}={v}" for k, v in values.items()
                       if v is not None and not (isinstance(v, float) and v != v))
    return f"{head} [{variant}]" if variant else head


def _task_named_once(swept: list[str], rows: list[dict]) -> list[str]:
    """Swept keys, without the ``task.*`` settings that only follow ``task.name`` when the task itself is swept
    (``dpo [task.name=arithmetic]``, not every setting in which the task yamls differ)."""
    if "task.name" not in swept:
        return swept
    tasks: dict = {}
    for r in rows:
        tasks.setdefault(r.get("config.task.name"), []).append(r)
    return [k for k in swept if k == "task.name" or not k.startswith("task.")
            or any(len({repr(r.get("config." + k)) for r in group}) > 1 for group in tasks.values())]


TABLE_COLUMNS = ["method", "series", "model", "seed", "hyper", "status", "n_params", "eval/win_rate_vs_sft",
                 "eval/win_rate_vs_chosen", "eval/pass_at_1", "eval/pass_at_k", "collapsed", "collapse_reason",
                 "eval/score_mean", "eval/reward_margin", "eval/reward_accuracy", "eval/kl", "eval/pid",
                 "eval/distinct_2", "cost/total_train_flops", "cost/train_tokens_per_s", "wall_seconds", "error"]


def _html_table(df: pd.DataFrame) -> str:
    # an empty cell, not "None": pandas' na_rep does not reach a Python None in an object column (a done run's error)
    return df.astype(object).where(df.notna(), "").to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                                          classes="runs")


def _statistics(df: pd.DataFrame, out: Path) -> str:
    """Conclusions and ranking tables, with report/pairs.csv: per task setting when the sweep has several
    (tasks, or one task under several annotators), after the section on what holds across them
    (``prefbench.report.transfer``)."""
    several = "task_setting" in df and df["task_setting"].nunique() > 1
    tasks = by_task(df) if several else {"": df}
    parts, tables = [transfer_html(df)[0] if several else ""], []
    for task, runs in tasks.items():
        pairs = pairwise(runs)
        tables.append(pairs.assign(task=task) if task else pairs)
        parts.append((f"<h2>Task: {html.escape(task)}</h2>" if task else "")
                     + statistics_html(runs, pairs, ranking_columns(runs)))
    write_atomic(out / "pairs.csv", pd.concat(tables, ignore_index=True).to_csv(index=False))
    return "".join(parts)


def build_report(sweep_dir: str | Path) -> Path:
    """Write runs.csv, runs.parquet, report/*.png, report/pairs.csv (``tables.pairwise``) and
    report/index.html; returns index.html's path.
    ``prefbench perf`` results in the folder (or its perf/ subfolder) get a section and perf.csv."""
    sweep_dir = Path(sweep_dir)
    df, perf = load_runs(sweep_dir), load_perf(sweep_dir)
    if df.empty and perf.empty:
        raise UserError(f"{sweep_dir}: no runs and no prefbench perf results found")
    out = sweep_dir / "report"
    out.mkdir(exist_ok=True)
    sections, table, status = [], "", ""
    figures = []  # (file name, plot function, its table, title, caption)
    if not df.empty and not done(df).empty and "n_params" in df:
        figures += [(name, plot, df, title, caption) for name, (plot, title, caption, needs) in (PLOTS | FRONTIER_PLOTS).items()
                     if needs is None or (needs in df and df[needs].notna().any())]
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
        order = {m: i for i, m in enumerate(sizes(df))} if "n_params" in df else {}  # tiny-xs before tiny-m
        rows = df[cols].sort_values(["model", "series"], key=lambda s: s.map(order).fillna(len(order))
                                    if s.name == "model" else s.astype(str))
        table = ("<h2>All runs</h2><p>Full table: runs.csv / runs.parquet beside this folder.</p>"
                 f"<div class='wide'>{_html_table(rows)}</div>")
        line = status_line(list(df["status"]))
        status = (f"<p>{line}</p>" if line.startswith("All ") else
                  f"<p class='warn'>{html.escape(line)} They are listed in the table with their error.</p>")
        swept = df.attrs.get("swept", [])
        status += (f"<p>Swept besides method, model and seed: {html.escape(', '.join(swept))}. Runs are averaged "
                   f"over seeds only; each combination of these values is its own series.</p>" if swept else "")
        if not done(df).empty and "run_dir" in df:
            write_atomic(out / "samples.html", samples_page(df, sweep_dir.name))
            status += "<p><a href='samples.html'>Browse the samples</a>: each method's replies side by side.</p>"
        if not done(df).empty and "n_params" in df:
            status += _statistics(df, out) + frontier_html(df)
        status += annotator_html(df) + agreement_html(sweep_dir)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>prefbench: {html.escape(sweep_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}}img{{max-width:100%}}
table.runs{{border-collapse:collapse;font-size:12px}}div.wide{{overflow-x:auto}}table.runs td,table.runs th{{border:1px solid #ccc;padding:2px 5px}}
.warn{{color:#a00;font-weight:bold}}</style></head><body>
<h1>prefbench report: {html.escape(sweep_dir.name)}</h1>{status}
{''.join(sections)}
{table}</body></html>"""
    write_atomic(out / "index.html", page)
    return out / "index.html"
