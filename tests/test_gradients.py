"""One optimizer step of DPO, IPO and ORPO through the real trainer raises log p(chosen) and lowers
log p(rejected) on a toy pair."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefbench.data.views import View
from prefbench.model.logprobs import score_view
from prefbench.train.refcache import ReferenceLogps
from prefbench.train.trainer import Sources, TrainSpec, train
from prefbench.methods import build_method

TOY = View("paired", [{"chosen": ([1, 2, 3], [4, 5, 6]), "rejected": ([1, 2, 3], [7, 8, 9])},
                      {"chosen": ([1, 3, 2], [4, 6, 5]), "rejected": ([1, 3, 2], [8, 7, 9])}])


@pytest.mark.parametrize("name", ["dpo", "ipo", "orpo"])
def test_one_step_separates_chosen_from_rejected(name, tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))
    before = score_view(model, TOY, 0, 8, "cpu")
    method = build_method(name)
    ref = ReferenceLogps(before) if method.needs_reference else None
    spec = TrainSpec(steps=1, batch_size=2, lr=1e-2, warmup_ratio=0.0, scheduler="constant", progress=False)
    train(model, method, TOY, spec, tmp_path, pad_id=0, sources=Sources(ref))
    after = score_view(model, TOY, 0, 8, "cpu")
    assert (after["chosen.sum"] > before["chosen.sum"]).all()
    assert (after["rejected.sum"] < before["rejected.sum"]).all()


def test_schedule_counts_optimizer_steps_under_gradient_accumulation(tmp_path):
    import json

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))
    spec = TrainSpec(steps=4, batch_size=1, grad_accum=2, lr=1.0, warmup_ratio=0.0, scheduler="linear", log_every=1,
                     progress=False)
    train(model, build_method("sft"), TOY, spec, tmp_path, pad_id=0)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [round(r["lr"], 6) for r in rows] == [0.75, 0.5, 0.25, 0.0]
