"""Run-folder files: JSON written atomically, metrics appended as JSON lines."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else (1e308 if obj > 0 else -1e308)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write via a temp file in the same folder and rename: readers see the old or the new file, with the
    permissions of an ordinary write under the process umask (mkstemp alone would make it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, default=None):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(_clean(r)) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (a killed writer) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class MetricsLog:
    """metrics.jsonl: one line per logged step. On resume, lines past the checkpoint are dropped."""

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        write_jsonl(self.path, kept)

    def append(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(_clean(row)) + "\n")


def lock_held(path: str | Path) -> bool:
    """Whether a live process holds the lock file ``path``. The kernel releases a process's locks when it dies,
    however it dies (out of memory, kill -9, a preempted node), so a lock nobody holds has no owner left."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(path), blocking=False):
            return False
    except Timeout:
        return True
