"""What a ``prefbench perf`` trial records besides its losses: wall and CPU seconds of the training call, the
machine's load around it, peak memory, optionally a torch.profiler table; and the environment."""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path


class PeakRSS:
    """Peak resident memory above the level at start, sampled every 2 ms (CPU), or CUDA max allocated."""

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self._rss()
            self.running = True
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.mb = (max(self.peak, self._rss()) - self.base) / 2**20


@contextmanager
def timed(out: dict):
    """Wall and CPU seconds (all threads of this process) of the block, and the 1-minute load average before
    and after it, into ``out``."""
    out["load_before"] = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    yield out
    out["seconds"], out["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - c0
    out["load_after"] = os.getloadavg()[0]


@contextmanager
def profiled(cfg, impl: str, method: str):
    """With profile=true: torch.profiler over the training, its top operators saved to
    out/profile-METHOD-IMPL.txt (timings of profiled trials are inflated; compare them with each other)."""
    if not cfg.profile:
        yield
        return
    import torch
    from torch.profiler import ProfilerActivity, profile

    from prefbench.io.results import write_atomic

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        yield
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=25)
    write_atomic(Path(cfg.out) / f"profile-{method}-{impl}.txt", table)


# Dense bf16 tensor-core peaks in TFLOP/s, half the with-sparsity figures of NVIDIA's datasheets; the most specific
# name first (a device name is matched by containment: "NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_BF16_TFLOPS = (("H200", 989.5), ("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("H100", 989.5), ("A100", 312.0),
                    ("L40S", 362.05), ("L40", 181.05), ("L4", 121.0))


def peak_tflops(device: str, given: float | None) -> tuple[float | None, str]:
    """The peak that MFU divides by, and where it came from: ``peak_tflops=`` when given, else the device's
    dense bf16 peak from the table; None (no MFU) for a CPU or an unlisted GPU."""
    if given:
        return float(given), f"peak_tflops={given}"
    for name, tflops in PEAK_BF16_TFLOPS:
        if name in device:
            return tflops, f"{name} dense bf16 (NVIDIA datasheet)"
    return None, "unknown for this device: give peak_tflops="


def mfu(n_params: int, tokens_per_s: float, tflops: float | None) -> float | None:
    """Model FLOPs utilisation, 6 N tokens/s / peak (Kaplan et al. 2020's 6N FLOPs per trained token, forward
    and backward; attention's FLOPs and a checkpointed forward's recompute are not counted, as in PaLM's MFU)."""
    return 6 * n_params * tokens_per_s / (tflops * 1e12) if tflops else None


def environment(threads: int) -> dict:
    """Where the numbers were measured: device, cores, driver and library versions."""
    import platform
    import shutil
    import subprocess

    import torch
    import transformers
    import trl

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"cpu ({threads} threads of {os.cpu_count()} cores)"
    out = {"device": device, "cores": os.cpu_count(), "torch": torch.__version__,
           "transformers": transformers.__version__, "trl": trl.__version__, "python": platform.python_version()}
    if cuda:
        smi = shutil.which("nvidia-smi")
        driver = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                text=True).stdout.split("\n")[0].strip() if smi else None
        out |= {"cuda": torch.version.cuda, "driver": driver, "bf16": torch.cuda.is_bf16_supported()}
    return out


def contention(trials: list[dict], cores: int) -> str:
    """Why a set of one side's repeated trials looks contended ('' when it does not): another process was
    running (1-minute load above the cores before a trial started), or one trial took over twice the
    median's wall time."""
    if not trials:
        return ""
    median = sorted(t["seconds"] for t in trials)[len(trials) // 2]
    slow = [f"{t['seconds']:.1f} s" for t in trials if t["seconds"] > 2 * median]
    loaded = [f"{t['load_before']:.1f}" for t in trials if t.get("load_before", 0) > cores + 1]
    why = ([f"trial(s) over 2x the median {median:.1f} s: {', '.join(slow)}"] if slow else []) + \
          ([f"load average {', '.join(loaded)} above {cores} cores + 1 at the start"] if loaded else [])
    return "; ".join(why)
