"""Rows in TRL's standard formats -> rows of messages, each bad row dropped and counted by its reason."""
from __future__ import annotations

from collections import Counter

Messages = list[dict]


def as_messages(value, role: str) -> Messages | None:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in value
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return None


def _label(value):
    """A boolean label; integer 0/1 count as booleans, anything else is None (wrong type)."""
    if isinstance(value, bool):
        return value
    return bool(value) if type(value) is int and value in (0, 1) else None


def _valid_unicode(messages: Messages) -> bool:
    """False for text that cannot be encoded, e.g. a lone surrogate from JSON's "\\ud800"."""
    try:
        for text in (s for m in messages for s in (m["role"], m["content"])):
            text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def clean_rows(rows: list[dict], counts: Counter, max_chars: int | None = None) -> tuple[str, list[dict]]:
    """Normalise rows to messages and drop bad ones, counting each reason once. Returns (kind, rows).
    ``max_chars`` bounds a row's characters (prompt and completions), so no row can stall tokenizing."""
    kind = "unpaired" if rows and isinstance(rows[0], dict) and "completion" in rows[0] \
        and "chosen" not in rows[0] else "paired"
    fields = ("completion",) if kind == "unpaired" else ("chosen", "rejected")
    out, seen = [], set()
    for row in rows:
        if not isinstance(row, dict):
            counts["drop/not_a_record"] += 1
            continue
        if row.get("prompt") is not None and all(row.get(f) is None for f in fields):
            counts["drop/prompt_only"] += 1
            continue
        if any(row.get(f) is None for f in ("prompt", *fields)) or (kind == "unpaired" and row.get("label") is None):
            counts["drop/missing_field"] += 1
            continue
        prompt = as_messages(row["prompt"], "user")
        answers = [as_messages(row[f], "assistant") for f in fields]
        label = _label(row["label"]) if kind == "unpaired" else None
        if prompt is None or any(a is None for a in answers) or (kind == "unpaired" and label is None):
            counts["drop/wrong_type"] += 1
            continue
        if not all(_valid_unicode(m) for m in (prompt, *answers)):
            counts["drop/invalid_unicode"] += 1
            continue
        if max_chars and sum(len(m["content"]) for a in (prompt, *answers) for m in a) > max_chars:
            counts["drop/over_max_chars"] += 1
            continue
        if any(not "".join(m["content"] for m in a).strip() for a in answers):
            counts["drop/empty_completion"] += 1
            continue
        if not "".join(m["content"] for m in prompt).strip():
            counts["drop/empty_prompt"] += 1
            continue
        if kind == "paired" and answers[0] == answers[1]:
            counts["drop/chosen_equals_rejected"] += 1
            continue
        key = repr((prompt, answers, label))
        if key in seen:
            counts["drop/duplicate"] += 1
            continue
        seen.add(key)
        clean = {"prompt": prompt, **dict(zip(fields, answers))}
        if kind == "unpaired":
            clean["label"] = label
        out.append(clean)
    return kind, out
