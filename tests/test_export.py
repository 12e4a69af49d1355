"""`prefbench export`: a finished run's policy as a folder that transformers loads and generates from, with the
run's tokenizer, its evaluation's sampling as the generation config, and a model card of its metrics."""
import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

from tests.conftest import SMOKE, prefbench, run_dir


def test_an_exported_run_loads_and_generates_with_transformers(tmp_path, shared_cache):
    prefbench("run", "method=dpo", f"results_dir={tmp_path}", f"cache_dir={shared_cache}", *SMOKE)
    run = run_dir(tmp_path / "runs", "reviews-tiny-xs-dpo-s0")
    # the run's own checkpoint/ is already a model folder: tokenizer and generation config beside the weights
    own = pipeline("text-generation", model=str(run / "checkpoint"), device="cpu")
    assert own.tokenizer.chat_template is not None and own.model.generation_config.do_sample
    dest = tmp_path / "exported"
    out = prefbench("export", run, dest)
    assert str(dest) in out.stdout
    assert (dest / "model.safetensors").exists() and not list(dest.glob("*.bin")) and not list(dest.glob("*.pt"))
    model = AutoModelForCausalLM.from_pretrained(dest, use_safetensors=True)
    trained = load_file(run / "checkpoint" / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())  # the run's final weights
    tokenizer = AutoTokenizer.from_pretrained(dest)
    generation = GenerationConfig.from_pretrained(dest)
    assert generation.do_sample and generation.temperature == 1.0 and generation.top_k == 0
    assert generation.max_new_tokens > 0 and generation.eos_token_id == tokenizer.eos_token_id
    messages = json.loads((run / "samples.jsonl").read_text().splitlines()[0])["prompt"]  # a chat: the task's template
    assert tokenizer.chat_template is not None
    chat = pipeline("text-generation", model=str(dest), device="cpu")(messages, max_new_tokens=5)[0]["generated_text"]
    assert chat[:-1] == messages and chat[-1]["role"] == "assistant" and chat[-1]["content"].strip()
    card = (dest / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert "library_name: transformers" in card and "**dpo**" in card
    assert f"{summary['eval/win_rate_vs_sft']:.3f} [{summary['eval/win_rate_vs_sft_ci_low']:.3f}" in card
    again = prefbench("export", run, dest, check=False)
    assert again.returncode == 2 and "is not empty" in again.stderr

