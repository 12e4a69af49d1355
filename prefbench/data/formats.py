"""Row formats: every dataset row is mapped to TRL's standard preference format {prompt, chosen,
rejected} (or the unpaired {prompt, completion, label}); a row that cannot be mapped is counted by
reason. Formats (``task.format``):
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
"""
from __future__ import annotations

from collections import Counter

FORMATS = ("trl", "hh_rlhf", "ultrafeedback", "sharegpt")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def rename(row: dict, columns: dict[str, str]) -> dict:
    """Apply ``task.columns`` once, new <- old. A column named like a new name is replaced (shadowed)."""
    if not columns:
        return row
    return {k: v for k, v in row.items() if k not in columns} | {new: row[old] for new, old in columns.items()
                                                                  if old in row}


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
