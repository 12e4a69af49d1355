"""Run-folder names: readable, safe as one path component, and unique per resolved config.

A job's folder is ``<task>-<model>-<method>-s<seed>[,<overrides>]--<digest>``: the job's identity, the
other overrides it was given (while they are short), and a digest of its whole resolved config minus
bookkeeping keys. Two different configs never share a folder; the same config always maps to the same one.
"""
from __future__ import annotations

import hashlib
import json
import re

from omegaconf import DictConfig, OmegaConf

from prefbench.io.errors import UserError

# Keys that say where and how a job runs, not what it computes: excluded from the digest.
BOOKKEEPING = ("force", "results_dir", "cache_dir", "sweep_name", "threads", "trainer.progress", "sweep", "hydra",
               "tracker", "tracker_dir", "tracker_project", "objective")
IDENTITY = ("task", "model", "method", "seed")  # already spelled out at the front of the name
# Overrides most likely to tell two jobs of a sweep apart are spelled out first.
PRIORITY = ("method.", "strength", "init", "trainer.", "stages.", "task.", "model.", "judge", "eval.")
MAX_READABLE = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@-]")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,=+@-]{0,99}$")


def settings(cfg: DictConfig | dict) -> dict:
    """What defines a run's result: its resolved config without bookkeeping keys."""
    if isinstance(cfg, DictConfig):
        keys = [k for k in cfg if k != "hydra"]  # the hydra node refers back to the run name
        cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, throw_on_missing=False)
    out = json.loads(json.dumps(cfg, default=str))
    for key in BOOKKEEPING:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def config_digest(cfg: DictConfig | dict) -> str:
    return hashlib.sha256(json.dumps(settings(cfg), sort_keys=True).encode()).hexdigest()[:8]


def safe_component(text: str) -> str:
    """``text`` as one harmless path component: no separators, no leading dot, bounded length."""
    text = _UNSAFE.sub("_", str(text))
    return ("_" + text if text.startswith(".") or not text else text)[:120]


def check_sweep_name(name: str) -> str:
    if not _SAFE_NAME.match(str(name)) or ".." in str(name):
        raise UserError(f"sweep_name={name!r} is not allowed: use letters, digits and . _ , = + @ - "
                        f"(one folder name inside results_dir, at most 100 characters)")
    return str(name)


def readable_overrides(overrides: list[str]) -> str:
    """The job's overrides other than its identity and bookkeeping, in PRIORITY order, cut at MAX_READABLE
    characters (the digest, not this text, is what makes the name unique)."""
    kept = sorted((o for o in overrides if _key(o) not in IDENTITY and not _key(o).startswith(BOOKKEEPING)),
                  key=lambda o: (next((i for i, p in enumerate(PRIORITY) if o.startswith(p)), len(PRIORITY)), o))
    text, shown = "", 0
    for item in kept:
        if len(text) + len(item) + 1 > MAX_READABLE:
            break
        text, shown = f"{text},{item}" if text else item, shown + 1
    if shown < len(kept):
        text += f",+{len(kept) - shown}"
    return text


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """The folder name of the job with config ``cfg`` launched with ``overrides``."""
    head = f"{cfg.task.name}-{cfg.model.name}-{cfg.method.name}-s{cfg.seed}"
    extra = readable_overrides(overrides)
    return safe_component(head + ("," + extra if extra else "")) + "--" + config_digest(cfg)


def hydra_run_name(*, _root_: DictConfig) -> str:
    """OmegaConf resolver ``${run_name:}`` for hydra.run.dir / hydra.sweep.subdir."""
    return run_name(_root_, list(_root_.hydra.overrides.task))


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")
