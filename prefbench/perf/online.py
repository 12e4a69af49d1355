"""``prefbench perf`` for online methods: a whole step (sampling, judging, the reference's pass, the update) of
prefbench's trainer against TRL's ``GRPOTrainer`` / ``RLOOTrainer``.

Both sides get the same prompts (the rows' prompts rendered to text once, so both tokenize the same ids), the same
reward function (the built-in review task's gold reward), the same model, the same sampling settings (temperature
1, top-p 1, top-k off, ``samples`` per prompt, at most ``max_new_tokens`` new tokens) and the same optimizer
settings; each side is timed around its training call and credited with the prompt and completion tokens of the
sequences it sampled and trained on (through EOS), as it counts them.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefbench.io.errors import UserError
from prefbench.perf.inputs import rows, setup
from prefbench.perf.measure import PeakRSS, profiled, timed


class GoldReward:
    """The review task's gold reward of (rendered prompt, completion text); a judge (``score``) and a TRL reward
    function (``__call__``) at once."""

    def __init__(self, users: dict[str, str]):
        from prefbench.data.tasks import get_task

        self.task, self.users = get_task("reviews"), users
        self.__name__ = "gold"

    def score(self, prompts, completions) -> list[float]:
        return [self.task.reward(self.users[p], c) for p, c in zip(prompts, completions)]

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return self.score(prompts, completions)


def prompts(cfg, tok) -> tuple[list[str], dict[str, str]]:
    """One batch of ``batch_size`` prompts per step, rendered to text, and each one's user-visible text."""
    from prefbench.data.prepare import Renderer

    if cfg.data != "reviews":
        raise UserError("perf: online methods need a task with a gold reward: data=reviews")
    r = Renderer(tok, int(cfg.seq_len), int(cfg.seq_len) // 2)
    rendered, users = [], {}
    for row in rows(cfg)[: cfg.steps * cfg.batch_size]:
        text = r.prompt_text(row["prompt"])
        rendered.append(text)
        users[text] = row["prompt"][-1]["content"]
    return rendered, users


def run_prefbench(cfg, method: str, params: dict) -> dict:
    import copy
    import dataclasses

    from prefbench.data.views import View
    from prefbench.eval.rollout import Rollout
    from prefbench.eval.spec import SamplingSpec
    from prefbench.model.models import n_params
    from prefbench.train.trainer import Sources, TrainSpec, train
    from prefbench.methods import build_method, registry

    tok, model = setup(cfg, rows(cfg))
    texts, users = prompts(cfg, tok)
    if "samples_per_prompt" in {f.name for f in dataclasses.fields(registry()[method])}:
        params = params | {"samples_per_prompt": int(cfg.samples)}  # else the method fixes it (online DPO: 2)
    m = build_method(method, **params)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    view = View("online", [{"samples": (p, [tok.eos_token_id])} for p in ids])
    sampling = SamplingSpec(1.0, 1.0, int(cfg.samples), int(cfg.batch_size), int(cfg.max_new_tokens))
    rollout = Rollout(m, view, dict(zip(map(tuple, ids), texts)), tok, GoldReward(users), sampling,
                      copy.deepcopy(model).eval() if m.needs_reference else None, seed=0, device="cpu")
    spec = TrainSpec(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_ratio=0.0, scheduler="constant",
                     log_every=1, shuffle=False, progress=False, save_final=False, packing=bool(cfg.packing),
                     gradient_checkpointing=bool(cfg.gradient_checkpointing))
    out = {"params": params, "n_params": n_params(model), "vocab": len(tok)}
    with tempfile.TemporaryDirectory() as tmp:
        with PeakRSS() as mem, profiled(cfg, "prefbench", method), timed(out):
            stats = train(model, m, view, spec, Path(tmp), tok.pad_token_id, Sources(rollout=rollout))
        losses = [json.loads(line)["loss"] for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return out | {"tokens": stats["train_tokens"], "peak_mb": mem.mb, "losses": losses,
                  "generated_tokens": rollout.generated_tokens, "rollout_seconds": rollout.seconds}


def run_trl(cfg, method: str, params: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from prefbench.perf.trl_adapters import ADAPTERS

    adapter = ADAPTERS[method]
    tok, model = setup(cfg, rows(cfg))
    texts, users = prompts(cfg, tok)
    counted = {"tokens": 0, "generated": 0}
    losses = []

    class Counted(adapter.load("trainer")):  # the tokens of the sequences it samples and trains on
        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            counted["tokens"] += int(batch["prompt_mask"].sum() + batch["completion_mask"].sum())
            counted["generated"] += int(batch["completion_mask"].sum())
            return batch

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "policy")  # TRL builds its reference from the policy's path (beta > 0)
        tok.save_pretrained(Path(tmp) / "policy")
        args = adapter.load("config")(
            output_dir=tmp, per_device_train_batch_size=int(cfg.batch_size) * int(cfg.samples),
            num_generations=int(cfg.samples), max_completion_length=int(cfg.max_new_tokens), temperature=1.0,
            top_p=1.0, top_k=0, learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0,
            max_steps=cfg.steps, logging_steps=1, save_strategy="no", report_to=[], use_cpu=not cuda, bf16=cuda,
            disable_tqdm=True, seed=0, max_grad_norm=1.0, weight_decay=0.0, shuffle_dataset=False,
            gradient_checkpointing=bool(cfg.gradient_checkpointing), **params, **adapter.config_kwargs)
        trainer = Counted(model=str(Path(tmp) / "policy"), reward_funcs=GoldReward(users), args=args,
                          train_dataset=Dataset.from_list([{"prompt": t} for t in texts]), processing_class=tok,
                          callbacks=[Losses()])
        out = {}
        with PeakRSS() as mem, profiled(cfg, "trl", method), timed(out):
            trainer.train()
    return out | {"tokens": counted["tokens"], "peak_mb": mem.mb, "losses": losses,
                  "generated_tokens": counted["generated"]}
