"""Trains every method a few steps on a tiny float64 Llama through prefbench.train.trainer.train with a global
batch of B sequences: run by tests/test_distributed.py as one process, and under torchrun as two
processes of B/2 each. Writes, per method, metrics.jsonl (the trainer's), the gradients of the first
optimizer step and the final parameters (rank 0), and what each rank saw (rank<r>.json). Online methods train
on a Replay rollout: each prompt's samples and judge scores at a step are fixed by the prompt and the step,
so one process and two draw the same ones (the real sampler keys its stream by the micro-batch), and the
reference scores them for real.

usage: python tests/distributed_worker.py OUT_DIR [METHOD ...]
"""
import json
import os
import random
import sys
from pathlib import Path

import torch
from datasets import Dataset
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import LlamaConfig, LlamaForCausalLM

from prefbench.data.views import View, build_view
from prefbench.model.logprobs import score_view
from prefbench.io.errors import UserError
from prefbench.train.refcache import ReferenceLogps, cached
from prefbench.train.trainer import Sources, TrainSpec, train
from prefbench.methods import build_method

B, STEPS = 8, 3


def pairs(n: int) -> Dataset:
    """Prompts and completions of random lengths, so token-mean losses weigh the shards unequally."""
    rng = random.Random(0)
    ids = lambda lo, hi: [rng.randrange(3, 48) for _ in range(rng.randint(lo, hi))]  # noqa: E731
    return Dataset.from_dict({"prompt_ids": [ids(1, 4) for _ in range(n)],
                              "chosen_ids": [ids(1, 9) for _ in range(n)],
                              "rejected_ids": [ids(1, 9) for _ in range(n)]})


def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0)
    return LlamaForCausalLM(config).double()


class Replay:
    """``rollout(model, indices, step)``: k samples per prompt of random lengths and random judge scores, seeded
    by (prompt, step); the reference model's statistics of them."""

    def __init__(self, method, view):
        self.method, self.prompts, self.reference = method, view, model().eval()

    def __call__(self, policy, indices, step):
        examples, scores = [], []
        for i in indices:
            rng = random.Random(1000 * step + i)
            for _ in range(self.method.samples_per_prompt):
                completion = [rng.randrange(3, 48) for _ in range(rng.randint(1, 7))]
                examples.append({"samples": (self.prompts.examples[i]["samples"][0], completion)})
                scores.append(rng.uniform(-1, 1))
        view = View("online", examples, scores={"samples": scores})
        return view, ReferenceLogps(score_view(self.reference, view, 0, 64, "cpu", statistics=self.method.statistics))


def main(out: Path, names: list[str]) -> None:
    grads: list = []

    def first_step(optimizer, args, kwargs):  # the synchronised gradients the first optimizer step applies
        if not grads:
            grads.extend(p.grad.clone() for group in optimizer.param_groups for p in group["params"])

    register_optimizer_step_pre_hook(first_step)
    world = int(os.environ.get("WORLD_SIZE", 1))
    for name in names:
        method = build_method(name, **({"updates_per_rollout": 2} if name == "ppo" else {}))
        view = build_view(method.view, "paired", pairs(STEPS * B), seed=0)
        run = out / name
        seen = {"world": world}
        reference = None
        if method.needs_reference and not method.needs_samples:
            ref, seen["reference_cache_hit"] = cached(out / "cache", f"init-{name}", view, model, 0, 64, "cpu",
                                                      statistics=method.statistics)
            offset = torch.Generator().manual_seed(1)  # a reference unlike the policy: KTO's z differs per shard
            reference = ReferenceLogps({k: v - 3 * torch.rand(v.shape, generator=offset, dtype=v.dtype)
                                        if k.endswith(".sum") else v for k, v in ref.tensors.items()})
        policy = model()
        spec = TrainSpec(steps=STEPS, batch_size=B // world, lr=1e-2, warmup_ratio=0.0, scheduler="constant",
                         max_grad_norm=0.0, log_every=1, progress=False)
        grads.clear()
        rollout = Replay(method, view) if method.needs_samples else None
        stats = train(policy, method, view, spec, run, pad_id=0, sources=Sources(reference, rollout=rollout))
        seen["train_tokens"] = stats["train_tokens"]
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        (run / f"rank{rank}.json").write_text(json.dumps(seen))
        if rank == 0:
            torch.save({"grads": grads, "params": [p.detach() for p in policy.parameters()]}, run / "tensors.pt")


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]), sys.argv[2:])
    except UserError as exc:
        print(f"prefbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
