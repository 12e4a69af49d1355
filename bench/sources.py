"""Where rows come from: built-in tasks (generated in code) or datasets (local files, the hub).

Every dataset row is mapped to TRL's standard preference format {prompt, chosen, rejected} (or the
unpaired {prompt, completion, label}); a row that cannot be mapped is dropped and counted by reason,
never silently. Formats (``task.format``):
  trl            already {prompt, chosen, rejected} / {prompt, completion, label}, plain or conversational;
                 chosen/rejected message lists that repeat the prompt ("implicit prompt") are split too
  hh_rlhf        Anthropic HH-RLHF transcripts "\\n\\nHuman: ... \\n\\nAssistant: ..."; the prompt is the
                 common prefix up to the last Assistant turn, the completions what follows
  ultrafeedback  HuggingFaceH4/ultrafeedback_binarized: prompt string, chosen/rejected message lists
  sharegpt       {conversations: [{from, value}], chosen: {from, value}, rejected: {from, value}}
``task.columns`` renames columns first, e.g. {prompt: question, chosen: response_j, rejected: response_k}.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench.errors import UserError
from bench.hub import friendly_hub_errors
from bench.tasks import get_task

SOURCES = ("builtin", "file", "hub")
FORMATS = ("trl", "hh_rlhf", "ultrafeedback", "sharegpt")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def load_rows(task_cfg: DictConfig) -> tuple[list[dict], str, Counter]:
    """Preference rows in TRL's standard format, a name for them in messages, and counted drops."""
    source = task_cfg.get("source", "builtin")
    if source == "builtin":
        task = get_task(task_cfg.builtin)
        rows = task.pairs(int(task_cfg.n_pairs), int(task_cfg.get("data_seed", 0)), float(task_cfg.label_temperature))
        return rows, f"task {task.name}", Counter()
    if source == "file":
        raw, name, counts = read_file(Path(task_cfg.path))
    elif source == "hub":
        raw, name, counts = read_hub(task_cfg)
    else:
        raise UserError(f"task.source={source!r} is unknown; allowed: {', '.join(SOURCES)}")
    limit = task_cfg.get("max_rows")
    raw = raw[: int(limit)] if limit else raw
    fmt = task_cfg.get("format", "trl")
    if fmt not in FORMATS:
        raise UserError(f"task.format={fmt!r} is unknown; allowed: {', '.join(FORMATS)}")
    columns = OmegaConf.to_container(task_cfg.columns) if task_cfg.get("columns") else {}
    rows = [r for r in (convert(row, fmt, columns, counts) for row in raw) if r is not None]
    return rows, name, counts


def read_file(path: Path) -> tuple[list, str, Counter]:
    """Rows of a local .jsonl, .json, .parquet or .csv file. Unparseable JSON lines are counted."""
    if not path.exists():
        raise UserError(f"task.path={str(path)!r}: no such file")
    counts: Counter = Counter()
    suffixes = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffixes in (".jsonl", ".jsonl.gz"):
        import gzip

        opener = gzip.open if path.suffix == ".gz" else open
        rows = []
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    counts["drop/unparseable_line"] += 1
        return rows, str(path), counts
    builders = {".json": "json", ".parquet": "parquet", ".csv": "csv"}
    if suffixes not in builders:
        raise UserError(f"task.path={str(path)!r}: unsupported file type; use .jsonl, .jsonl.gz, .json, .parquet or .csv")
    from datasets import load_dataset

    try:
        ds = load_dataset(builders[suffixes], data_files=str(path), split="train")
    except Exception as exc:  # the builders raise many types; one line names the file
        raise UserError(f"{path}: cannot be read as {builders[suffixes]}: {str(exc).splitlines()[0]}") from exc
    return ds.to_list(), str(path), counts


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
    row = {columns.get(k, k): v for k, v in row.items()} if columns else row
    if columns:
        row = {**row, **{new: row[old] for new, old in columns.items() if old in row}}
    if fmt == "hh_rlhf":
        return parse_hh(row, counts)
    if fmt == "sharegpt":
        return parse_sharegpt(row, counts)
    if fmt == "ultrafeedback" or (fmt == "trl" and _implicit_prompt(row)):
        return split_messages(row, counts)
    return row


def _implicit_prompt(row: dict) -> bool:
    return isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list) and (
        "prompt" not in row or isinstance(row.get("prompt"), str))


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


def parse_sharegpt(row: dict, counts: Counter) -> dict | None:
    turns, chosen, rejected = row.get("conversations"), row.get("chosen"), row.get("rejected")
    if turns is None or chosen is None or rejected is None:
        counts["drop/missing_field"] += 1
        return None
    try:
        prompt = [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns]
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen["value"]}],
                "rejected": [{"role": "assistant", "content": rejected["value"]}]}
    except (KeyError, TypeError):
        counts["drop/wrong_type"] += 1
        return None


def corpus_rows(task_cfg: DictConfig, rows: list[dict]) -> list[dict]:
    """Unlabeled (prompt, completion) rows for the tokenizer and the base stage: the built-in task's
    corpus, or the dataset's own prompts with both of their completions."""
    if task_cfg.get("source", "builtin") == "builtin":
        return get_task(task_cfg.builtin).corpus(int(task_cfg.corpus_size), int(task_cfg.get("data_seed", 0)))
    return [{"prompt": r["prompt"], "completion": r[k]} for r in rows for k in ("chosen", "rejected", "completion")
            if k in r and r.get("prompt") is not None and r.get(k) is not None]


def task_spec(task_cfg: DictConfig) -> dict:
    return OmegaConf.to_container(task_cfg, resolve=True)
