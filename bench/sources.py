"""Where rows come from: built-in tasks (generated in code) or datasets (files, hub)."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from bench.errors import UserError
from bench.tasks import get_task

SOURCES = ("builtin",)


def load_rows(task_cfg: DictConfig) -> tuple[list[dict], str]:
    """Preference rows in TRL's standard format, and a name for them in messages."""
    source = task_cfg.get("source", "builtin")
    if source == "builtin":
        task = get_task(task_cfg.builtin)
        return task.pairs(int(task_cfg.n_pairs), int(task_cfg.get("data_seed", 0)),
                          float(task_cfg.label_temperature)), f"task {task.name}"
    raise UserError(f"task.source={source!r} is unknown; allowed: {', '.join(SOURCES)}")


def corpus_rows(task_cfg: DictConfig, rows: list[dict]) -> list[dict]:
    """Unlabeled (prompt, completion) rows for the tokenizer and the base stage: the built-in task's
    corpus, or the dataset's own prompts with both of their completions."""
    if task_cfg.get("source", "builtin") == "builtin":
        return get_task(task_cfg.builtin).corpus(int(task_cfg.corpus_size), int(task_cfg.get("data_seed", 0)))
    out = []
    for r in rows:
        for key in ("chosen", "rejected", "completion"):
            if key in r:
                out.append({"prompt": r["prompt"], "completion": r[key]})
    return out


def task_spec(task_cfg: DictConfig) -> dict:
    return OmegaConf.to_container(task_cfg, resolve=True)
