"""One trial of one side: prefbench's trainer or TRL's, on the rows, model and optimizer settings both share.
Each side is timed around its own training call (``train`` / ``trainer.train``), after its data and
reference log-probs are prepared, and credited with the tokens it trains (non-padding tokens of its trained
sequences as it tokenizes them; KTO's no-grad KL sequences excluded on both sides)."""
from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from prefbench.perf import online
from prefbench.perf.inputs import rows, setup
from prefbench.perf.measure import PeakRSS, profiled, timed
from prefbench.perf.trl_adapters import ADAPTERS, paired
from prefbench.methods import registry


def method_params(cfg, method: str) -> dict:
    """The hyper-parameters both sides get: perf's ``beta`` for the adapter's field, else the method's defaults."""
    adapter = ADAPTERS.get(method)
    key = adapter.strength_key if adapter else None
    return {key: cfg.beta} if key else {}


def run_prefbench(cfg, method: str) -> dict:
    if registry()[method].needs_samples:
        return online.run_prefbench(cfg, method, method_params(cfg, method))
    from prefbench.data.prepare import tokenize
    from prefbench.data.views import build_view
    from prefbench.model.logprobs import score_view
    from prefbench.model.models import n_params
    from prefbench.train.refcache import ReferenceLogps
    from prefbench.train.trainer import Sources, TrainSpec, train
    from prefbench.methods import build_method

    pairs = rows(cfg)
    tok, model = setup(cfg, pairs)
    shape = ADAPTERS[method].rows if method in ADAPTERS else paired
    data_cfg = OmegaConf.create({"eval_size": 0, "max_length": cfg.seq_len, "max_prompt_length": cfg.seq_len // 2})
    data = tokenize(shape(pairs), tok, data_cfg, 0, "perf", None, shuffle=False)  # the rows' order, as TRL's
    m = build_method(method, **method_params(cfg, method))
    view = build_view(m.view, data.kind, data.train, 0)
    ref = ReferenceLogps(score_view(model, view, tok.pad_token_id, 32, "cpu", statistics=m.statistics)) \
        if m.needs_reference else None
    spec = TrainSpec(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_ratio=0.0, scheduler="constant",
                     log_every=1, shuffle=False, progress=False, save_final=False,
                     gradient_checkpointing=bool(cfg.gradient_checkpointing), packing=bool(cfg.packing))
    out = {"params": {f.name: getattr(m, f.name) for f in dataclasses.fields(m)},
           "n_params": n_params(model), "vocab": len(tok)}
    # a method that reads the reference's per-token distribution (TDPO's reference_kl) runs the initial model beside
    reference_model = copy.deepcopy(model).eval() if "reference_kl" in m.statistics else None
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as mem, profiled(cfg, "prefbench", method), timed(out):
        stats = train(model, m, view, spec, Path(tmp), tok.pad_token_id, Sources(ref, reference_model))
        losses = [json.loads(line)["loss"] for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return out | {"tokens": stats["train_tokens"], "peak_mb": mem.mb, "losses": losses}


def run_trl(cfg, method: str) -> dict:
    if registry()[method].needs_samples:
        return online.run_trl(cfg, method, method_params(cfg, method))
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    adapter = ADAPTERS[method]
    pairs = rows(cfg)
    tok, model = setup(cfg, pairs)
    cuda = torch.cuda.is_available()
    common = dict(per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr, lr_scheduler_type="constant",
                  warmup_steps=0, max_steps=cfg.steps, logging_steps=1, save_strategy="no", report_to=[],
                  use_cpu=not cuda, disable_tqdm=True, seed=0, max_grad_norm=1.0, weight_decay=0.0, bf16=cuda,
                  gradient_checkpointing=bool(cfg.gradient_checkpointing), max_length=cfg.seq_len)
    beta = {"beta": cfg.beta} if adapter.strength_key else {}
    losses = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    class Ordered(adapter.load("trainer")):  # the rows' own order, as prefbench sees them
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    with tempfile.TemporaryDirectory() as tmp:
        args = adapter.load("config")(output_dir=tmp, **common, **beta, **adapter.config_kwargs)
        data = (adapter.trl_rows or adapter.rows)(pairs)
        trainer = Ordered(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tok,
                          callbacks=[Losses()])
        out = {"tokens": trained_tokens(trainer, cfg)}  # also precomputes reference log-probs, before the clock
        with PeakRSS() as mem, profiled(cfg, "trl", method), timed(out):
            trainer.train()
    return out | {"peak_mb": mem.mb, "losses": losses}


def trained_tokens(trainer, cfg) -> int:
    """Non-padding tokens of the sequences the trainer will train on (its own tokenization)."""
    total = 0
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i >= cfg.steps:
            break
        total += int(batch["attention_mask"].sum()) if "attention_mask" in batch else sum(
            int(batch[k].sum()) for k in batch if k.endswith("attention_mask") and not k.startswith("KL"))
    return total
