"""Held-out means held out: train, val and eval share no prompt, for every source, and the counts add up."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prefbench import CONF_DIR
from prefbench.job.config import compose_config
from prefbench.data.prepare import clean_split, load_clean, render
from prefbench.data.sources import corpus_rows, load_rows
from prefbench.data.tokenizer import train_bpe
from prefbench.io.errors import UserError
from prefbench.job.config import validate
from tests.conftest import SMOKE, prefbench, run_dir

SPLITS = ("train", "val", "eval")


def text(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def prompts_of(data) -> dict[str, set[str]]:
    return {name: {text(r["prompt"]) for r in getattr(data, name, [])} for name in SPLITS}


def assert_prompt_disjoint(data) -> dict[str, set[str]]:
    found = prompts_of(data)
    leaked = found["eval"] & found["train"]
    assert not leaked, f"{len(leaked)} of {len(found['eval'])} distinct eval prompts also occur in training"
    assert not found["val"] & found["train"] and not found["val"] & found["eval"]
    return found


def task_cfg(name: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml"), overrides)


@pytest.mark.parametrize("name", ["reviews", "sorting", "constraints", "arithmetic"])
@pytest.mark.parametrize("seed", [0, 1])
def test_builtin_tasks_split_by_prompt(name, seed):
    cfg = task_cfg(name)
    rows, source, counts = load_rows(cfg)
    data = clean_split(rows, cfg, seed, source, counts)
    found = assert_prompt_disjoint(data)
    assert len(found["eval"]) == cfg.eval_size == 64 and len(found["val"]) == cfg.val_size == 64
    assert len(data.train) + len(data.val) + len(data.eval) == cfg.n_pairs == data.counts["rows_in"]


@pytest.mark.parametrize("name", ["reviews", "constraints", "arithmetic"])
def test_builtin_prompts_fit_the_prompt_length_and_each_split_is_counted(name):
    """The task's own tokenizer (trained on its corpus) never truncates a prompt or a chosen completion."""
    cfg = task_cfg(name)
    rows, source, counts = load_rows(cfg)
    clean = clean_split(rows, cfg, 0, source, counts)
    corpus = corpus_rows(cfg, clean.train)
    tok = train_bpe([r["prompt"] + " " + r["completion"] for r in corpus], int(cfg.vocab_size))
    data = render(clean, tok, cfg, source)
    assert not any(k.startswith(("truncated/", "drop/")) for k in data.counts), data.counts
    assert data.counts["rows_kept"] == len(data.train) + len(data.val) + len(data.eval) == 1500
    assert data.counts["prompts/eval"] == data.counts["prompts/val"] == 64
    assert data.counts["prompts/train"] == len(set(map(json.dumps, data.train["prompt"])))
    assert sorted([*data.eval["idx"], *data.val["idx"], *data.train["idx"]]) == list(range(1500))
    assert max(len(p) for d in (data.train, data.val, data.eval) for p in d["prompt_ids"]) <= cfg.max_prompt_length


def repeated_prompt_rows(n_prompts: int = 60) -> list[dict]:
    """Rows whose prompts repeat 1-4 times, some only up to whitespace, in no particular order."""
    rows = []
    for i in range(n_prompts):
        for j in range(1 + i % 4):
            prompt = f"question {i}" + ("  " if j == 2 else "")
            rows.append({"prompt": prompt, "chosen": f"good answer {i}.{j}", "rejected": f"bad answer {i}.{j}"})
    return rows[::2] + rows[1::2]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("source", ["file", "hub"])
def test_a_dataset_with_repeated_prompts_keeps_each_prompt_in_one_split(tmp_path, source):
    """``hub`` reads a dataset folder through ``datasets.load_dataset``, as for a hub id."""
    rows = repeated_prompt_rows()
    path = write_jsonl(tmp_path / "ds" / "train.jsonl", rows)
    overrides = [f"task.path={path}"] if source == "file" else ["task=ultrafeedback", f"task.path={path.parent}",
                                                                "task.split=train"]
    cfg = compose_config(["task=file", *overrides, "task.format=trl", "task.eval_size=5", "task.val_size=7"])
    for seed in (0, 1, 2):
        clean, _ = load_clean(cfg.task, seed)
        found = assert_prompt_disjoint(clean)
        normalised = {n: {" ".join(p.split()) for p in found[n]} for n in SPLITS}
        assert not normalised["eval"] & normalised["train"]  # 'question 3' and 'question 3  ' are one prompt
        assert [len(normalised[n]) for n in SPLITS] == [48, 7, 5]
        per_prompt = Counter(" ".join(text(r["prompt"]).split()) for n in SPLITS for r in getattr(clean, n))
        assert per_prompt == Counter(" ".join(r["prompt"].split()) for r in rows)  # every row kept, once
        assert clean.counts["rows_in"] == len(rows) and not any(k.startswith("drop/") for k in clean.counts)


def test_eval_prompts_do_not_depend_on_the_validation_size():
    cfg = task_cfg("reviews")
    rows, source, _ = load_rows(cfg)
    with_val = clean_split(rows, cfg, 3, source)
    without = clean_split(rows, OmegaConf.merge(cfg, {"val_size": 0}), 3, source)
    assert with_val.eval == without.eval and not without.val
    assert sorted(map(json.dumps, with_val.train + with_val.val)) == sorted(map(json.dumps, without.train))


@pytest.mark.parametrize("n_prompts,eval_size,val_size,expected", [
    (4, 64, 64, (4, 0, 0)),       # fewer than 5 prompts: nothing is held out
    (5, 64, 64, (3, 1, 1)),       # each held-out split takes at most a fifth of the prompts
    (100, 64, 64, (60, 20, 20)),
    (100, 3, 0, (97, 0, 3)),
    (1, 8, 8, (1, 0, 0)),         # one prompt with many rows: all of them train
])
def test_small_datasets_hold_out_at_most_a_fifth_of_the_prompts_each(n_prompts, eval_size, val_size, expected):
    rows = [{"prompt": f"p{i % n_prompts}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(max(10, n_prompts))]
    data = clean_split(rows, OmegaConf.create({"eval_size": eval_size, "val_size": val_size}), 0, "t")
    assert tuple(len(prompts_of(data)[n]) for n in SPLITS) == expected
    assert_prompt_disjoint(data)
    assert len(data.train) + len(data.val) + len(data.eval) == len(rows)


def test_a_config_without_val_size_holds_out_no_validation_prompts():
    rows = [{"prompt": f"p{i}", "chosen": "yes", "rejected": "no"} for i in range(50)]
    data = clean_split(rows, OmegaConf.create({"eval_size": 4}), 0, "t")
    assert (len(data.train), len(data.val), len(data.eval)) == (46, 0, 4)


@pytest.mark.parametrize("overrides,message", [
    (["eval.split=test"], "eval.split='test' is not allowed; allowed: eval, val"),
    (["eval.split=val", "task.val_size=0"], "eval.split=val needs validation prompts"),
    (["task.val_size=-1"], "task.val_size must be a whole number of prompts >= 0"),
])
def test_bad_split_settings_are_refused(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        validate(compose_config(overrides))


def test_an_unknown_eval_split_is_one_line_at_the_cli(tmp_path):
    proc = prefbench("run", "eval.split=test", f"results_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "eval.split='test' is not allowed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_split_val_evaluates_the_validation_prompts(tmp_path, shared_cache):
    args = [*SMOKE, "task.val_size=6", f"cache_dir={shared_cache}", "method=sft"]
    prefbench("run", "eval.split=val", f"results_dir={tmp_path}", *args)
    summary = json.loads((run_dir(tmp_path / "runs", "reviews-tiny-xs-sft-s0") / "summary.json").read_text())
    samples = (run_dir(tmp_path / "runs", "reviews-tiny-xs-sft-s0") / "samples.jsonl").read_text().splitlines()
    clean, _ = load_clean(compose_config(args).task, 0)
    val = {r["prompt"][0]["content"] for r in clean.val}
    evaluated = {p[0]["content"] if isinstance(p, list) else p for p in (json.loads(s)["prompt"] for s in samples)}
    assert summary["status"] == "done" and summary["eval/n_prompts"] == 6 and evaluated == val
    assert summary["data/prompts/val"] == 6 and summary["data/prompts/eval"] == 8


@pytest.mark.parametrize("name", ["reviews", "sorting", "constraints", "arithmetic"])
def test_the_builtin_base_corpus_has_no_prompt_of_any_split(name):
    """The tokenizer and base stage pretrain on prompts that no preference pair has, so val and eval prompts
    are unseen there too, for every seed (the corpus does not depend on the split)."""
    cfg = task_cfg(name)
    rows, _, _ = load_rows(cfg)
    corpus = corpus_rows(cfg, [])
    assert len(corpus) == cfg.corpus_size
    assert not {r["prompt"] for r in corpus} & {r["prompt"] for r in rows}


def test_cached_stages_of_a_builtin_task_are_keyed_by_its_version():
    from prefbench.data.sources import task_spec
    from prefbench.data.tasks import get_task

    assert task_spec(task_cfg("reviews"))["task_version"] == get_task("reviews").version == 2
