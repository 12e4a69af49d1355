"""A sweep's console: one overall line (jobs done k/N, the running jobs with their step, an ETA), read from the
sweep folder while the launcher runs the jobs, whichever processes or machines those are in.

On a terminal the line is redrawn in place every ``TTY_EVERY`` seconds (tqdm); in a log file it is printed as a
plain line when it changes, at most every ``FILE_EVERY`` seconds, so a log holds no carriage-return bars. Each
job prints its own one-line result when it ends (prefbench.job.run); per-step bars are for a single job on a terminal.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from prefbench.io.results import read_json
from prefbench.job.pipeline import planned_steps
from prefbench.job.sweep import Job

TTY_EVERY, FILE_EVERY = 2.0, 30.0


def _last_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return int(json.loads(lines[-1]).get("step", 0)) if lines else 0
    except (OSError, ValueError):
        return 0


def _steps(run_dir: Path) -> int | None:
    """The run's planned optimizer steps (with budget=matched, a run from base also trains the SFT stage's)."""
    try:
        return planned_steps(OmegaConf.load(run_dir / "config.yaml"))
    except Exception:  # not written yet, or from an older version of the config
        return None


class SweepProgress:
    """``with SweepProgress(sweep_dir, jobs): launch()``: the overall line while the block runs."""

    def __init__(self, sweep_dir: Path, jobs: list[Job], stream=None):
        self.sweep_dir, self.stream = Path(sweep_dir), stream or sys.stderr
        self.planned = [j.run for j in jobs if not j.refused and not j.not_applicable]
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._stop, self._thread, self._bar = threading.Event(), None, None
        self._t0, self._done_before = time.monotonic(), None
        self._last, self._printed = None, 0.0  # the line last printed to a log, and when

    @property
    def runs(self) -> list[str]:
        """The planned jobs; for a sweeper with no plan (Optuna), the run folders so far."""
        if self.planned or not self.sweep_dir.is_dir():
            return self.planned
        return sorted(p.name for p in self.sweep_dir.iterdir() if (p / "config.yaml").exists())

    def state(self) -> tuple[int, list[str]]:
        """(jobs that ended, "run step/steps" of each running job)."""
        ended, running = 0, []
        for run in self.runs:
            status = read_json(self.sweep_dir / run / "summary.json", {}).get("status")
            if status in ("done", "failed", "partial"):
                ended += 1
            elif status == "running":
                steps = _steps(self.sweep_dir / run)
                running.append(f"{run.split('--')[0]} {_last_step(self.sweep_dir / run)}/{steps or '?'}")
        return ended, running

    def line(self) -> str:
        ended, running = self.state()
        if self._done_before is None:
            self._done_before = ended
        finished_here, left = ended - self._done_before, len(self.runs) - ended
        elapsed = time.monotonic() - self._t0
        eta = f", ETA {_minutes(elapsed / finished_here * left)}" if finished_here and left else ""
        shown = "; ".join(running[:3]) + (f"; +{len(running) - 3}" if len(running) > 3 else "")
        return f"jobs {ended}/{len(self.runs)} ended{eta}" + (f" | running: {shown}" if running else "")

    def tick(self) -> None:
        """Show the line: redrawn on a terminal; in a log, printed when it changed (at most every FILE_EVERY s)."""
        text = self.line()
        if self._bar is not None:
            self._bar.set_description_str(text)
        elif text != self._last and time.monotonic() - self._printed >= FILE_EVERY:
            print(f"[prefbench] {text}", file=self.stream, flush=True)
            self._last, self._printed = text, time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(TTY_EVERY if self.tty else 1.0):
            self.tick()

    def __enter__(self):
        self.line()  # what was done before this invocation does not count towards its ETA
        if self.tty:
            self._bar = tqdm(total=0, bar_format="{desc}", file=self.stream, leave=False)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._bar is not None:
            self._bar.close()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
