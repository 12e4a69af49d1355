"""One data pipeline: rows -> cleaned pairs (counted drops) -> seeded split -> tokenized views.

Rows arrive in TRL's standard formats, plain text or conversational:
  paired:   {prompt, chosen, rejected}     (strings, or lists of {role, content} messages)
  unpaired: {prompt, completion, label}    (label true = desirable)
Truncation policy: a prompt keeps its LAST ``max_prompt_length`` tokens (the end of a conversation
matters most), then a completion keeps its FIRST ``max_length - len(prompt)`` tokens. Both are
counted; a row is dropped only if no completion token would remain, or, with ``drop_overlong: true``,
whenever it would need truncating.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from datasets import Dataset

from bench.errors import UserError

Messages = list[dict]


@dataclass
class TokenizedData:
    """Tokenized train/eval splits plus what the cleaning dropped or truncated, by reason."""

    kind: str  # "paired" or "unpaired"
    train: Dataset
    eval: Dataset
    counts: Counter = field(default_factory=Counter)


def as_messages(value, role: str) -> Messages | None:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in value
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return None


def clean_rows(rows: list[dict], counts: Counter) -> tuple[str, list[dict]]:
    """Normalise rows to messages and drop bad ones, counting each reason. Returns (kind, rows)."""
    kind = "unpaired" if rows and "completion" in rows[0] and "chosen" not in rows[0] else "paired"
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
        if prompt is None or any(a is None for a in answers) or (
            kind == "unpaired" and not isinstance(row["label"], bool)
        ):
            counts["drop/wrong_type"] += 1
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
        key = repr((prompt, answers, row.get("label")))
        if key in seen:
            counts["drop/duplicate"] += 1
            continue
        seen.add(key)
        clean = {"prompt": prompt, **dict(zip(fields, answers))}
        if kind == "unpaired":
            clean["label"] = row["label"]
        out.append(clean)
    return kind, out


class Renderer:
    """Applies the chat template once and splits the text into prompt and completion token ids."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int, drop_overlong: bool = False):
        self.tok, self.max_length, self.max_prompt_length = tokenizer, max_length, max_prompt_length
        self.drop_overlong = drop_overlong

    def prompt_text(self, prompt: Messages) -> str:
        if self.tok.chat_template:
            return self.tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(m["content"] for m in prompt)

    def completion_text(self, prompt: Messages, completion: Messages) -> str:
        if self.tok.chat_template:
            head = self.prompt_text(prompt)
            full = self.tok.apply_chat_template(prompt + completion, tokenize=False)
            if full.startswith(head):
                return full[len(head):]
        return "".join(m["content"] for m in completion) + self.tok.eos_token

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def render(self, row: dict, fields: tuple[str, ...], counts: Counter) -> dict | None:
        prompt_ids = self.ids(self.prompt_text(row["prompt"]))
        completions = {f: self.ids(self.completion_text(row["prompt"], row[f])) for f in fields}
        if self.drop_overlong and (len(prompt_ids) > self.max_prompt_length or any(
                len(prompt_ids) + len(c) > self.max_length for c in completions.values())):
            counts["drop/too_long"] += 1
            return None
        if len(prompt_ids) > self.max_prompt_length:
            counts["truncated/prompt"] += 1
            prompt_ids = prompt_ids[-self.max_prompt_length:]
        room = self.max_length - len(prompt_ids)
        out = {"prompt_ids": prompt_ids}
        for f, ids in completions.items():
            if room < 1:
                counts["drop/too_long"] += 1
                return None
            if len(ids) > room:
                counts[f"truncated/{f}"] += 1
            out[f"{f}_ids"] = ids[:room]
        if "label" in row:
            out["label"] = row["label"]
        return out


def tokenize(rows: list[dict], tokenizer, cfg, seed: int, source: str, counts: Counter | None = None,
             shuffle: bool = True) -> TokenizedData:
    """Clean, split by seed and tokenize ``rows``; ``source`` names them in errors; ``counts`` carries
    the drops of earlier steps (unparseable lines, unmappable rows)."""
    counts = Counter(counts or {})
    counts["rows_in"] = len(rows) + sum(v for k, v in counts.items() if k.startswith("drop/"))
    kind, rows = clean_rows(rows, counts)
    if not rows:
        reasons = ", ".join(f"{k.split('/')[1]}: {v}" for k, v in counts.most_common() if k.startswith("drop/"))
        raise UserError(f"{source}: no valid rows ({reasons or 'the dataset is empty'})")
    rows = list(rows)
    if shuffle:
        random.Random(seed).shuffle(rows)
    n_eval = min(int(cfg.eval_size), len(rows) // 5)
    renderer = Renderer(tokenizer, int(cfg.max_length), int(cfg.max_prompt_length), bool(cfg.get("drop_overlong")))
    fields = ("completion",) if kind == "unpaired" else ("chosen", "rejected")
    rendered = []
    for row in rows:
        r = renderer.render(row, fields, counts)
        if r is not None:  # raw texts travel along for judging and reports
            r["prompt"] = row["prompt"]
            r.update({f"{f}_text": "".join(m["content"] for m in row[f]) for f in fields})
            rendered.append(r)
    for i, r in enumerate(rendered):
        r["idx"] = i
    if len(rendered) - n_eval < 1:
        raise UserError(f"{source}: no training rows left after cleaning and the eval split")
    counts["rows_kept"] = len(rendered)
    train = Dataset.from_list(rendered[n_eval:])
    evals = Dataset.from_list(rendered[:n_eval]) if n_eval else train.select([])
    return TokenizedData(kind, train, evals, counts)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation without fixed points: a random cycle through all n items (KTO's partners)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = list(range(n))
    for a, b in zip(order, order[1:] + order[:1]):
        partner[a] = b
    return partner
