"""The engine's layers, bottom to top: one package per layer (``prefbench/<layer>/``), the command line on top.

This is the one declaration that ``tests/test_layers.py`` checks every import against: a module imports only
from a lower layer or from a module listed before it in its own layer (so no two modules import each other),
and the README's layout is rendered from it (``layout``). ``prefbench/methods/`` sits under all of them: it
imports nothing from the rest of ``prefbench``.

The data flow of one job reads up the list: conf -> data -> model -> trainer(method) -> eval -> job
folder -> report. The bottom layer holds the file and cache helpers every step uses.
"""
from __future__ import annotations

LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("io", "files and caches every step uses",
     ("errors", "faults", "bars", "results", "checkpoint", "naming", "hub", "stages")),
    ("data", "rows -> cleaned pairs -> tokens -> method views",
     ("tasks", "formats", "clean", "tokenizer", "views", "sources", "prepare")),
    ("model", "models, padding-free forwards, log-probs, FLOPs",
     ("models", "packing", "compute", "logprobs")),
    ("train", "the one trainer",
     ("refcache", "metrics", "batches", "distributed", "reuse", "trainer")),
    ("eval", "samples, judges, online rollouts, metrics, frontiers",
     ("spec", "embedder", "metrics", "frontier", "local_server", "llm_judge", "agreement", "sampling", "reward_model",
      "judges", "rollout", "curve", "evaluate")),
    ("job", "a config -> a run folder; sweeps",
     ("config", "sweep", "pipeline", "track", "reeval", "export", "progress", "run")),
    ("perf", "the trainer against TRL's on identical inputs",
     ("inputs", "measure", "trl_adapters", "online", "plot", "sides")),
    ("report", "statistics, tables, plots, the HTML page",
     ("stats", "tables", "transfer", "plots", "frontier_tables", "samples", "compare", "frontier_plots", "build",
      "tuning")),
)
TOP = ("conformance", "cli")  # the method conformance checks and the command line, above every layer


def layer_of() -> dict[str, int]:
    """Layer name (``prefbench.<layer>``) -> its index; ``methods`` is below them all, the top modules above."""
    return {"methods": -1, **{name: i for i, (name, _, _) in enumerate(LAYERS)}, **{m: len(LAYERS) for m in TOP}}


def layout() -> str:
    """The README's layout lines for ``prefbench/``, bottom layer first."""
    rows = [("methods/", "base views <one file per method>", "the method plugins: pure losses, no engine imports"),
            *[(f"{name}/", " ".join(modules), what) for name, what, modules in LAYERS]]
    rows += [("conformance.py", "", "the checks every method plugin passes"), ("cli.py", "", "the command line"),
             ("conf/", "config.yaml task/ model/ method/ ...", "the Hydra configs, shipped in the package")]
    width, mods = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"  {name:<{width}}  {modules:<{mods}}  # {what}" for name, modules, what in rows)
