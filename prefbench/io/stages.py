"""Cached stages (tokenizer, base, SFT, reward model): built once, keyed by a hash of what defines
them, and safe when several jobs ask for the same stage at once (a file lock)."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from prefbench.io.faults import kill_point
from prefbench.io.results import read_json, write_json


def stage_key(kind: str, spec: dict) -> str:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return f"{kind}-{digest[:12]}"


def cached_json(cache_dir: str | Path, kind: str, name: str, key_parts: list, build: Callable[[], object]):
    """A JSON result that a group's runs share (the anchor's samples, best-of-n), in ``kind/NAME-<digest of
    key_parts>.json``: built by the first run that asks, behind a file lock, and always returned as read back
    from the file, so a build and a later cache hit give the same object."""
    key = hashlib.sha256(json.dumps(key_parts, default=str).encode()).hexdigest()[:12]
    path = Path(cache_dir) / kind / f"{name}-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            write_json(path, build())
        return read_json(path)


def build_stage(cache_dir: str | Path, kind: str, spec: dict, build: Callable[[Path], dict | None]) -> Path:
    """The folder of stage ``kind`` defined by ``spec``; ``build(tmp_dir)`` fills it on a miss and may
    return statistics, kept in stage.json with the spec and the build time. ``build`` runs from torch's random
    state seeded by the stage's key, and the caller's state is restored after it: a stage is the same whichever
    job of a sweep builds it, whatever that job did before (a cached stage, built elsewhere, must equal it)."""
    path = Path(cache_dir) / "stages" / stage_key(kind, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if (path / "stage.json").exists():
            return path
        remove_abandoned(path.parent)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # this stage's own, left by a builder killed from outside
        tmp.mkdir()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(hashlib.sha256(path.name.encode()).hexdigest()[:15], 16))
                stats = build(tmp) or {}
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        kill_point(f"stage_build:{kind}")
        write_json(tmp / "stage.json", {"kind": kind, "spec": spec, "seconds": time.perf_counter() - t0,
                                          "cpu_seconds": time.process_time() - c0, **stats})
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    return path


def remove_abandoned(stages: Path) -> None:
    """Remove the half-built ``*.tmp`` folders under ``stages`` whose builder is gone (a process killed from
    outside cannot clean up after itself): those whose stage lock nobody holds."""
    for tmp in stages.glob("*.tmp"):
        lock = FileLock(str(tmp.with_suffix("")) + ".lock")
        try:
            with lock.acquire(timeout=0):
                shutil.rmtree(tmp, ignore_errors=True)
        except Timeout:
            continue  # being built right now


def stage_info(path: str | Path) -> dict:
    return read_json(Path(path) / "stage.json", {})
