"""Compute cost: training totals that include a run's init stage, and each job's own peak memory.

``training_cost`` accounts a run in deterministic units first (trained tokens, FLOPs = 6·N·tokens,
optimizer steps) and in CPU seconds, never in wall seconds alone: wall time depends on what the other
parallel job does. A method's totals include the SFT stage it starts from (DPO's cost is SFT + DPO); the
base stage is shared by every method and left out.

``reset_peak_memory()`` at a job's start, ``peak_memory_mb()`` at its end:
  - CUDA: ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``.
  - CPU on Linux: the process's peak resident set size (VmHWM in /proc/self/status), reset by writing
    "5" to /proc/self/clear_refs (proc(5), Linux >= 4.0). A launcher worker that runs several jobs
    then reports each job's own peak, not the largest of all its jobs so far; the figure includes what
    the process already held when the job started (interpreter, libraries, caches).
  - Elsewhere, or where clear_refs cannot be written: ``ru_maxrss``, the process's lifetime peak, an
    upper bound for the job.
``reset_peak_memory`` returns which of these the job's figure is (summary key cost/peak_memory_how).
"""
from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch

_CLEAR_REFS, _STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


def reset_peak_memory() -> str:
    """Start a job's peak-memory measurement; returns how the peak is measured."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return "cuda_max_allocated"
    try:
        _CLEAR_REFS.write_text("5")
        return "rss_peak_since_job_start"
    except OSError:
        return "process_lifetime_max_rss"


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    hwm = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.M) if _STATUS.exists() else None
    if hwm:
        return int(hwm.group(1)) / 2**10
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def training_cost(n_params: int, run: dict, init_stage: dict | None, rollout_flops: int = 0) -> dict:
    """Cost keys of one run from its trainer statistics ``run`` and those of its init stage (None when
    it starts from the base model): this run's own training and the totals including the stage and, for an
    online run, its rollouts' sampling and reference scoring (``rollout_flops``)."""
    stage = init_stage or {}
    own = {"tokens": run["train_tokens"], "steps": run["optimizer_steps"], "cpu": run["train_cpu_seconds"]}
    total = {k: v + stage.get(key, 0) for (k, v), key in
             zip(own.items(), ("train_tokens", "optimizer_steps", "train_cpu_seconds"))}
    return {"cost/train_tokens": own["tokens"], "cost/train_flops": 6 * n_params * own["tokens"],
            "cost/optimizer_steps": own["steps"], "cost/train_cpu_seconds": own["cpu"],
            "cost/total_train_tokens": total["tokens"], "cost/total_train_flops": 6 * n_params * total["tokens"] + rollout_flops,
            "cost/total_optimizer_steps": total["steps"], "cost/total_train_cpu_seconds": total["cpu"]}
