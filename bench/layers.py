"""The engine's layers, bottom to top: the one declaration that ``tests/test_layers.py`` checks every import
against (a module imports only from its own layer or a lower one) and that the README's layout is
rendered from (``layout``). ``methods/`` sits under all of them: it imports nothing from ``bench``.

The data flow of one job reads up the list: conf -> data -> model -> trainer(method) -> eval -> job
folder -> report. The bottom layer holds the file and cache helpers every step uses.
"""
from __future__ import annotations

LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("io", "errors, faults, atomic files, run names, checkpoints, the stage cache, hub errors",
     ("errors", "faults", "results", "naming", "checkpoint", "stages", "hub")),
    ("data", "tasks, sources and formats -> cleaned rows -> tokenizer -> method views",
     ("tasks", "formats", "sources", "data", "tokenizer", "views")),
    ("model", "models, padding-free packing, log-prob statistics, FLOPs",
     ("models", "packing", "logprobs", "compute")),
    ("train", "the trainer and what it calls",
     ("refcache", "train_metrics", "distributed", "trainer")),
    ("eval", "sampling, judges, metrics, frontiers",
     ("sampling", "embedder", "eval_metrics", "frontier", "judges", "curve", "evaluate")),
    ("job", "a config -> a run folder; sweeps",
     ("config", "pipeline", "run", "reeval", "sweep")),
    ("perf", "prefbench's trainer against TRL's on identical inputs (TRL adapters per method), its plot",
     ("perf",)),
    ("report", "statistics, plots, the HTML page, the tuning table",
     ("stats", "report_stats", "report_plots", "report_frontier", "report_frontier_plots", "report", "tuning")),
    ("tools", "the command line",
     ("cli",)),
)


def layer_of() -> dict[str, int]:
    """Module name (``bench.<name>``, a subpackage by its top name) -> its layer's index."""
    return {module: i for i, (_, _, modules) in enumerate(LAYERS) for module in modules}


def layout() -> str:
    """The README's layout lines for ``bench/``, bottom layer first."""
    width = max(len(name) for name, _, _ in LAYERS)
    return "\n".join(f"  {name:<{width}}  {' '.join(modules)}    # {what}" for name, what, modules in LAYERS)
