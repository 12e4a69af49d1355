"""Where rows come from: built-in tasks (generated in code) or datasets (local files, the hub).

Every dataset row is mapped to TRL's standard preference format by ``prefbench.data.formats`` (``task.format``,
``task.columns``); a row that cannot be mapped is dropped and counted by reason, never silently.
A file that cannot be read at all (missing, a directory, empty, only blank lines, a broken .gz) stops
with one line naming it; a line that is not UTF-8 or not JSON is counted (``invalid_utf8``,
``unparseable_line``). When ``task.format`` reads no row but another format reads the first rows, the
refusal names that format. The unlabeled corpus of the tokenizer and base stages is bounded here too.
"""
from __future__ import annotations

import codecs
import gzip
import json
import os
import zlib
from collections import Counter
from dataclasses import fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prefbench.data.clean import clean_rows
from prefbench.data.formats import FORMATS, convert, parse_transcript  # noqa: F401  (parse_transcript: public here too)
from prefbench.data.tasks import get_task
from prefbench.data.tasks.base import Annotator
from prefbench.io.errors import UserError
from prefbench.io.hub import friendly_hub_errors

SOURCES = ("builtin", "file", "hub")
# Bounds on the unlabeled corpus (tokenizer training, base-stage pretraining): BPE training time grows with
# the square of a word's length, so one huge row could stall it (a 5 MB line: over 11 minutes).
CORPUS_ROW_CHARS = 8192
CORPUS_CHARS = 20_000_000
PROBE_ROWS = 20  # the first rows that other formats are tried on when task.format reads no row


def load_rows(task_cfg: DictConfig) -> tuple[list[dict], str, Counter]:
    """Preference rows in TRL's standard format, a name for them in messages, and counted drops."""
    source = task_cfg.get("source", "builtin")
    if source == "builtin":
        task = get_task(task_cfg.builtin)
        rows = task.pairs(int(task_cfg.n_pairs), int(task_cfg.get("data_seed", 0)), annotator(task_cfg))
        return rows, f"task {task.name}", Counter()
    fmt = task_cfg.get("format", "trl")
    if fmt not in FORMATS:
        raise UserError(f"task.format={fmt!r} is unknown; allowed: {', '.join(FORMATS)}")
    columns = column_map(task_cfg.get("columns"))
    if source == "file":
        raw, name, counts = read_file(resolve_path(task_cfg))
    elif source == "hub":
        raw, name, counts = read_hub(task_cfg)
    else:
        raise UserError(f"task.source={source!r} is unknown; allowed: {', '.join(SOURCES)}")
    limit = task_cfg.get("max_rows")
    raw = raw[: int(limit)] if limit else raw
    rows = [r for r in (convert(row, fmt, columns, counts) for row in raw) if r is not None]
    refuse_other_format(raw, rows, fmt, columns, name, counts, task_cfg.get("max_chars"))
    return rows, name, counts


def annotator(task_cfg: DictConfig) -> Annotator:
    """A built-in task's ``task.annotator`` settings (``Annotator``), checked."""
    if "label_temperature" in task_cfg:
        raise UserError("task.label_temperature is not a setting: the Bradley-Terry noise is task.annotator.temperature")
    settings = dict(task_cfg.get("annotator") or {})
    allowed = [f.name for f in fields(Annotator)]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise UserError(f"task.annotator: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    try:
        return Annotator(**{k: float(v) for k, v in settings.items()})
    except (TypeError, ValueError) as e:
        raise UserError(f"task.annotator: {e}") from None


def readable(raw: list, fmt: str, columns: dict, max_chars: int | None) -> int:
    """How many of ``raw`` rows ``fmt`` reads into valid rows (converted, then cleaned)."""
    counts = Counter()
    rows = [r for r in (convert(row, fmt, columns, counts) for row in raw) if r is not None]
    return len(clean_rows(rows, counts, max_chars)[1])


def refuse_other_format(raw: list, rows: list[dict], fmt: str, columns: dict, name: str, counts: Counter,
                        max_chars: int | None) -> None:
    """When ``task.format`` reads none of the rows and another format reads the first ``PROBE_ROWS``, one
    UserError gives the drop counts and names the formats that read them best."""
    probe = raw[:PROBE_ROWS]
    if not probe or readable(probe, fmt, columns, max_chars):
        return
    dropped = Counter(counts)
    if clean_rows(rows, dropped, max_chars)[1]:
        return
    read = {other: readable(probe, other, columns, max_chars) for other in FORMATS if other != fmt}
    best = [other for other in read if read[other] and read[other] == max(read.values())]
    if best:
        reasons = ", ".join(f"{k.split('/')[1]}: {v}" for k, v in dropped.most_common() if k.startswith("drop/"))
        raise UserError(f"{name}: no valid rows as task.format={fmt} ({reasons}); these rows read as "
                        + " or ".join(f"task.format={other}" for other in best))


def resolve_path(task_cfg: DictConfig) -> Path:
    """``task.path``, a relative path taken from the current directory."""
    return Path(str(task_cfg.path)).expanduser()


def file_stamp(task_cfg: DictConfig) -> list | None:
    """The data file's size and modification time (None for other sources, or a missing file)."""
    if task_cfg.get("source", "builtin") != "file":
        return None
    path = resolve_path(task_cfg)
    return [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns] if path.exists() else None


def column_map(columns) -> dict[str, str]:
    columns = OmegaConf.to_container(columns) if isinstance(columns, DictConfig) else (columns or {})
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
        raise UserError(f"task.columns must map new names to the file's column names, e.g. "
                        f"'{{prompt: question}}' (got {columns!r})")
    return columns


def read_file(path: Path) -> tuple[list, str, Counter]:
    """Rows of a local .jsonl(.gz), .json, .parquet or .csv file. Lines that are not UTF-8 or not JSON
    are counted; a file that cannot be read at all is one UserError naming it."""
    if not path.exists():
        raise UserError(f"task.path={str(path)!r}: no such file (relative paths are taken from the current "
                        f"directory {os.getcwd()}; pass task.path=FILE)")
    if path.is_dir():
        raise UserError(f"task.path={str(path)!r}: is a directory, not a data file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    suffixes = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffixes in (".jsonl", ".jsonl.gz"):
        try:
            rows, counts = read_jsonl(path)
        except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, unreadable
            raise UserError(f"{path}: cannot be read: {type(exc).__name__}: {exc}") from exc
        if not rows and not counts:
            raise UserError(f"{path}: holds only blank lines, no rows")
        return rows, str(path), counts
    builders = {".json": "json", ".parquet": "parquet", ".csv": "csv"}
    if suffixes not in builders:
        raise UserError(f"task.path={str(path)!r}: unsupported file type; use .jsonl, .jsonl.gz, .json, .parquet or .csv")
    from datasets import load_dataset

    try:
        ds = load_dataset(builders[suffixes], data_files=str(path), split="train")
    except Exception as exc:  # the builders raise many types; one line names the file
        raise UserError(f"{path}: cannot be read as {builders[suffixes]}: {str(exc).splitlines()[0]}") from exc
    return ds.to_list(), str(path), Counter()


def read_jsonl(path: Path) -> tuple[list, Counter]:
    rows, counts = [], Counter()
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        for n, raw in enumerate(f):
            if n == 0:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                counts["drop/invalid_utf8"] += 1
                continue
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                counts["drop/unparseable_line"] += 1
    return rows, counts


def read_hub(task_cfg: DictConfig) -> tuple[list, str, Counter]:
    from datasets import load_dataset

    name = f"{task_cfg.path}" + (f"/{task_cfg.name_or_config}" if task_cfg.get("name_or_config") else "")
    with friendly_hub_errors("dataset", task_cfg.path):
        ds = load_dataset(task_cfg.path, task_cfg.get("name_or_config"), split=task_cfg.get("split", "train"),
                          data_dir=task_cfg.get("data_dir"))
    return ds.to_list(), f"{name}[{task_cfg.get('split', 'train')}]", Counter()


def corpus_rows(task_cfg: DictConfig, train_rows: list[dict]) -> list[dict]:
    """Unlabeled (prompt, completion) rows for the tokenizer and the base stage: the built-in task's
    corpus on prompts that no preference pair has, or the cleaned TRAIN rows' prompts with each of their completions (held-out rows never
    enter it). Each row is cut to ``task.corpus_row_chars`` characters (the prompt keeps its end, the
    completion its start, as the truncation policy does) and the corpus stops at ``task.corpus_chars``."""
    if task_cfg.get("source", "builtin") == "builtin":
        paired = {r["prompt"] for r in load_rows(task_cfg)[0]}  # no prompt of any split, whatever the seed
        rows = get_task(task_cfg.builtin).corpus(int(task_cfg.corpus_size), int(task_cfg.get("data_seed", 0)), paired)
    else:
        rows = [{"prompt": r["prompt"], "completion": r[k]} for r in train_rows
                for k in ("chosen", "rejected", "completion") if k in r]
    row_chars, total = corpus_limits(task_cfg)
    out, used = [], 0
    for row in rows:
        row = cap_row(row, row_chars)
        used += _chars(row["prompt"]) + _chars(row["completion"])
        if used > total:
            break
        out.append(row)
    return out


def corpus_limits(task_cfg: DictConfig) -> tuple[int, int]:
    return int(task_cfg.get("corpus_row_chars", CORPUS_ROW_CHARS)), int(task_cfg.get("corpus_chars", CORPUS_CHARS))


def _chars(value) -> int:
    return len(value) if isinstance(value, str) else sum(len(m["content"]) for m in value)


def cap_row(row: dict, limit: int) -> dict:
    p, c = _chars(row["prompt"]), _chars(row["completion"])
    if p + c <= limit:
        return row
    keep_c = min(c, max(limit // 2, limit - p))
    return {"prompt": _cut(row["prompt"], limit - keep_c, from_end=True),
            "completion": _cut(row["completion"], keep_c, from_end=False)}


def _cut(value, n: int, from_end: bool):
    """The last (from_end) or first ``n`` characters of a text or of a message list's contents."""
    if isinstance(value, str):
        return value[len(value) - n:] if from_end else value[:n]
    out, left = [], n
    for m in (reversed(value) if from_end else value):
        text = m["content"][len(m["content"]) - left:] if from_end else m["content"][:left]
        out.append({"role": m["role"], "content": text})
        left -= len(text)
        if left <= 0:
            break
    return out[::-1] if from_end else out


def task_settings(task_cfg: DictConfig) -> dict:
    """The task's resolved settings, without a zero ``judge_size`` (no judge split): a stage keyed by them is
    the one a task config without that key had."""
    spec = OmegaConf.to_container(task_cfg, resolve=True)
    if not spec.get("judge_size"):
        spec.pop("judge_size", None)
    return spec


def task_spec(task_cfg: DictConfig) -> dict:
    """The task's settings, and a built-in task's version, as cached stages' keys see them."""
    spec = task_settings(task_cfg)
    if spec.get("source", "builtin") == "builtin" and spec.get("builtin"):
        spec["task_version"] = get_task(spec["builtin"]).version
    return spec
