"""Real datasets and models, offline: every source format on a local file, the HH-RLHF sample end to
end, counted cleaning (fuzzed), LoRA's reference, and fast one-line failures for what is not cached."""
import gzip
import json
import random
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from prefbench.data.prepare import tokenize
from prefbench.data.sources import load_rows, parse_transcript
from prefbench.data.tokenizer import train_bpe
from prefbench.data.views import View
from prefbench.io.errors import UserError
from prefbench.model.logprobs import score_view
from prefbench.model.models import attach_lora
from tests.conftest import REPO, prefbench

HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base" / "test.jsonl.gz"
P = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: tell me a joke"


def task(path, **kw):
    return OmegaConf.create({"source": "file", "path": str(path), "format": "trl", "columns": {}, **kw})


def write_jsonl(path: Path, rows, raw_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in raw_lines))
    return path


def test_hh_transcripts_split_at_the_last_assistant_turn(tmp_path):
    row = {"chosen": P + "\n\nAssistant: why did the chicken cross?", "rejected": P + "\n\nAssistant: no."}
    rows, _, counts = load_rows(task(write_jsonl(tmp_path / "hh.jsonl", [row]), format="hh_rlhf"))
    assert rows == [{"prompt": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello!"},
                                {"role": "user", "content": "tell me a joke"}],
                     "chosen": "why did the chicken cross?", "rejected": "no."}]
    assert parse_transcript("\n\nHuman: a\n\nb\n\nAssistant: c") == [{"role": "user", "content": "a\n\nb"},
                                                                   {"role": "assistant", "content": "c"}]


def test_ultrafeedback_layout_from_parquet(tmp_path):
    msgs = lambda answer: [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": answer}]  # noqa: E731
    pd.DataFrame([{"prompt": "What is 2+2?", "chosen": msgs("4"), "rejected": msgs("5"), "score_chosen": 9.0}]) \
        .to_parquet(tmp_path / "uf.parquet")
    rows, _, _ = load_rows(task(tmp_path / "uf.parquet", format="ultrafeedback"))
    assert rows == [{"prompt": [{"role": "user", "content": "What is 2+2?"}],
                     "chosen": [{"role": "assistant", "content": "4"}],
                     "rejected": [{"role": "assistant", "content": "5"}]}]


def test_csv_with_a_column_mapping(tmp_path):
    pd.DataFrame([{"question": "q1", "response_j": "good", "response_k": "bad"}]).to_csv(tmp_path / "se.csv", index=False)
    cfg = task(tmp_path / "se.csv", columns={"prompt": "question", "chosen": "response_j", "rejected": "response_k"})
    rows, name, _ = load_rows(cfg)
    assert rows[0]["prompt"] == "q1" and rows[0]["chosen"] == "good" and rows[0]["rejected"] == "bad"
    assert name.endswith("se.csv")


def test_conversational_json_and_sharegpt(tmp_path):
    conv = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hey"}],
             "rejected": [{"role": "assistant", "content": "go away"}]}]
    (tmp_path / "c.json").write_text(json.dumps(conv))
    assert load_rows(task(tmp_path / "c.json"))[0] == conv
    share = [{"conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi"}],
              "chosen": {"from": "gpt", "value": "hey"}, "rejected": {"from": "gpt", "value": "go away"}}]
    rows, _, _ = load_rows(task(write_jsonl(tmp_path / "s.jsonl", share), format="sharegpt"))
    assert rows[0]["prompt"][0] == {"role": "system", "content": "be nice"} and rows[0]["chosen"][0]["content"] == "hey"


def test_unpaired_trl_rows(tmp_path):
    rows = [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "q", "completion": "d", "label": False}]
    assert load_rows(task(write_jsonl(tmp_path / "u.jsonl", rows)))[0] == rows


def test_fuzzed_defects_are_counted_exactly(tmp_path):
    rng = random.Random(0)
    valid = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"a bad answer {i}"}
             for i in range(60)]
    defects = {
        "unparseable_line": ['{"prompt": "broken', "not json at all", "{]"],
        "missing_field": [{"prompt": "x", "chosen": "y"}, {"chosen": "y", "rejected": "z"}],
        "wrong_type": [{"prompt": "x", "chosen": 5, "rejected": "z"}, {"prompt": ["x"], "chosen": "y", "rejected": "z"},
                       {"prompt": "x", "chosen": {"a": 1}, "rejected": "z"}],
        "prompt_only": [{"prompt": "only a prompt"}, {"prompt": "another", "chosen": None, "rejected": None}],
        "chosen_equals_rejected": [{"prompt": "x", "chosen": "same", "rejected": "same"}],
        "empty_completion": [{"prompt": "x", "chosen": "  ", "rejected": "z"}, {"prompt": "x", "chosen": "y", "rejected": ""}],
        "empty_prompt": [{"prompt": "", "chosen": "y", "rejected": "z"}],
        "duplicate": [valid[3], valid[7], valid[7]],
        "too_long": [{"prompt": "long", "chosen": "word " * 400, "rejected": "short"}],
        "not_a_record": [[1, 2, 3], "a string row"],
    }
    lines = [json.dumps(r) for r in valid]
    for kind, rows in defects.items():
        lines += rows if kind == "unparseable_line" else [json.dumps(r) for r in rows]
    rng.shuffle(lines)
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows, name, counts = load_rows(task(path))
    tok = train_bpe([r["prompt"] + r["chosen"] for r in valid], 300)
    data = tokenize(rows, tok, OmegaConf.create({"eval_size": 5, "max_length": 64, "max_prompt_length": 32,
                                                 "drop_overlong": True}), 0, name, counts)
    drops = {k.split("/")[1]: v for k, v in data.counts.items() if k.startswith("drop/")}
    assert drops == {k: len(v) for k, v in defects.items()}
    assert data.counts["rows_kept"] == 60 and len(data.train) + len(data.eval) == 60
    assert data.counts["rows_in"] == len(lines)


def test_a_file_without_valid_rows_names_the_file_and_the_reasons(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "b"}] * 2 +
                       [{"prompt": "a"}], raw_lines=["{oops"])
    rows, name, counts = load_rows(task(path))
    with pytest.raises(UserError, match=r"bad.jsonl: no valid rows \(chosen_equals_rejected: 2, unparseable_line: 1, prompt_only: 1\)"):
        tokenize(rows, train_bpe(["a b"], 270), OmegaConf.create({"eval_size": 1, "max_length": 32,
                                                                  "max_prompt_length": 16}), 0, name, counts)


def test_lora_reference_is_the_base_model_with_adapters_disabled():
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2))
    view = View("paired", [{"chosen": ([1, 2, 3], [4, 5]), "rejected": ([1, 2, 3], [6, 7, 8])}])
    before = score_view(base, view, 0, 4, "cpu")
    policy = attach_lora(base, OmegaConf.create({"r": 4, "alpha": 8}))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()  # adapters that change the outputs
    adapted = score_view(policy, view, 0, 4, "cpu")
    with policy.disable_adapter():
        disabled = score_view(policy, view, 0, 4, "cpu")
    assert not torch.allclose(adapted["chosen.sum"], before["chosen.sum"])
    for key in before:
        assert torch.allclose(disabled[key], before[key], atol=1e-6)
    assert sum(p.numel() for p in policy.parameters()) < 1.2 * sum(p.numel() for p in base.parameters())


def test_lora_adapters_are_drawn_from_the_seed_not_the_processs_random_state():
    def adapters(state, seed):
        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2))
        torch.manual_seed(state)
        policy = attach_lora(base, OmegaConf.create({"r": 4, "alpha": 8}), seed)
        return [p.detach() for n, p in policy.named_parameters() if "lora_A" in n]

    assert all(torch.equal(a, b) for a, b in zip(adapters(1, 3), adapters(2, 3)))
    assert not torch.equal(adapters(1, 3)[0], adapters(1, 4)[0])


@pytest.fixture(scope="module")
def local_models(tmp_path_factory):
    """A tiny causal LM and a tiny reward model saved like hub checkpoints, with a BPE tokenizer."""
    if not HH.exists():
        pytest.skip(f"the HH-RLHF sample is not at {HH}")
    root = tmp_path_factory.mktemp("models")
    with gzip.open(HH, "rt") as f:
        texts = [json.loads(line)["chosen"] for _, line in zip(range(500), f)]
    tok = train_bpe(texts, 1024)
    torch.manual_seed(0)
    arch = dict(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(LlamaConfig(**arch)).save_pretrained(root / "lm")
    LlamaForSequenceClassification(LlamaConfig(**arch, num_labels=1)).save_pretrained(root / "rm")
    for d in ("lm", "rm"):
        tok.save_pretrained(root / d)
    return root


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_hh_rlhf_sample_end_to_end(local_models, tmp_path, method):
    rows, _, counts = load_rows(OmegaConf.create({"source": "file", "path": str(HH), "format": "hh_rlhf"}))
    assert len(rows) + sum(counts.values()) == 2312
    prefbench("run", "task=hh_rlhf_local", f"task.path={HH}", "task.max_rows=300", "task.eval_size=8",
              "task.max_length=128", "task.max_prompt_length=64", "task.max_new_tokens=16", "model=local",
              f"model.path={local_models / 'lm'}", f"method={method}", "judge=reward_model",
              f"judge.path={local_models / 'rm'}", "trainer.steps=3", "trainer.batch_size=4", "stages.sft.steps=2",
              "stages.sft.batch_size=4", "eval.samples_per_prompt=2", "eval.diversity=false", "trainer.progress=false",
              f"results_dir={tmp_path}")
    run = next((tmp_path / "runs").iterdir())
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "done", s["error"]
    assert s["train/step"] == (3 if method == "dpo" else 2 + 3)  # ORPO from base: SFT stage's 2 + 3 (budget=matched)
    assert s["data/rows_in"] == 300 and s["eval/judge"] == "reward_model"
    assert s["eval/n_prompts"] == 8 and s["eval/win_rate_vs_chosen"] is not None
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and all(isinstance(x["score"], float) for x in samples)


@pytest.mark.parametrize("args,message", [
    (["task=hh_rlhf", "judge=bt", "model=tiny-xs"], "dataset 'Anthropic/hh-rlhf' is unavailable: the hub is offline"),
    (["model=pythia-160m"], "model 'EleutherAI/pythia-160m' is unavailable: the hub is offline"),
])
def test_uncached_hub_items_fail_fast_with_one_line(tmp_path, args, message):
    t0 = time.perf_counter()
    proc = prefbench("run", f"results_dir={tmp_path}", *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and time.perf_counter() - t0 < 60


def test_unreachable_hub_without_offline_variables_fails_fast(tmp_path):
    """No HF_HUB_OFFLINE: a 3-second probe finds the endpoint closed and switches to the local cache."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: the probe fails at once, no traffic leaves
    exe = Path(sys.executable).parent / "prefbench"
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe), "run", "model=pythia-160m", f"results_dir={tmp_path}"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "using the local cache only" in proc.stderr
    assert "model 'EleutherAI/pythia-160m' is unavailable: the hub is offline" in proc.stderr
    assert time.perf_counter() - t0 < 60
