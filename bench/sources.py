"""Where rows come from: built-in tasks (generated in code) or datasets (local files, the hub).

Every dataset row is mapped to TRL's standard preference format {prompt, chosen, rejected} (or the
unpaired {prompt, completion, label}); a row that cannot be mapped is dropped and counted by reason,
never silently. Formats (``task.format``):
  trl            already {prompt, chosen, rejected} / {prompt, completion, label}, plain or conversational,
                 or with an implicit prompt: chosen/rejected texts or message lists that both begin with
                 the prompt are split at their longest common prefix (TRL's ``extract_prompt``);
                 unpaired {messages, label} rows: the last message is the completion
  hh_rlhf        Anthropic HH-RLHF transcripts "\\n\\nHuman: ... \\n\\nAssistant: ..."; the prompt is the
                 common prefix up to the last Assistant turn, the completions what follows
  ultrafeedback  HuggingFaceH4/ultrafeedback_binarized: prompt string, chosen/rejected message lists
  sharegpt       {conversations: [{from, value}], chosen: {from, value}, rejected: {from, value}}, or
                 unpaired {conversations | messages, label}: the last turn is the completion
``task.columns`` renames columns first, once, new <- old: {prompt: question, chosen: response_j,
rejected: response_k} makes ``prompt`` the file's ``question`` column (a ``prompt`` column of the file
is then shadowed, not used), and {chosen: rejected, rejected: chosen} swaps the two.
A file that cannot be read at all (missing, a directory, empty, only blank lines, a broken .gz) stops
with one line naming it; a line that is not UTF-8 or not JSON is counted (``invalid_utf8``,
``unparseable_line``).
"""
from __future__ import annotations

import codecs
import gzip
import json
import zlib
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench import CONF_DIR
from bench.errors import UserError
from bench.hub import friendly_hub_errors
from bench.tasks import get_task

SOURCES = ("builtin", "file", "hub")
FORMATS = ("trl", "hh_rlhf", "ultrafeedback", "sharegpt")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# Bounds on the unlabeled corpus (tokenizer training, base-stage pretraining): BPE training time grows with
# the square of a word's length, so one huge row could stall it (a 5 MB line: over 11 minutes).
CORPUS_ROW_CHARS = 8192
CORPUS_CHARS = 20_000_000


def load_rows(task_cfg: DictConfig) -> tuple[list[dict], str, Counter]:
    """Preference rows in TRL's standard format, a name for them in messages, and counted drops."""
    source = task_cfg.get("source", "builtin")
    if source == "builtin":
        task = get_task(task_cfg.builtin)
        rows = task.pairs(int(task_cfg.n_pairs), int(task_cfg.get("data_seed", 0)), float(task_cfg.label_temperature))
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
    return rows, name, counts


def resolve_path(task_cfg: DictConfig) -> Path:
    """``task.path``; with ``task.path_root: project`` a relative path is taken from the project root (the
    folder holding conf/), not from the current directory."""
    path = Path(str(task_cfg.path)).expanduser()
    if not path.is_absolute() and task_cfg.get("path_root") == "project":
        return CONF_DIR.parent / path
    return path


def column_map(columns) -> dict[str, str]:
    columns = OmegaConf.to_container(columns) if isinstance(columns, DictConfig) else (columns or {})
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
        raise UserError(f"task.columns must map new names to the file's column names, e.g. "
                        f"'{{prompt: question}}' (got {columns!r})")
    return columns


def rename(row: dict, columns: dict[str, str]) -> dict:
    """Apply ``task.columns`` once, new <- old. A column named like a new name is replaced (shadowed)."""
    if not columns:
        return row
    return {k: v for k, v in row.items() if k not in columns} | {new: row[old] for new, old in columns.items()
                                                                  if old in row}


def read_file(path: Path) -> tuple[list, str, Counter]:
    """Rows of a local .jsonl(.gz), .json, .parquet or .csv file. Lines that are not UTF-8 or not JSON
    are counted; a file that cannot be read at all is one UserError naming it."""
    if not path.exists():
        raise UserError(f"task.path={str(path)!r}: no such file")
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

    extra = {"encoding": "utf-8-sig"} if suffixes == ".csv" else {}  # a byte-order mark is not part of a column name
    try:
        ds = load_dataset(builders[suffixes], data_files=str(path), split="train", **extra)
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


def convert(row, fmt: str, columns: dict, counts: Counter) -> dict | None:
    if not isinstance(row, dict):
        counts["drop/not_a_record"] += 1
        return None
    row = rename(row, columns)
    if fmt == "hh_rlhf":
        return parse_hh(row, counts)
    if _unpaired_conversation(row) and fmt in ("trl", "sharegpt"):
        return split_last_turn(row, counts)
    if fmt == "sharegpt":
        return parse_sharegpt(row, counts)
    if fmt == "ultrafeedback" or (fmt == "trl" and _implicit_prompt(row)):
        return split_messages(row, counts)
    if fmt == "trl" and "prompt" not in row and isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str):
        split = extract_prompt(row["chosen"], row["rejected"])
        return split if split["prompt"] else row  # no common prefix: no prompt (missing_field)
    return row


def _implicit_prompt(row: dict) -> bool:
    return isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list) and (
        "prompt" not in row or isinstance(row.get("prompt"), str))


def _unpaired_conversation(row: dict) -> bool:
    return "label" in row and not {"prompt", "completion", "chosen", "rejected"} & row.keys() and (
        "messages" in row or "conversations" in row)


def extract_prompt(chosen: str, rejected: str) -> dict:
    """TRL's implicit prompt of text rows, as ``trl.data_utils.extract_prompt`` (trl 1.16) computes it: the
    longest common prefix of chosen and rejected, less a space just before the first difference (which
    stays with the completions). If one text is a prefix of the other, TRL's loop ends one character
    short of the shorter text, and so does this. Two degenerate cases TRL does not handle are made
    explicit: texts that differ at the first character (TRL would then look at the last character)
    or an empty text (TRL raises) give an empty prompt; ``convert`` leaves such a row without a prompt,
    counted as ``missing_field``."""
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if idx > 0 and chosen[idx - 1] == " ":
                idx -= 1
            break
    return {"prompt": chosen[:idx], "chosen": chosen[idx:], "rejected": rejected[idx:]}


def parse_transcript(text: str) -> list[dict] | None:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{user, a}, {assistant, b}]; None if it is not a transcript."""
    out = []
    for chunk in ("\n\n" + text.lstrip("\n")).split("\n\n"):
        if chunk.startswith("Human:") or chunk.startswith("Assistant:"):
            role, _, content = chunk.partition(":")
            out.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
        elif out:  # a blank line inside a turn
            out[-1]["content"] += "\n\n" + chunk
        elif chunk.strip():
            return None
    return out or None


def parse_hh(row: dict, counts: Counter) -> dict | None:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if chosen is None or rejected is None:
        counts["drop/missing_field"] += 1
        return None
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        counts["drop/wrong_type"] += 1
        return None
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind("\n\nAssistant:", 0, common + len("\n\nAssistant:"))
    if cut < 0 or chosen[cut:cut + 12] != rejected[cut:cut + 12]:
        counts["drop/unparseable_transcript"] += 1
        return None
    prompt = parse_transcript(chosen[:cut])
    if not prompt or prompt[-1]["role"] != "user":
        counts["drop/unparseable_transcript"] += 1
        return None
    start = cut + len("\n\nAssistant:")
    return {"prompt": prompt, "chosen": chosen[start:].strip(), "rejected": rejected[start:].strip()}


def split_messages(row: dict, counts: Counter) -> dict | None:
    """Message lists that contain the prompt: the prompt is their common prefix, the rest the completions."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, list) or not isinstance(rejected, list) or not all(
            isinstance(m, dict) for m in chosen + rejected):
        counts["drop/wrong_type"] += 1
        return None
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    prompt = chosen[:n] or ([{"role": "user", "content": row["prompt"]}] if isinstance(row.get("prompt"), str) else [])
    if not prompt:
        counts["drop/missing_field"] += 1
        return None
    return {"prompt": prompt, "chosen": chosen[n:], "rejected": rejected[n:]}


def _turn(turn) -> dict:
    """A {role, content} message from a {role, content} or ShareGPT {from, value} turn (KeyError/TypeError if neither)."""
    if "role" in turn:
        return {"role": turn["role"], "content": turn["content"]}
    return {"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]}


def split_last_turn(row: dict, counts: Counter) -> dict | None:
    """An unpaired conversation {messages | conversations, label}: the last turn, an assistant's, is the
    completion and the turns before it the prompt."""
    turns = row.get("messages", row.get("conversations"))
    try:
        turns = [_turn(t) for t in turns]
    except (KeyError, TypeError):
        counts["drop/wrong_type"] += 1
        return None
    if len(turns) < 2 or turns[-1]["role"] != "assistant":
        counts["drop/unparseable_transcript"] += 1
        return None
    return {"prompt": turns[:-1], "completion": turns[-1:], "label": row["label"]}


def parse_sharegpt(row: dict, counts: Counter) -> dict | None:
    turns, chosen, rejected = row.get("conversations"), row.get("chosen"), row.get("rejected")
    if turns is None or chosen is None or rejected is None:
        counts["drop/missing_field"] += 1
        return None
    try:
        return {"prompt": [_turn(t) for t in turns], "chosen": [_turn(chosen)], "rejected": [_turn(rejected)]}
    except (KeyError, TypeError):
        counts["drop/wrong_type"] += 1
        return None


def corpus_rows(task_cfg: DictConfig, train_rows: list[dict]) -> list[dict]:
    """Unlabeled (prompt, completion) rows for the tokenizer and the base stage: the built-in task's
    corpus, or the cleaned TRAIN rows' prompts with each of their completions (held-out rows never
    enter it). Each row is cut to ``task.corpus_row_chars`` characters (the prompt keeps its end, the
    completion its start, as the truncation policy does) and the corpus stops at ``task.corpus_chars``."""
    if task_cfg.get("source", "builtin") == "builtin":
        rows = get_task(task_cfg.builtin).corpus(int(task_cfg.corpus_size), int(task_cfg.get("data_seed", 0)))
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


def task_spec(task_cfg: DictConfig) -> dict:
    return OmegaConf.to_container(task_cfg, resolve=True)
