"""Compute cost: training totals that include a run's init stage, and each job's own peak memory.

``training_cost`` accounts a run in deterministic units first (trained tokens, FLOPs = 6·N·tokens,
optimizer steps) and in CPU seconds, never in wall seconds alone: wall time depends on what the other
parallel job does. A method's totals include the SFT stage it starts from (DPO's cost is SFT + DPO); the
base stage is shared by every method and left out.

``training_bytes`` estimates a training pass's memory and ``check_fits`` refuses one that cannot fit before it
starts, naming the settings that lower it.

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

import ctypes
import gc
import os
import re
import resource
import sys
from pathlib import Path

import torch

from prefbench.io.errors import UserError

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


def memory_limit_bytes() -> int:
    """The memory this process may use: the machine's RAM, or its control group's limit when that is lower."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            limit = min(limit, int(value))
    return limit


def resident_bytes() -> int:
    found = re.search(r"^VmRSS:\s+(\d+) kB", _STATUS.read_text(), re.M) if _STATUS.exists() else None
    return int(found.group(1)) * 1024 if found else 0


def training_bytes(model, trainable: int, tokens: int, predicted: int, checkpointing: bool) -> int:
    """Float32 training's memory on top of the loaded weights, estimated for a micro-batch of ``tokens`` tokens
    of which ``predicted`` are projected onto the vocabulary: 16 bytes per ``trainable`` parameter (gradient,
    AdamW's two moments, the update's temporary); per token and layer the activations a decoder block keeps
    for backward, about 8 hidden + 4 intermediate floats, or with ``checkpointing`` one hidden float per layer
    plus one block's full set; 12 bytes per vocabulary entry of each predicted token (logits, log-softmax,
    their gradient)."""
    config = getattr(model, "config", None)
    hidden, layers = getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)
    if not hidden or not layers:  # an architecture that names them otherwise: no estimate
        return 0
    block = 4 * (8 * hidden + 4 * getattr(config, "intermediate_size", 4 * hidden))
    activations = tokens * (layers * 4 * hidden + block) if checkpointing else tokens * layers * block
    vocab = predicted * 12 * getattr(config, "vocab_size", 0)
    return 16 * trainable + activations + vocab


def check_fits(need: int, what: str, settings: str) -> None:
    """Refuse, before it starts, a pass that needs ``need`` more bytes than this process may still use."""
    limit, held = memory_limit_bytes(), resident_bytes()
    if held + need > limit:
        gib = 2 ** 30
        raise UserError(f"{what} needs about {need / gib:.1f} GiB on top of the {held / gib:.1f} GiB this process "
                        f"holds, and this machine allows {limit / gib:.1f} GiB: lower {settings}")


M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES = -3, 128 * 1024


def bound_heap() -> None:
    """Serve every allocation over 128 KiB from its own mapping, returned to the system when freed (glibc's
    ``mallopt(M_MMAP_THRESHOLD)``, its default before it adapts). glibc otherwise raises the threshold to the
    largest buffer freed so far, so a model's multi-MB activation buffers come from the heap and fragment it:
    the resident set grows to several times the tensors alive. Measured here (2-core EPYC), SmolLM2-135M's
    checkpointed forward and backward over 8 x 512 tokens: 3.0 GB over its weights without, 0.67 GB with, the
    same user CPU time and about 20% more wall time (page faults). A no-op off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_memory() -> None:
    """Give the memory a finished pass freed back to the system: collect garbage, empty CUDA's cache, and on
    glibc ``malloc_trim(0)``, without which the freed heap of a stage build stays in the process's resident set
    (and every later pass's peak sits on top of it)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    """glibc, when this process runs on it (not on musl, macOS or Windows); else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


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
