"""conf -> data -> model: what a job needs before training, shared by the (task, model, seed) group.

The tokenizer, the base model and the SFT policy are cached stages, so a sweep builds each once. The
base model is shared by every seed (``stages.base.seed``); the data split, the SFT stage, the run's
training and its sampling are drawn per seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from prefbench.data.prepare import Renderer, TokenizedData, load_clean, render
from prefbench.data.sources import corpus_limits, corpus_rows, task_spec
from prefbench.data.tokenizer import train_bpe
from prefbench.data.views import View, build_view, pad_batch
from prefbench.io.errors import UserError
from prefbench.io.stages import build_stage, stage_key
from prefbench.job.config import method_from_config
from prefbench.model.compute import release_memory
from prefbench.model.logprobs import sequence_logps
from prefbench.model.models import (attach_lora, from_scratch, load_model, load_pretrained, model_folder, n_params,
                                    save_model)
from prefbench.train.trainer import TrainSpec, train
from prefbench.methods import build_method


def train_spec(cfg: DictConfig, **overrides) -> TrainSpec:
    base = OmegaConf.to_container(cfg.trainer, resolve=True)
    return TrainSpec(**(base | {"seed": int(cfg.seed)} | overrides))


def run_spec(cfg: DictConfig, init: str, method=None, data: TokenizedData | None = None) -> TrainSpec:
    """A run's training. With ``budget=matched`` a run that starts from the base model (SFT, ORPO) also
    trains for the SFT stage's length, so every method gets the same optimizer steps from base as
    DPO/IPO/KTO get from the SFT stage plus their own training; ``budget=per_stage`` leaves it alone.
    ``budget=matched_flops`` is ``matched`` with an online ``method``'s steps from ``flop_matched_steps``."""
    spec, stage = train_spec(cfg), cfg.stages.sft
    if cfg.budget == "matched_flops" and method is not None and method.needs_samples:
        return replace(spec, steps=flop_matched_steps(cfg, method, data))
    if init != "base" or cfg.budget == "per_stage":
        return spec
    if spec.epochs and stage.epochs:
        return replace(spec, epochs=spec.epochs + stage.epochs)
    return replace(spec, steps=spec.steps + stage.steps)


def planned_steps(cfg: DictConfig) -> int | None:
    """The optimizer steps a run's config plans (its method's init, its budget); None when they follow from
    the data (epochs, resolved in the trainer; an online run under budget=matched_flops)."""
    method = method_from_config(cfg.method, cfg.strength)
    if cfg.budget == "matched_flops" and method.needs_samples:
        return None
    spec = run_spec(cfg, method.init if cfg.init == "auto" else cfg.init)
    return None if spec.epochs else spec.steps


def _mean_tokens(cfg: DictConfig, data: TokenizedData) -> tuple[float, float]:
    """Mean tokens of a training pair (both sequences, prompt included) and of its chosen sequence."""
    if data.kind != "paired":
        raise UserError("budget=matched_flops and cost/flops_vs_offline measure online runs against the offline "
                        "run on pairs; this task's data is unpaired")
    view = build_view("paired", data.kind, data.train, int(cfg.seed))
    rows = range(len(view))
    return view.n_tokens(rows) / len(view), view.n_tokens(rows, roles=("chosen",)) / len(view)


def offline_flops(cfg: DictConfig, data: TokenizedData, n_params: int) -> float:
    """The training FLOPs of the offline run from the SFT stage (DPO's): ``trainer.steps`` steps of B pairs,
    6N per trained token (Kaplan et al. 2020), both sequences of a pair with their prompt."""
    pair, _ = _mean_tokens(cfg, data)
    return 6 * n_params * int(cfg.trainer.steps) * int(cfg.trainer.batch_size) * int(cfg.trainer.grad_accum) * pair


def flop_matched_steps(cfg: DictConfig, method, data: TokenizedData) -> int:
    """budget=matched_flops: the steps of an online run whose FLOPs equal ``offline_flops``. A step trains the
    B·k samples of its B prompts (6N a token); each rollout, shared by ``updates_per_rollout`` steps, samples
    them (2N a token: prefill and new tokens) and, with a reference, scores them (2N); N and B cancel. A
    sample's length is estimated by its prompt and chosen response, which the SFT stage imitates; what was
    spent is in cost/flops_vs_offline."""
    pair, sample = _mean_tokens(cfg, data)
    rollout = (2 + 2 * method.needs_reference) / method.updates_per_rollout
    per_step = method.samples_per_prompt * sample * (6 + rollout)
    return max(1, math.floor(int(cfg.trainer.steps) * 6 * pair / per_step))


@dataclass
class Group:
    cfg: DictConfig
    tokenizer: object
    data: TokenizedData
    base: str  # a stage folder, a hub id or a local path
    _sft: Path | None = field(default=None, init=False, repr=False)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def name(self) -> str:
        return f"{self.cfg.task.name}/{self.cfg.model.name}/seed{self.cfg.seed}"

    def sft_stage(self) -> Path:
        """The SFT stage: SFT from base on the chosen completions of the train split. Built (or found in
        the stage cache) on the first call; later calls return the same folder."""
        if self._sft is None:
            self._sft = self._build_sft()
        return self._sft

    def _build_sft(self) -> Path:
        cfg = self.cfg
        lora = cfg.model.get("lora")
        spec = {"base": self.base, "task": task_spec(cfg.task), "seed": int(cfg.seed),
                "train": OmegaConf.to_container(cfg.stages.sft, resolve=True),
                "lora": OmegaConf.to_container(lora) if lora else None}

        def build(tmp: Path) -> dict:
            model = load_model(self.base)
            model = attach_lora(model, lora, int(cfg.seed)) if lora else model
            view = build_view("sft", self.data.kind, self.data.train, int(cfg.seed))
            stats = train(model, build_method("sft"), view, train_spec(cfg, **spec["train"], checkpoint_every=0),
                          tmp, self.pad_id, desc=f"sft stage {self.name}")
            save_model(model.merge_and_unload() if lora else model, self.tokenizer, tmp)
            return {"train": stats}

        stage = build_stage(cfg.cache_dir, "sft", spec, build)
        release_memory()
        return stage


def prepare(cfg: DictConfig) -> Group:
    """Rows are read, cleaned and split first, so a dataset without valid rows stops before any stage
    is built, and the tokenizer and base stages see cleaned training rows only."""
    clean, source = load_clean(cfg.task, int(cfg.seed))
    if cfg.model.source == "pretrained" and cfg.model.get("gguf_file"):
        base = str(_gguf_stage(cfg))
        tokenizer = AutoTokenizer.from_pretrained(base)
    elif cfg.model.source == "pretrained":
        model, tokenizer = load_pretrained(cfg.model.path, cfg.model)
        del model
        base = str(cfg.model.path)
    else:
        tokenizer, base = _scratch_stages(cfg, clean.train)
    return Group(cfg, tokenizer, render(clean, tokenizer, cfg.task, source), base)


def _gguf_stage(cfg: DictConfig) -> Path:
    """A GGUF model, dequantized once into a cached safetensors folder with its tokenizer and chat template:
    every stage and run then starts from that folder."""
    folder = Path(model_folder(str(cfg.model.path)))
    file = folder / str(cfg.model.gguf_file)
    if not file.is_file():
        raise UserError(f"model.gguf_file={cfg.model.gguf_file}: no such file in {folder}")
    spec = {"gguf": str(file.resolve()), "bytes": file.stat().st_size}

    def build(tmp: Path) -> dict:
        model, tokenizer = load_pretrained(str(folder), cfg.model)
        save_model(model, tokenizer, tmp)
        return {"n_params": n_params(model)}

    stage = build_stage(cfg.cache_dir, "gguf", spec, build)
    release_memory()
    return stage


def _scratch_stages(cfg: DictConfig, train_rows: list[dict]):
    tok_spec = {"task": task_spec(cfg.task), "vocab_size": int(cfg.task.vocab_size)}
    if cfg.task.get("source", "builtin") != "builtin":  # the corpus is the train split, which the seed draws
        tok_spec["corpus"] = {"rows": "train split", "split_seed": int(cfg.seed), "limits": corpus_limits(cfg.task)}
    corpus = corpus_rows(cfg.task, train_rows)

    def build_tokenizer(tmp: Path) -> dict:
        texts = [_text(r["prompt"]) + " " + _text(r["completion"]) for r in corpus]
        train_bpe(texts, int(cfg.task.vocab_size)).save_pretrained(tmp)
        return {}

    tok_dir = build_stage(cfg.cache_dir, "tokenizer", tok_spec, build_tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    train_cfg = OmegaConf.to_container(cfg.stages.base, resolve=True)
    train_cfg["seed"] = int(train_cfg.get("seed", cfg.seed))  # conf/stages: one base model for every seed
    base_spec = {"tokenizer": stage_key("tokenizer", tok_spec), "arch": OmegaConf.to_container(cfg.model.arch),
                 "train": train_cfg}

    def build_base(tmp: Path) -> dict:
        model = from_scratch(cfg.model, tokenizer, train_cfg["seed"])
        view = corpus_view(corpus, tokenizer, cfg.task)
        stats = train(model, build_method("sft"), view, train_spec(cfg, **base_spec["train"], checkpoint_every=0),
                      tmp, tokenizer.pad_token_id, desc=f"base stage {cfg.model.name}")
        save_model(model, tokenizer, tmp)
        return {"train": stats, "n_params": n_params(model)}

    return tokenizer, str(build_stage(cfg.cache_dir, "base", base_spec, build_base))


def _text(value) -> str:
    return value if isinstance(value, str) else " ".join(str(m.get("content", "")) for m in value if isinstance(m, dict))


def corpus_view(corpus: list[dict], tokenizer, task_cfg) -> View:
    """Language-model pretraining: every token of each templated conversation is scored."""
    r = Renderer(tokenizer, int(task_cfg.max_length), int(task_cfg.max_length))
    examples = []
    for row in corpus:
        prompt = [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else row["prompt"]
        completion = row["completion"]
        completion = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
        ids = r.ids(r.prompt_text(prompt) + r.completion_text(prompt, completion))[: int(task_cfg.max_length)]
        examples.append({"chosen": ([tokenizer.bos_token_id], ids)})
    return View("sft", examples)


def logprob_probe(view: View, pad_id: int, n: int = 32):
    """Mean summed log-prob of held-out chosen and rejected completions: the log-prob dynamics,
    measured on the same pairs for every method."""
    indices = list(range(min(n, len(view))))

    @torch.no_grad()
    def probe(model) -> dict:
        if not indices:
            return {}
        model.eval()
        device = next(model.parameters()).device
        stats = sequence_logps(model, pad_batch(view, indices, ("chosen", "rejected"), pad_id).to(device))
        return {f"probe/logps_{role}": float(s.sum.mean()) for role, s in stats.items()}

    return probe


def init_checkpoint(cfg: DictConfig, group: Group, method) -> tuple[str, str]:
    """Where a run starts: ('sft', the group's SFT stage) or ('base', the base model)."""
    init = method.init if cfg.init == "auto" else cfg.init
    return init, str(group.sft_stage() if init == "sft" else group.base)


def build_policy(cfg: DictConfig, start):
    """The model a run trains: its init checkpoint, with LoRA adapters when ``model.lora`` is set."""
    model = load_model(start)
    return attach_lora(model, cfg.model.lora, int(cfg.seed)) if cfg.model.get("lora") else model
