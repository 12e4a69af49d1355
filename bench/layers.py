"""The engine's layers, bottom to top: one package per layer (``bench/<layer>/``), the command line on top.

This is the one declaration that ``tests/test_layers.py`` checks every import against (a module imports only
from its own layer or a lower one) and that the README's layout is rendered from (``layout``). ``methods/``
sits under all of them: it imports nothing from ``bench``.

The data flow of one job reads up the list: conf -> data -> model -> trainer(method) -> eval -> job
folder -> report. The bottom layer holds the file and cache helpers every step uses.
"""
from __future__ import annotations

LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("io", "files and caches every step uses",
     ("errors", "faults", "results", "naming", "checkpoint", "stages", "hub")),
    ("data", "rows -> cleaned pairs -> tokens -> method views",
     ("tasks", "formats", "sources", "prepare", "tokenizer", "views")),
    ("model", "models, padding-free forwards, log-probs, FLOPs",
     ("models", "packing", "logprobs", "compute")),
    ("train", "the one trainer",
     ("refcache", "metrics", "distributed", "reuse", "trainer")),
    ("eval", "samples, judges, online rollouts, metrics, frontiers",
     ("spec", "sampling", "embedder", "metrics", "frontier", "llm_judge", "judges", "rollout", "curve",
      "evaluate")),
    ("job", "a config -> a run folder; sweeps",
     ("config", "pipeline", "track", "run", "reeval", "export", "sweep", "progress")),
    ("perf", "the trainer against TRL's on identical inputs",
     ("inputs", "sides", "online", "trl_adapters", "measure", "plot")),
    ("report", "statistics, tables, plots, the HTML page",
     ("stats", "tables", "plots", "frontier_tables", "frontier_plots", "samples", "build", "compare",
      "tuning")),
)
TOP = ("conformance", "cli")  # the method conformance checks and the command line, above every layer


def layer_of() -> dict[str, int]:
    """Layer name (``bench.<layer>``) -> its index; the command line is above them all."""
    return {**{name: i for i, (name, _, _) in enumerate(LAYERS)}, **{m: len(LAYERS) for m in TOP}}


def layout() -> str:
    """The README's layout lines for ``bench/``, bottom layer first."""
    rows = [(f"{name}/", " ".join(modules), what) for name, what, modules in LAYERS]
    rows += [("conformance.py", "", "the checks every method plugin passes"), ("cli.py", "", "the command line")]
    width, mods = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"  {name:<{width}}  {modules:<{mods}}  # {what}" for name, modules, what in rows)
