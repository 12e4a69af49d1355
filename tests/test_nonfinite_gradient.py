"""A non-finite gradient stops training like a non-finite loss does: ORPO on a policy whose
per-token mean log-prob of the chosen completions is exactly 0 has a finite loss and a NaN gradient
(log(1 - exp A) is -inf at A = 0). The run must fail with a clear error, never train a NaN model."""
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefbench.data.views import View, pad_batch
from prefbench.model.logprobs import sequence_logps
from prefbench.train.trainer import TrainSpec, train
from prefbench.methods import BatchLogps, build_method
from tests.conftest import SMOKE, install_faults, prefbench, run_dir

SURE = 4  # the token the saturated policy predicts with probability 1 (in float32) everywhere
TOY = View("paired", [{"chosen": ([1, 2, 3], [SURE, SURE]), "rejected": ([1, 2, 3], [7, 8, 9])},
                      {"chosen": ([1, 3, 2], [SURE, SURE, SURE]), "rejected": ([1, 3, 2], [8, 7])}])


def saturated_policy() -> LlamaForCausalLM:
    """A real Llama whose residual stream is its token embedding (attention and MLP outputs zeroed),
    with embedding dim 0 large and positive and the final norm keeping only dim 0, so every position
    gives token SURE a logit ~500 above the rest: log p(SURE) == 0.0 exactly in float32."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[SURE, 0] = 100.0
    return model


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])  # clipping on, and off (the norm is computed anyway)
def test_orpo_nan_gradient_with_a_finite_loss_fails_the_step(max_grad_norm, tmp_path):
    model = saturated_policy()
    orpo = build_method("orpo")
    with torch.no_grad():  # the premise: mean log-prob of chosen exactly 0, the loss finite
        s = sequence_logps(model, pad_batch(TOY, [0, 1], ("chosen", "rejected"), 0))
        assert (s["chosen"].mean == 0).all()
        assert torch.isfinite(orpo.loss(BatchLogps(chosen=s["chosen"], rejected=s["rejected"]), None).loss)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = TrainSpec(steps=2, batch_size=2, lr=1e-2, warmup_ratio=0.0, scheduler="constant", log_every=1,
                     checkpoint_every=1, max_grad_norm=max_grad_norm, progress=False)
    with pytest.raises(RuntimeError, match=r"non-finite gradient .*at step 1$"):
        train(model, orpo, TOY, spec, tmp_path, pad_id=0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step taken: no NaN weights
    assert not (tmp_path / "checkpoint").exists()


def test_a_run_with_a_non_finite_gradient_fails_with_a_clear_error(tmp_path, shared_cache):
    """Through the real CLI: a method whose loss is finite and whose gradient is NaN."""
    env, search = install_faults(tmp_path / "plugin")
    proc = prefbench("run", "method=nan_grad", search, f"results_dir={tmp_path}", f"cache_dir={shared_cache}",
                     *SMOKE, check=False, env=env)
    assert proc.returncode == 1 and "non-finite gradient" in proc.stderr
    run = run_dir(tmp_path / "runs", "reviews-tiny-xs-nan_grad-s0")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "non-finite gradient (norm nan) at step 1"
    assert not (run / "checkpoint").exists()
