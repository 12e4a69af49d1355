"""One data pipeline: rows -> cleaned pairs (counted drops) -> seeded split -> tokenized views.

Cleaning and the split come first (``clean_split``), before anything else sees the rows: the
tokenizer, the base-stage corpus (train rows only), the views and the judges all read cleaned rows.
The split is by prompt: rows with the same prompt text go to the same split (eval, val or train), so
no prompt is both trained on and held out.

Rows arrive in TRL's standard formats, plain text or conversational:
  paired:   {prompt, chosen, rejected}     (strings, or lists of {role, content} messages)
  unpaired: {prompt, completion, label}    (label true = desirable)
Truncation policy: a prompt keeps its LAST ``max_prompt_length`` tokens (the end of a conversation
matters most), then a completion keeps its FIRST ``max_length - len(prompt)`` tokens. Both are
counted; a row is dropped only if no completion token would remain, or, with ``drop_overlong: true``,
whenever it would need truncating.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field

from datasets import Dataset

from prefbench.data.clean import Messages, clean_rows
from prefbench.data.tasks import get_task
from prefbench.io.errors import UserError


@dataclass
class CleanData:
    """Cleaned rows (messages), split by seed and prompt into train, val, eval and judge (the in-suite reward
    model's own rows), and the counts so far."""

    kind: str  # "paired" or "unpaired"
    train: list[dict]
    val: list[dict]
    eval: list[dict]
    counts: Counter = field(default_factory=Counter)
    judge: list[dict] = field(default_factory=list)


@dataclass
class TokenizedData:
    """Tokenized train/val/eval/judge splits plus what the cleaning dropped or truncated, by reason."""

    kind: str  # "paired" or "unpaired"
    train: Dataset
    val: Dataset
    eval: Dataset
    counts: Counter = field(default_factory=Counter)
    judge: Dataset | None = None  # None or empty: no judge split (task.judge_size 0)


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


def clean_split(rows: list[dict], cfg, seed: int, source: str, counts: Counter | None = None,
                shuffle: bool = True) -> CleanData:
    """Clean ``rows`` and split them by seed; ``source`` names them in errors; ``counts`` carries the
    drops of earlier steps (unreadable lines, unmappable rows). Raises when no valid row is left.

    The split draws whole prompts (``prompt_key``): ``cfg.eval_size`` prompts for eval, then
    ``cfg.val_size`` (default 0) for val, then ``cfg.judge_size`` (default 0) for judge (the rows a judge
    trained in the suite learns from: disjoint from the policy's), each at most a fifth of the distinct prompts;
    every row of a prompt goes with it, so the eval prompts depend on neither of the others."""
    counts = Counter(counts or {})
    counts["rows_in"] = len(rows) + sum(v for k, v in counts.items() if k.startswith("drop/"))
    kind, rows = clean_rows(rows, counts, cfg.get("max_chars"))
    if not rows:
        reasons = ", ".join(f"{k.split('/')[1]}: {v}" for k, v in counts.most_common() if k.startswith("drop/"))
        raise UserError(f"{source}: no valid rows ({reasons or 'the dataset is empty'})")
    prompts, rows = list(dict.fromkeys(prompt_key(r["prompt"]) for r in rows)), list(rows)
    if shuffle:  # the same draw as shuffling the rows when every prompt is distinct
        random.Random(seed).shuffle(prompts)
        random.Random(seed).shuffle(rows)
    n_eval = min(int(cfg.eval_size), len(prompts) // 5)
    n_val = min(int(cfg.get("val_size") or 0), len(prompts) // 5)
    n_judge = min(int(cfg.get("judge_size") or 0), len(prompts) // 5)
    split = (dict.fromkeys(prompts[:n_eval], "eval") | dict.fromkeys(prompts[n_eval: n_eval + n_val], "val")
             | dict.fromkeys(prompts[n_eval + n_val: n_eval + n_val + n_judge], "judge"))
    parts = {"train": [], "val": [], "eval": [], "judge": []}
    for row in rows:
        parts[split.get(prompt_key(row["prompt"]), "train")].append(row)
    return CleanData(kind, parts["train"], parts["val"], parts["eval"], counts, parts["judge"])


def prompt_key(prompt: Messages) -> str:
    """A prompt's identity for the split: its roles and texts, each run of whitespace as one space."""
    return json.dumps([[m["role"], " ".join(m["content"].split())] for m in prompt])


_LAST_CLEAN: dict = {}


def load_clean(task_cfg, seed: int) -> tuple[CleanData, str]:
    """A task's rows read (``prefbench.data.sources.load_rows``), cleaned and split, and their name. The last result
    is kept, keyed by the task's settings, the seed and the file's size and time, so the check before a
    job starts (``prefbench.job.config.validate``) and the job itself read a file once."""
    from prefbench.data.sources import file_stamp, load_rows, task_spec

    key = json.dumps([task_spec(task_cfg), seed, file_stamp(task_cfg)], sort_keys=True, default=str)
    if key not in _LAST_CLEAN:
        _LAST_CLEAN.clear()
        rows, source, counts = load_rows(task_cfg)
        clean = clean_split(rows, task_cfg, seed, source, counts)
        if task_cfg.get("source", "builtin") == "builtin" and clean.kind == "paired":
            clean.counts["annotator_gold_agreement"] = gold_agreement(task_cfg.builtin, clean.train)
        _LAST_CLEAN[key] = (clean, source)
    return _LAST_CLEAN[key]


def gold_agreement(task_name: str, rows: list[dict]) -> float | None:
    """How often the annotator's chosen side of a built-in task's cleaned rows has the higher gold reward."""
    def text(messages: Messages) -> str:
        return "".join(m["content"] for m in messages)

    return get_task(task_name).gold_agreement([(text(r["prompt"]), text(r["chosen"]), text(r["rejected"]))
                                               for r in rows])


def render(clean: CleanData, tokenizer, cfg, source: str) -> TokenizedData:
    """Tokenize the splits of ``clean`` (eval rows first in ``idx`` order, then val, train, judge);
    truncations and rows too long to keep any completion token are counted, and so are each split's
    distinct prompts (``prompts/<split>``)."""
    counts = Counter(clean.counts)
    renderer = Renderer(tokenizer, int(cfg.max_length), int(cfg.max_prompt_length), bool(cfg.get("drop_overlong")))
    fields = ("completion",) if clean.kind == "unpaired" else ("chosen", "rejected")
    splits = {}
    for name in ("eval", "val", "train", "judge"):
        rendered = []
        for row in getattr(clean, name):
            r = renderer.render(row, fields, counts)
            if r is not None:  # raw texts travel along for judging and reports
                r["prompt"] = row["prompt"]
                r.update({f"{f}_text": "".join(m["content"] for m in row[f]) for f in fields})
                rendered.append(r)
        splits[name] = rendered
        if name != "judge" or rendered:
            counts[f"prompts/{name}"] = len({prompt_key(r["prompt"]) for r in rendered})
    for i, r in enumerate(splits["eval"] + splits["val"] + splits["train"] + splits["judge"]):
        r["idx"] = i
    if not splits["train"]:
        raise UserError(f"{source}: no training rows left after cleaning and the eval/val splits")
    counts["rows_kept"] = sum(map(len, splits.values()))
    train = Dataset.from_list(splits["train"])
    held_out = {k: Dataset.from_list(splits[k]) if splits[k] else train.select([]) for k in ("val", "eval", "judge")}
    return TokenizedData(clean.kind, train, held_out["val"], held_out["eval"], counts, held_out["judge"])


def tokenize(rows: list[dict], tokenizer, cfg, seed: int, source: str, counts: Counter | None = None,
             shuffle: bool = True) -> TokenizedData:
    """Clean, split by seed and tokenize ``rows`` in one call (``clean_split`` then ``render``)."""
    return render(clean_split(rows, cfg, seed, source, counts, shuffle), tokenizer, cfg, source)
