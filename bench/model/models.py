"""Models: tiny Llama configs built from scratch, or any hub id / local path; loading and saving our own."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bench.io.errors import UserError
from bench.io.hub import friendly_hub_errors


def device() -> str:
    """Where evaluation, judges and the reference pass run: the GPU when there is one (training's device is
    accelerate's choice, ``bench.train.trainer``)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def from_scratch(cfg: DictConfig, tokenizer, seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama with the sizes in ``cfg.arch`` and the tokenizer's vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.arch.hidden_size,
        intermediate_size=cfg.arch.intermediate_size,
        num_hidden_layers=cfg.arch.num_layers,
        num_attention_heads=cfg.arch.num_heads,
        num_key_value_heads=cfg.arch.num_heads,
        max_position_embeddings=cfg.arch.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def attach_lora(model, lora: DictConfig):
    """Wrap ``model`` with fresh LoRA adapters (peft). The frozen weights under the adapters are the
    reference: ``model.disable_adapter()`` gives it back without a second copy in memory."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise UserError("model.lora needs peft: pip install 'prefbench[lora]'") from exc
    targets = lora.get("target_modules", "all-linear")
    config = LoraConfig(r=int(lora.get("r", 16)), lora_alpha=int(lora.get("alpha", 32)),
                        lora_dropout=float(lora.get("dropout", 0.0)), task_type="CAUSAL_LM",
                        target_modules=targets if isinstance(targets, str) else list(targets))
    return get_peft_model(model, config)


def load_pretrained(path: str, cfg: DictConfig, dtype: torch.dtype | None = None):
    """Model and tokenizer from a hub id or a local directory (safetensors only, no remote code by default)."""
    kwargs = dict(trust_remote_code=bool(cfg.get("trust_remote_code", False)), use_safetensors=True)
    with friendly_hub_errors("model", path):
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, attn_implementation=cfg.get("attn_implementation", "sdpa"), **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=kwargs["trust_remote_code"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise UserError(f"model {path}: tokenizer has neither a pad nor an eos token")
    return model, tokenizer


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_model(path: str | Path):
    """A causal LM from a stage or checkpoint folder of ours, a local model folder or a hub id."""
    if (Path(path) / "config.json").exists():
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True)
    return load_pretrained(str(path), OmegaConf.create({}))[0]


def save_model(model, tokenizer, path: Path) -> None:
    shutil.rmtree(path / "checkpoint", ignore_errors=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def make_value_head(model, seed: int) -> torch.nn.Linear:
    """The trainer's value head for a method that asks for ``values`` (PPO's critic): a linear map of the
    policy's last hidden state (the LM head's input) to a scalar, sharing the policy's body as TRL's
    ``AutoModelForCausalLMWithValueHead`` does. Weights N(0, 1/sqrt(d + 1)), bias 0: the head initialisation
    of Ziegler et al. 2019 (lm-human-preferences), drawn from its own seeded generator."""
    d = model.get_output_embeddings().in_features
    head = torch.nn.Linear(d, 1)
    with torch.no_grad():
        head.weight.normal_(0, 1 / math.sqrt(d + 1), generator=torch.Generator().manual_seed(seed))
        head.bias.zero_()
    return head
