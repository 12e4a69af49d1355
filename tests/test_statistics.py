"""The statistics a method may ask for (``prefbench.methods.base.STATISTICS``) equal their definitions computed from the
model's full logits, in both layouts the trainer uses; the reference cache keeps the cacheable ones; a method
that asks for ``reference_kl`` trains with the reference beside the policy."""
import copy

import pytest
import torch

from prefbench import methods
from prefbench.data.views import build_view, pad_batch
from prefbench.model.logprobs import CACHEABLE, sequence_logps
from prefbench.model.models import make_value_head
from prefbench.train import refcache
from prefbench.train.batches import forward
from prefbench.train.trainer import Sources, TrainSpec, train
from tests.test_trl_parity import PAIRS, ROWS, logps, model, tok  # noqa: F401


def full(model, batch, value_head=None):
    """(B, L-1, V) log-softmax of the next token at every position, the log-prob of the actual one, and with
    ``value_head`` its value of the last hidden state at every position."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    vocab = torch.log_softmax(out.logits[:, :-1].float(), -1)
    values = value_head(out.hidden_states[-1][:, :-1])[..., 0] if value_head is not None else None
    return vocab, vocab.gather(-1, batch.input_ids[:, 1:, None])[..., 0], values


def per_token(values, mask):
    """Row b's values at its mask positions, left-aligned and right-padded with 0."""
    rows = [values[b][mask[b].bool()] for b in range(len(values))]
    width = max(len(r) for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])


@pytest.fixture(params=["packed", "padded"])
def layout(request):
    from prefbench.model.packing import packed_attention

    def run(model, batch, statistics, reference=None, value_head=None):
        with packed_attention(model, enabled=request.param == "packed"):
            return sequence_logps(model, batch, statistics=statistics, reference=reference, value_head=value_head)
    return run


def test_every_statistic_is_its_definition_on_full_logits(model, tok, layout):
    torch.manual_seed(1)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    head = make_value_head(model, 0)
    stats = layout(model, batch, frozenset(methods.base.STATISTICS), reference, head)
    vocab, token, values = full(model, batch, head)
    ref_vocab, *_ = full(reference, batch)
    completion = batch.completion_mask[:, 1:]
    prompt = batch.attention_mask[:, 1:] * (1 - completion)
    expected = {
        "tokens": per_token(token, completion),
        "token_collision": per_token(torch.logsumexp(2 * vocab, -1), completion),
        "token_kl": per_token((ref_vocab.exp() * (ref_vocab - vocab)).sum(-1), completion),
        "values": per_token(values, completion),
        "prompt_sum": (token * prompt).sum(1),
        "prompt_n_tokens": prompt.sum(1),
    }
    for role, rows in batch.slices.items():
        s = stats[role]
        for field, value in expected.items():
            got, want = getattr(s, field), value[rows]
            want = want if want.dim() == 1 else want[:, :int(s.n_tokens.max())]  # cut to the role's longest
            assert got.shape == want.shape and torch.allclose(got.float(), want.float(), atol=1e-5), field
        assert torch.allclose(s.sum, (token * completion).sum(1)[rows], atol=1e-5)
    assert (stats["chosen"].token_kl[stats["chosen"].mask] > 0).all()  # the two models differ
    assert (expected["token_collision"] <= 0).all()


def test_statistics_carry_gradients_and_cost_nothing_unasked(model, tok):
    batch = pad_batch(PAIRS, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    plain = sequence_logps(model, batch)["chosen"]
    assert all(getattr(plain, f) is None for f in ("tokens", "prompt_sum", "token_collision", "token_kl", "values"))
    stats = sequence_logps(model, batch, statistics={"prompt", "collision", "reference_kl", "values"},
                           reference=copy.deepcopy(model), value_head=make_value_head(model, 0))["chosen"]
    for field in ("prompt_sum", "token_collision", "token_kl", "values"):
        assert getattr(stats, field).requires_grad, field
    with pytest.raises(ValueError, match="unknown statistics"):
        sequence_logps(model, batch, statistics={"entropy"})
    with pytest.raises(ValueError, match="needs the reference model"):
        sequence_logps(model, batch, statistics={"reference_kl"})
    with pytest.raises(ValueError, match="needs the trainer's value head"):
        sequence_logps(model, batch, statistics={"values"})


def test_the_reference_cache_keeps_the_cacheable_statistics(model, tok, tmp_path):
    view = PAIRS
    ref, hit = refcache.cached(tmp_path, "init", view, lambda: model, tok.pad_token_id, 2, "cpu",
                               statistics=frozenset(CACHEABLE) | {"reference_kl"})
    assert not hit
    looked = ref.lookup({"chosen": torch.tensor([2, 0]), "rejected": torch.tensor([1])}, "cpu")
    batch = pad_batch(PAIRS, [2, 0], ("chosen",), tok.pad_token_id)
    direct = sequence_logps(model, batch, statistics=frozenset(CACHEABLE))["chosen"]
    for field in ("sum", "tokens", "token_collision", "prompt_sum", "prompt_n_tokens"):
        assert torch.allclose(getattr(looked.chosen, field).float(), getattr(direct, field).float(), atol=1e-5), field
    assert looked.chosen.token_kl is None  # a statistic of two models is never cached
    assert refcache.cached(tmp_path, "init", view, None, tok.pad_token_id, 2, "cpu",
                           statistics=frozenset(CACHEABLE))[1]  # the same statistics: read back, no model loaded
    only_tokens, hit = refcache.cached(tmp_path, "init", view, lambda: model, tok.pad_token_id, 2, "cpu",
                                       statistics={"tokens"})
    assert not hit and "chosen.token_collision" not in only_tokens.tensors  # its own file


def test_a_reference_kl_method_trains_with_the_reference_beside_the_policy(model, tok, tmp_path):
    """TDPO's first step: at the init the policy is the reference, so the KL is 0; training then moves it."""
    from datasets import Dataset

    data = Dataset.from_dict({"prompt_ids": [ex["chosen"][0] for ex in PAIRS.examples],
                              "chosen_ids": [ex["chosen"][1] for ex in PAIRS.examples],
                              "rejected_ids": [ex["rejected"][1] for ex in PAIRS.examples]})
    view = build_view("paired", "paired", data, 0)
    method = methods.build_method("tdpo")
    policy, _ = forward(model, view, [0, 1, 2], tok.pad_token_id, "cpu", method.statistics, copy.deepcopy(model))
    assert float(policy.chosen.token_kl.abs().max()) < 1e-5
    spec = TrainSpec(steps=3, batch_size=3, lr=1e-2, warmup_ratio=0.0, log_every=1, progress=False, save_final=False)
    ref = refcache.cached(tmp_path / "cache", "init", view, lambda: copy.deepcopy(model), tok.pad_token_id, 8, "cpu")[0]
    with pytest.raises(ValueError, match="needs the reference model"):
        train(copy.deepcopy(model), method, view, spec, tmp_path / "no-ref", tok.pad_token_id, Sources(ref))
    trained = copy.deepcopy(model)
    train(trained, method, view, spec, tmp_path / "run", tok.pad_token_id, Sources(ref, copy.deepcopy(model)))
    after, _ = forward(trained, view, [0, 1, 2], tok.pad_token_id, "cpu", method.statistics, model)
    assert float(after.chosen.token_kl.sum()) > 1e-4
