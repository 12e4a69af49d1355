"""The data pipeline: formats, cleaning with counted drops, truncation, split and views."""
from collections import Counter

import pytest
from omegaconf import OmegaConf

from prefbench.data.clean import clean_rows
from prefbench.data.prepare import tokenize
from prefbench.data.tasks import get_task, task_names
from prefbench.data.tasks.base import Annotator
from prefbench.data.tokenizer import train_bpe
from prefbench.data.views import build_view, pad_batch
from prefbench.io.errors import UserError
from prefbench.methods.views import derangement

CFG = OmegaConf.create({"eval_size": 2, "max_length": 40, "max_prompt_length": 16})


@pytest.fixture(scope="module")
def tok():
    rows = get_task("reviews").corpus(200, 0)
    return train_bpe([r["prompt"] + " " + r["completion"] for r in rows], 320)


def test_plain_and_conversational_rows_tokenize_identically(tok):
    plain = [{"prompt": "hello there", "chosen": "good film.", "rejected": "bad film."}] * 1 + \
            [{"prompt": f"p{i}", "chosen": "a great film.", "rejected": "a dull film."} for i in range(9)]
    conv = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in plain]
    a, b = tokenize(plain, tok, CFG, 0, "plain"), tokenize(conv, tok, CFG, 0, "conv")
    assert a.train["chosen_ids"] == b.train["chosen_ids"] and a.train["prompt_ids"] == b.train["prompt_ids"]
    # the chat template is applied once; the completion ends with the end-of-turn (eos) token
    assert all(ids[-1] == tok.eos_token_id for ids in a.train["chosen_ids"])
    prompt = tok.decode(a.train["prompt_ids"][0])
    assert prompt.startswith("<|user|>") and prompt.endswith("<|assistant|>")


def test_cleaning_counts_every_reason():
    rows = [
        {"prompt": "x", "chosen": "a", "rejected": "b"},
        {"prompt": "x", "chosen": "a", "rejected": "b"},          # duplicate
        {"prompt": "y", "chosen": "same", "rejected": "same"},    # chosen == rejected
        {"prompt": "y", "chosen": "", "rejected": "b"},           # empty completion
        {"prompt": " ", "chosen": "a", "rejected": "b"},          # empty prompt
        {"prompt": "z", "chosen": "a"},                           # missing field
        {"prompt": "z", "chosen": 3, "rejected": "b"},            # wrong type
        "not a record",
    ]
    counts = Counter()
    kind, kept = clean_rows(rows, counts)
    assert kind == "paired" and len(kept) == 1
    assert counts == Counter({"drop/duplicate": 1, "drop/chosen_equals_rejected": 1, "drop/empty_completion": 1,
                              "drop/empty_prompt": 1, "drop/missing_field": 1, "drop/wrong_type": 1,
                              "drop/not_a_record": 1})


def test_empty_dataset_names_the_source_and_reasons(tok):
    with pytest.raises(UserError, match=r"my.jsonl: no valid rows \(chosen_equals_rejected: 2\)"):
        tokenize([{"prompt": "a", "chosen": "b", "rejected": "b"}, {"prompt": "c", "chosen": "d", "rejected": "d"}],
                 tok, CFG, 0, "my.jsonl")


def test_truncation_policy(tok):
    long_prompt = " ".join(["the plot was good."] * 20)
    rows = [{"prompt": long_prompt, "chosen": " ".join(["a great film."] * 20), "rejected": "a bad film."}] + \
           [{"prompt": f"q{i}", "chosen": "a good film.", "rejected": "a bad film."} for i in range(9)]
    data = tokenize(rows, tok, CFG, 0, "t")
    assert data.counts["truncated/prompt"] == 1 and data.counts["truncated/chosen"] == 1
    for ds in (data.train, data.eval):
        for p, c in zip(ds["prompt_ids"], ds["chosen_ids"]):
            assert len(p) <= 16 and len(p) + len(c) <= 40


def test_split_depends_on_seed(tok):
    rows = get_task("reviews").pairs(50, 0)
    a, b = tokenize(rows, tok, CFG, 0, "t"), tokenize(rows, tok, CFG, 1, "t")
    assert len(a.eval) == 2 and len(a.train) == 48
    assert a.eval["chosen_text"] != b.eval["chosen_text"]
    assert tokenize(rows, tok, CFG, 0, "t").eval["chosen_text"] == a.eval["chosen_text"]


def test_views(tok):
    data = tokenize(get_task("reviews").pairs(30, 0), tok, CFG, 0, "t")
    paired = build_view("paired", data.kind, data.train, 0)
    sft = build_view("sft", data.kind, data.train, 0)
    unpaired = build_view("unpaired", data.kind, data.train, 0)
    n = len(data.train)
    assert len(paired) == len(sft) == n and len(unpaired) == 2 * n
    assert sum("chosen" in e for e in unpaired.examples) == n  # each pair: one desirable, one undesirable
    for i, e in enumerate(unpaired.examples):  # the KL partner keeps the prompt, takes another completion
        own = e.get("chosen", e.get("rejected"))
        assert e["mismatched"][0] == own[0]
    batch = pad_batch(paired, [0, 1, 2], ("chosen", "rejected"), tok.pad_token_id)
    assert batch.input_ids.shape[0] == 6 and batch.slices["rejected"] == slice(3, 6)
    assert int(batch.completion_mask.sum()) == sum(len(paired.examples[i][r][1]) for i in range(3)
                                                  for r in ("chosen", "rejected"))


def test_unpaired_source_feeds_kto_and_sft_but_not_dpo(tok):
    rows = [{"prompt": f"q{i}", "completion": "a good film." if i % 2 else "a bad film.", "label": bool(i % 2)}
            for i in range(20)]
    data = tokenize(rows, tok, CFG, 0, "u")
    assert data.kind == "unpaired"
    assert len(build_view("unpaired", data.kind, data.train, 0)) == len(data.train)
    assert len(build_view("sft", data.kind, data.train, 0)) == sum(data.train["label"])
    with pytest.raises(UserError, match="needs paired data"):
        build_view("paired", data.kind, data.train, 0)


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_has_no_fixed_point(n):
    perm = derangement(n, 7)
    assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))
    assert perm == derangement(n, 7)


@pytest.mark.parametrize("seed", range(10))
def test_kto_mismatched_partner_comes_from_another_prompt(seed):
    """Each pair gives two examples with one prompt; the KL estimate's partner completion must come from a
    different prompt (a derangement over all 2N examples picked the pair-mate about half the time)."""
    from datasets import Dataset

    n = 12
    pairs = Dataset.from_dict({"prompt_ids": [[1, i] for i in range(n)],
                               "chosen_ids": [[100 + i] for i in range(n)], "rejected_ids": [[200 + i] for i in range(n)]})
    view = build_view("unpaired", "paired", pairs, seed)
    owner = {(100 + i,): i for i in range(n)} | {(200 + i,): i for i in range(n)}  # completion -> its prompt
    used = []
    for example in view.examples:
        prompt, completion = example["mismatched"]
        assert owner[tuple(completion)] != prompt[1]
        used.append(tuple(completion))
    assert len(set(used)) == 2 * n  # every completion serves as one partner


def test_partners_share_a_prompt_only_when_one_prompt_holds_most_examples():
    from prefbench.methods.views import partners
    prompts = [[1]] * 3 + [[2]] * 3 + [[3]] * 2
    p = partners(prompts, 0)
    assert sorted(p) == list(range(8)) and all(prompts[i] != prompts[j] for i, j in enumerate(p))
    crowded = [[1]] * 5 + [[2]] * 2
    q = partners(crowded, 0)
    assert sorted(q) == list(range(7)) and all(i != j for i, j in enumerate(q))


@pytest.mark.parametrize("name", task_names())
def test_tasks_have_a_gold_reward_that_prefers_chosen(name):
    task = get_task(name)
    pairs = task.pairs(300, 0, Annotator(temperature=0.0))
    assert all(task.reward(p["prompt"], p["chosen"]) > task.reward(p["prompt"], p["rejected"]) for p in pairs)
    noisy = task.pairs(300, 0, Annotator(temperature=0.5))
    flipped = sum(task.reward(p["prompt"], p["chosen"]) < task.reward(p["prompt"], p["rejected"]) for p in noisy)
    assert 0 < flipped < 150  # Bradley-Terry noise flips some labels, not most


def test_reviews_reward_reads_sentiment_negation_and_form():
    t = get_task("reviews")
    p = 'Review "wild river" in 1 sentence, focusing on the plot.'
    assert t.reward(p, "the plot was great.") > t.reward(p, "the plot was good.") > t.reward(p, "the plot was bad.")
    assert t.reward(p, "the plot was not great.") < t.reward(p, "the plot was great.")
    assert t.reward(p, "the plot was extremely great.") > t.reward(p, "the plot was great.")
    assert t.reward(p, "the acting was great.") < t.reward(p, "the plot was great.")  # off-topic
    assert t.reward(p, "the plot great was.") < t.reward(p, "the plot was bad.")  # malformed
    assert t.reward(p, "") == -4.0
