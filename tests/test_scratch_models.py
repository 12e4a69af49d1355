"""Models built from scratch: the tiny Llamas the built-in tasks train, and hub-size shapes (Pythia, SmolLM2,
Qwen2.5) for GPUs, built from their yaml with the task's tokenizer and nothing downloaded."""
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from prefbench import CONF_DIR
from prefbench.job.config import compose_config
from prefbench.io.errors import UserError
from prefbench.job.run import run_job
from prefbench.model.models import from_scratch, scratch_config
from tests.conftest import SMOKE

# the published parameter counts of the hub models whose shapes the yamls copy, at the hub models' vocabularies
HUB_SHAPES = {"pythia-410m-scratch": (50304, 405_334_016), "pythia-1b-scratch": (50304, 1_011_781_632),
              "smollm2-360m-scratch": (49152, 361_821_120), "qwen2.5-0.5b-scratch": (151936, 494_032_768)}


@pytest.mark.parametrize("name", sorted(HUB_SHAPES))
def test_hub_shapes_have_the_hub_models_parameter_counts(name):
    vocab, published = HUB_SHAPES[name]
    arch = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml").arch)
    with torch.device("meta"):  # shapes only: no 4 GB of weights for the count
        model = AutoModelForCausalLM.from_config(scratch_config(arch, vocab))
    assert sum(p.numel() for p in model.parameters()) == published
    assert model.config.model_type == arch["model_type"]


class Tok:
    pad_token_id, eos_token_id, bos_token_id = 0, 1, 2

    def __len__(self):
        return 300


def test_the_tiny_models_are_the_llamas_they_were():
    """The stage cache's key holds the arch; the same arch must keep giving the same weights."""
    cfg = OmegaConf.load(CONF_DIR / "model" / "tiny-xs.yaml")
    ours = from_scratch(cfg, Tok(), seed=3)
    torch.manual_seed(3)
    before = LlamaForCausalLM(LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0,
        eos_token_id=1, bos_token_id=2))
    a, b = ours.state_dict(), before.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_unknown_model_type_is_one_line():
    with pytest.raises(UserError, match="model.arch.model_type='nope' is not one of transformers' model types"):
        scratch_config({"model_type": "nope", "hidden_size": 8, "num_heads": 1, "num_layers": 1}, 8)


def test_a_gpt_neox_shape_runs_a_whole_job(tmp_path, shared_cache):
    """The Pythia yaml, shrunk to CPU size: base and SFT stages, training, sampling and evaluation on GPT-NeoX."""
    shrink = ["model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_layers=1",
              "model.arch.num_heads=2", "model.arch.max_positions=256"]
    cfg = compose_config(["model=pythia-410m-scratch", *shrink, "method=dpo", f"results_dir={tmp_path}",
                          f"cache_dir={shared_cache}", *[o for o in SMOKE if not o.startswith("model=")]])
    summary = run_job(cfg, tmp_path / "runs" / "pythia")
    assert summary["status"] == "done", summary.get("error")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "pythia" / "checkpoint")
    assert saved.config.model_type == "gpt_neox" and saved.config.rope_parameters["partial_rotary_factor"] == 0.25
