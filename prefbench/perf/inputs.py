"""The inputs both sides of ``prefbench perf`` share: rows, tokenizer and the random-init model."""
from __future__ import annotations

import random

from omegaconf import OmegaConf

from prefbench import CONF_DIR
from prefbench.io.errors import UserError


def rows(cfg) -> list[dict]:
    """Conversational pairs: the built-in review task lengthened towards seq_len tokens, or HH-RLHF."""
    n = cfg.steps * cfg.batch_size
    if cfg.data == "hh":
        from prefbench.data.sources import load_rows

        found, _, _ = load_rows(OmegaConf.create({"source": "file", "path": cfg.hh_path, "format": "hh_rlhf"}))
        return [{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in found
                if r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"]][: 8 * n]
    from prefbench.data.tasks import get_task

    task, rng = get_task("reviews"), random.Random(0)
    k = max(1, int(cfg.seq_len) // 256)  # 50-256 tokens at seq_len 256, k times longer at k times the length
    out = []
    for _ in range(2 * n):  # spares for the rows that would need truncating
        p = task.prompt(rng)
        long = lambda: " ".join(task.completion(p, rng) for _ in range(rng.randint(4 * k, 14 * k)))  # noqa: E731
        out.append({"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": long()}],
                    "rejected": [{"role": "assistant", "content": long()}]})
    return out


def setup(cfg, pairs: list[dict]):
    """The tokenizer (BPE trained on the rows), the rows that fit untruncated (``pairs`` is cut to them) and
    the model, seeded, so both sides start from the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from prefbench.data.tokenizer import train_bpe
    from prefbench.model.models import scratch_config

    torch.set_num_threads(int(cfg.threads))
    text = lambda msgs: " ".join(m["content"] for m in msgs)  # noqa: E731
    tok = train_bpe([text(r["prompt"]) + " " + text(r["chosen"]) + " " + text(r["rejected"]) for r in pairs],
                    int(cfg.vocab))
    need = cfg.steps * cfg.batch_size
    pairs[:] = untruncated(pairs, tok, cfg)[:need]
    if len(pairs) < need:
        raise UserError(f"perf: only {len(pairs)} rows fit in seq_len={cfg.seq_len} untruncated; "
                        f"steps*batch_size={need} are needed (raise seq_len or vocab, or lower steps)")
    config = scratch_config(arch(cfg), len(tok), {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id})
    torch.manual_seed(0)
    return tok, AutoModelForCausalLM.from_config(config)


def arch(cfg) -> dict:
    """The model's shape: ``model=NAME``'s yaml (a from-scratch config such as pythia-1b-scratch), its context
    at least seq_len; else a Llama of ``hidden`` x ``layers`` with heads of 64 dimensions."""
    if cfg.model:
        shape = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{cfg.model}.yaml").arch)
        return shape | {"max_positions": max(shape["max_positions"], int(cfg.seq_len))}
    heads = max(1, int(cfg.hidden) // 64)
    return {"hidden_size": int(cfg.hidden), "intermediate_size": 4 * int(cfg.hidden), "num_layers": int(cfg.layers),
            "num_heads": heads, "max_positions": int(cfg.seq_len)}


def untruncated(pairs: list[dict], tok, cfg) -> list[dict]:
    """The rows that fit in seq_len without truncation (prompt at most half of it)."""
    from prefbench.data.prepare import Renderer

    r = Renderer(tok, int(cfg.seq_len), int(cfg.seq_len) // 2)

    def fits(row):
        p = len(r.ids(r.prompt_text(row["prompt"])))
        return p <= cfg.seq_len // 2 and all(
            p + len(r.ids(r.completion_text(row["prompt"], row[k]))) <= cfg.seq_len for k in ("chosen", "rejected"))
    return [row for row in pairs if fits(row)]
