"""Column maps, formats, labels and splits do what they say: a map is applied once (new <- old), TRL's
implicit text prompts, unpaired conversations and 0/1 labels are read, held-out rows never reach the
tokenizer or base-stage corpus, and unpaired data has a working offline judge."""
import json
from collections import Counter

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForSequenceClassification

from prefbench.data.sources import load_rows
from prefbench.data.tokenizer import train_bpe
from prefbench.job import pipeline
from tests.conftest import prefbench
from tests.test_data_robustness import FILE_SMOKE, good


def task(path, **kw):
    return OmegaConf.create({"source": "file", "path": str(path), "format": "trl", "columns": None, **kw})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_column_map_is_applied_once_new_from_old(tmp_path):
    rows = [{"prompt": "p", "chosen": "good", "rejected": "bad"}]
    swapped, _, _ = load_rows(task(write_jsonl(tmp_path / "a.jsonl", rows),
                                   columns={"chosen": "rejected", "rejected": "chosen"}))
    assert swapped == [{"prompt": "p", "chosen": "bad", "rejected": "good"}]
    shadowed = [{"question": "the real question", "prompt": "a stale column", "response_j": "j", "response_k": "k"}]
    cfg = task(write_jsonl(tmp_path / "b.jsonl", shadowed),
               columns={"prompt": "question", "chosen": "response_j", "rejected": "response_k"})
    out, _, _ = load_rows(cfg)
    assert out[0]["prompt"] == "the real question" and (out[0]["chosen"], out[0]["rejected"]) == ("j", "k")


def test_readme_column_command_runs_through_the_cli(tmp_path):
    pd.DataFrame([{"question": f"question {i}", "response_j": f"a good answer {i}.", "response_k": f"a bad one {i}."}
                  for i in range(40)]).to_csv(tmp_path / "pairs.csv", index=False)
    prefbench("run", "task=file", f"task.path={tmp_path / 'pairs.csv'}",
              "task.columns={prompt: question, chosen: response_j, rejected: response_k}", "method=orpo",
              f"results_dir={tmp_path}", *FILE_SMOKE)
    s = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert s["status"] == "done", s["error"]
    assert s["data/rows_kept"] == 40 and not any(k.startswith("data/drop/") for k in s)


@pytest.mark.parametrize("chosen,rejected", [
    ("The sky is blue.", "The sky is green."),
    ("Answer: yes", "Answer: no"),
    ("Same start, then this", "Same start, then that"),
    ("abc", "abcd"),  # one a prefix of the other: TRL's loop stops one short
])
def test_implicit_text_prompt_follows_trl(tmp_path, chosen, rejected):
    from trl.data_utils import extract_prompt, maybe_extract_prompt

    rows, _, counts = load_rows(task(write_jsonl(tmp_path / "t.jsonl", [{"chosen": chosen, "rejected": rejected}])))
    assert rows == [extract_prompt({"chosen": chosen, "rejected": rejected})] == \
        [maybe_extract_prompt({"chosen": chosen, "rejected": rejected})]
    assert not counts


def test_implicit_text_prompt_kept_through_cleaning():
    from prefbench.data.clean import clean_rows
    from prefbench.data.sources import convert

    rows = [{"chosen": "The sky is blue.", "rejected": "The sky is green."}]
    counts = Counter()
    kind, kept = clean_rows([convert(r, "trl", {}, counts) for r in rows], counts)
    assert kept == [{"prompt": [{"role": "user", "content": "The sky is"}],
                     "chosen": [{"role": "assistant", "content": " blue."}],
                     "rejected": [{"role": "assistant", "content": " green."}]}] and not counts


def test_unpaired_conversations_with_integer_labels_are_read(tmp_path):
    from prefbench.data.clean import clean_rows

    msgs = lambda i, a: [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": a}]  # noqa: E731
    rows = [{"messages": msgs(i, "good" if i % 2 else "bad"), "label": i % 2} for i in range(10)]
    rows += [{"messages": msgs(10, "x"), "label": 2}, {"messages": msgs(11, "y"), "label": "1"}]
    got, _, counts = load_rows(task(write_jsonl(tmp_path / "m.jsonl", rows)))
    assert len(got) == 12 and not counts and got[0]["completion"] == [{"role": "assistant", "content": "bad"}]
    kind, kept = clean_rows(got, counts)
    assert kind == "unpaired" and len(kept) == 10
    assert sorted(r["label"] for r in kept) == [False] * 5 + [True] * 5
    assert all(type(r["label"]) is bool for r in kept)
    assert counts == Counter({"drop/wrong_type": 2})  # other ints and strings stay wrong_type
    share = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}], "label": True}
             for i in range(3)]
    got, _, counts = load_rows(task(write_jsonl(tmp_path / "s.jsonl", share), format="sharegpt"))
    assert got[0] == {"prompt": [{"role": "user", "content": "q0"}], "completion": [{"role": "assistant", "content": "a"}],
                      "label": True} and not counts


def test_held_out_rows_never_reach_the_tokenizer_or_base_corpus(tmp_path, monkeypatch):
    from prefbench.job.config import compose_config

    path = write_jsonl(tmp_path / "pairs.jsonl", [good(i) for i in range(50)])
    seen = {}

    def spy_bpe(texts, vocab_size):
        seen["tokenizer"] = list(texts)
        return train_bpe(seen["tokenizer"], vocab_size)

    def spy_view(corpus, tokenizer, task_cfg):
        seen["base"] = [json.dumps(r) for r in corpus]
        return real_view(corpus, tokenizer, task_cfg)

    real_view = pipeline.corpus_view
    monkeypatch.setattr(pipeline, "train_bpe", spy_bpe)
    monkeypatch.setattr(pipeline, "corpus_view", spy_view)
    for seed in (0, 1):
        seen.clear()
        cfg = compose_config(["task=file", f"task.path={path}", f"cache_dir={tmp_path / 'cache'}", f"seed={seed}",
                              *FILE_SMOKE, "stages.base.steps=2", "task.eval_size=10"])
        group = pipeline.prepare(cfg)
        held_out = [p[0]["content"] for split in (group.data.eval, group.data.val, group.data.judge)
                    for p in split["prompt"]]
        trained = [p[0]["content"] for p in group.data.train["prompt"]]
        # val and judge (judge=bt's own split): 50 // 5 each
        assert [len(group.data.eval), len(group.data.val), len(group.data.judge), len(trained)] == [10, 10, 10, 20]
        for stage in ("tokenizer", "base"):
            text = "\n".join(seen[stage])
            assert not [p for p in held_out if f"{p}\"" in text or f"{p} " in text], stage
            assert all(f"{p}\"" in text or f"{p} " in text for p in trained), stage
    # the split is drawn by the seed, so the corpus and the tokenizer stage's key depend on it
    assert len([p for p in (tmp_path / "cache" / "stages").glob("tokenizer-*") if p.is_dir()]) == 2


def test_unpaired_data_is_judged_by_a_reward_model_trained_with_bce(tmp_path):
    from prefbench.eval.reward_model import RewardModelJudge, train_binary

    tok = train_bpe(["q good bad answer"] * 10, 280)
    torch.manual_seed(0)
    LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                               num_labels=1, pad_token_id=tok.pad_token_id)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    judge = RewardModelJudge(str(tmp_path), batch_size=8, device="cpu")
    rows = [{"prompt": f"q{i}", "completion": "good answer" if i % 2 else "bad answer", "label": bool(i % 2)}
            for i in range(32)]
    stats = train_binary(judge, rows, steps=40, batch_size=8, lr=3e-3, seed=0)
    good_scores = judge.score(["q100", "q101"], ["good answer"] * 2)
    bad_scores = judge.score(["q100", "q101"], ["bad answer"] * 2)
    assert min(good_scores) > max(bad_scores) and stats["bce_loss_last"] < 0.3


def test_unpaired_file_trains_and_is_judged_end_to_end(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"a {'good' if i % 2 else 'bad'} answer {i}."}],
             "label": i % 2} for i in range(48)]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    prefbench("run", "task=file", f"task.path={path}", "method=kto", f"results_dir={tmp_path}", *FILE_SMOKE)
    s = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert s["status"] == "done", s["error"]
    assert s["data/rows_kept"] == 48 and s["eval/judge"] == "bt" and s["eval/score_mean"] is not None
    assert s["eval/win_rate_vs_sft"] is not None


def test_a_paired_method_on_unpaired_data_is_refused_before_any_stage(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": "an answer.", "label": bool(i % 2)} for i in range(20)]
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    proc = prefbench("run", "task=file", f"task.path={path}", "method=dpo", f"results_dir={tmp_path}",
                     f"cache_dir={tmp_path / 'cache'}", *FILE_SMOKE, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert f"method=dpo needs paired rows (prompt/chosen/rejected); {path} is unpaired" in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / "stages").exists()


HH_ROWS = [{"chosen": f"\n\nHuman: question {i}?\n\nAssistant: a good answer {i}.",
            "rejected": f"\n\nHuman: question {i}?\n\nAssistant: a poor one {i}."} for i in range(30)]
SHAREGPT_ROWS = [{"conversations": [{"from": "human", "value": f"question {i}?"}],
                  "chosen": {"from": "gpt", "value": f"a good answer {i}."},
                  "rejected": {"from": "gpt", "value": f"a poor one {i}."}} for i in range(30)]


@pytest.mark.parametrize("rows,fmt,hint", [
    (HH_ROWS, "sharegpt", "task.format=trl or task.format=hh_rlhf"),
    (SHAREGPT_ROWS, "trl", "task.format=sharegpt"),
])
def test_a_file_read_with_the_wrong_format_names_the_format_that_reads_it(tmp_path, rows, fmt, hint):
    from prefbench.data.prepare import load_clean
    from prefbench.io.errors import UserError

    cfg = task(write_jsonl(tmp_path / "rows.jsonl", rows), format=fmt, eval_size=4)
    with pytest.raises(UserError) as err:
        load_clean(cfg, seed=0)
    message = str(err.value)
    assert "\n" not in message and "missing_field: 30" in message and f"task.format={fmt}" in message
    assert message.endswith(f"these rows read as {hint}")


def test_a_file_no_format_reads_gets_no_format_hint(tmp_path):
    from prefbench.data.prepare import load_clean
    from prefbench.io.errors import UserError

    cfg = task(write_jsonl(tmp_path / "rows.jsonl", [{"question": f"q{i}"} for i in range(5)]), eval_size=1)
    with pytest.raises(UserError, match=r"no valid rows \(missing_field: 5\)$"):
        load_clean(cfg, seed=0)
