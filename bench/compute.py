"""Compute cost: peak memory (CUDA max allocated, else the process's peak RSS)."""
from __future__ import annotations

import resource
import sys

import torch


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
