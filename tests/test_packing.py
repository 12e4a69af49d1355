"""Padding-free forwards give the log-probs and gradients of one sequence at a time, for every model
family the configs name; models the packed attention cannot serve exactly keep the padded layout."""
import json

import pytest
import torch
import transformers

from prefbench.data.views import View, pad_batch
from prefbench.model.logprobs import length_groups, sequence_logps
from prefbench.model.packing import can_pack, is_packed, packed_attention
from prefbench.train.trainer import Sources, TrainSpec, enable_checkpointing, train
from prefbench.methods import build_method

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64)
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**TINY, num_key_value_heads=2),  # grouped-query attention
    "qwen2": lambda: transformers.Qwen2Config(**TINY, num_key_value_heads=2),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**TINY),
    "opt": lambda: transformers.OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                          num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32),
}
VIEW = View("paired", [
    {"chosen": ([5, 6, 7], [8, 9, 10, 11]), "rejected": ([5, 6, 7], [12])},
    {"chosen": ([5], [8, 9, 10, 3, 3, 3, 3, 3, 3, 3, 3]), "rejected": ([5], [14, 15, 16, 17, 18])},
    {"chosen": ([20, 21, 22, 23, 24, 25], [30, 31]), "rejected": ([20, 21, 22, 23, 24, 25], [40, 41, 42])},
])


def make(family: str, **overrides):
    torch.manual_seed(0)
    config = FAMILIES[family]()
    for k, v in overrides.items():
        setattr(config, k, v)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def one_at_a_time(model, view: View) -> torch.Tensor:
    """Summed completion log-probs, each sequence in its own forward: no padding, no packing."""
    out = []
    for role in ("chosen", "rejected"):
        for ex in view.examples:
            p, c = ex[role]
            logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1]
            out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).sum())
    return torch.stack(out)


def stats(model, packed: bool) -> torch.Tensor:
    batch = pad_batch(VIEW, [0, 1, 2], ("chosen", "rejected"), 0)
    with packed_attention(model, enabled=packed):
        assert is_packed(model) == packed
        s = sequence_logps(model, batch)
    return torch.cat([s["chosen"].sum, s["rejected"].sum])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_and_padded_logps_equal_one_sequence_at_a_time(family):
    model = make(family).eval()
    assert can_pack(model)
    expected = one_at_a_time(model, VIEW)
    for packed in (True, False):
        assert torch.allclose(stats(model, packed), expected, atol=1e-5), (family, packed)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_packed_gradients_with_checkpointing_equal_padded_gradients(family):
    """The backward re-runs checkpointed layers; they must see the packed attention again."""
    grads = []
    for packed, checkpointing in ((False, False), (True, True)):
        model = make(family).train()
        if checkpointing:
            enable_checkpointing(model)
            assert [m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")
                    and not isinstance(m, transformers.PreTrainedModel)] == [True, False]  # all but the last layer
        batch = pad_batch(VIEW, [0, 1, 2], ("chosen", "rejected"), 0)
        with packed_attention(model, enabled=packed):
            s = sequence_logps(model, batch)
            (s["chosen"].sum - 0.5 * s["rejected"].sum).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


@pytest.mark.parametrize("reason,overrides", [
    ("eager attention", {"_attn_implementation": "eager"}),
    ("sliding window", {"sliding_window": 4, "use_sliding_window": True}),
])
def test_models_packing_cannot_serve_keep_the_padded_layout(reason, overrides):
    model = make("qwen2").eval()
    for k, v in overrides.items():
        setattr(model.config, k, v)
    assert not can_pack(model), reason
    with packed_attention(model):
        assert not is_packed(model)
    assert model.config._attn_implementation == overrides.get("_attn_implementation", "sdpa")


def test_an_unpacked_forward_inside_the_block_is_refused():
    """No attention mask is built under the packed backend: a padded forward there must not run."""
    model = make("llama").eval()
    with packed_attention(model), pytest.raises(RuntimeError, match="without packed inputs"):
        model(input_ids=torch.tensor([[1, 2, 3, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0]]))


def test_attention_is_restored_after_an_error():
    model = make("llama")
    with pytest.raises(RuntimeError), packed_attention(model):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_training_losses_agree_across_layouts(tmp_path):
    losses = []
    for packed in (True, False):
        model = make("llama")
        spec = TrainSpec(steps=4, batch_size=2, lr=1e-2, warmup_ratio=0.0, scheduler="constant", log_every=1,
                         progress=False, save_final=False, packing=packed, gradient_checkpointing=True)
        ref = build_method("dpo")
        from prefbench.model.logprobs import score_view
        from prefbench.train.refcache import ReferenceLogps

        reference = ReferenceLogps(score_view(model, VIEW, 0, 8, "cpu"))
        train(model, ref, VIEW, spec, tmp_path / str(packed), pad_id=0, sources=Sources(reference))
        assert model.config._attn_implementation == "sdpa"
        rows = (tmp_path / str(packed) / "metrics.jsonl").read_text().splitlines()
        losses.append([json.loads(r)["loss"] for r in rows])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_length_groups_partition_the_rows():
    lengths = [10, 200, 12, 190, 11, 205, 100]
    groups = length_groups(lengths, overhead=64)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert len(groups) > 1  # the short and long rows are not padded to one width
    assert length_groups(lengths, overhead=10**9) == [sorted(range(len(lengths)), key=lengths.__getitem__)]
