"""Property tests of the constraints and arithmetic tasks, and of the simulated annotator that labels every
built-in task's pairs.

The expected values are computed here from the docstrings (prefbench/data/tasks/constraints.py, arithmetic.py,
base.py: Annotator), not with the tasks' own helpers; only the word tables (the lexicon) are shared.
"""
from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from prefbench import CONF_DIR
from prefbench.data.prepare import load_clean
from prefbench.data.sources import annotator
from prefbench.data.tasks import get_task
from prefbench.data.tasks.base import Annotator
from prefbench.data.tasks.constraints import LEXICON
from prefbench.io.errors import UserError
from tests.conftest import SMOKE, prefbench

CONSTRAINTS, ARITHMETIC, REVIEWS = get_task("constraints"), get_task("arithmetic"), get_task("reviews")


def documented_met(kind: str, arg: str, text: str) -> bool:
    """The constraints docstring's table, written out again."""
    words = [w.lower() for w in text.replace(".", " ").split(" ") if w]
    sentences = [s for s in text.split(".") if s.strip()]
    letters = [c for c in text if c.isalpha()]
    if kind == "words":
        low, high = arg.split("-")
        return int(low) <= len(words) <= int(high)
    return {"include": arg in words, "exclude": arg not in words, "start": bool(words) and words[0] == arg,
            "end": bool(words) and words[-1] == arg, "twice": words.count(arg) == 2,
            "sentences": len(sentences) == int(arg) if kind == "sentences" else None,
            "case": bool(letters) and all((c == c.lower()) if arg == "lower" else (c == c.upper()) for c in letters),
            }[kind]


def documented_constraints_reward(prompt: str, text: str) -> float:
    constraints = [c.split(" ") for c in prompt.split("; ")[1:]]
    if not text.replace(".", " ").split():
        return 0.0
    return sum(documented_met(k, a, text) for k, a in constraints) / len(constraints)


def completions(alphabet: list[str], max_words: int = 4) -> set[str]:
    """Every sequence of up to ``max_words`` words of ``alphabet``, as one or two sentences, in lower case,
    capitalised and upper case, with and without the last full stop."""
    out = {"", ".", " . "}
    for n in range(1, max_words + 1):
        for words in itertools.product(alphabet, repeat=n):
            for cut in range(n):
                text = " ".join(words[:cut]) + ". " + " ".join(words[cut:]) if cut else " ".join(words)
                for form in (text, text[0].upper() + text[1:], text.upper()):
                    out |= {form + ".", form}
    return out


@pytest.mark.parametrize("prompt", [
    "about sea; start the; end blue; twice waves; words 3-4",
    "about sea; include blue; exclude the; sentences 2; case upper",
    "about forest; case lower; twice moss; words 1-2",
    "about city; end lights; sentences 1",
])
def test_every_short_completion_is_scored_as_the_constraints_docstring_says(prompt):
    alphabet = LEXICON[prompt.split("; ")[0].split(" ")[1]][:3] + ["blue", "moss", "lights"]
    texts = completions(sorted(set(alphabet)))
    assert len(texts) > 5000
    rewards = Counter()
    for text in texts:
        expected = documented_constraints_reward(prompt, text)
        assert CONSTRAINTS.reward(prompt, text) == pytest.approx(expected), (prompt, text)
        rewards[expected] += 1
    n = prompt.count(";")
    assert set(rewards) == {i / n for i in range(n + 1)}  # every grade of partial credit occurs


def test_constraints_prompts_draw_one_to_four_kinds_of_eight_with_distinct_words():
    rng, kinds, counts = random.Random(0), Counter(), Counter()
    for _ in range(3000):
        prompt = CONSTRAINTS.prompt(rng)
        topic, *constraints = prompt.split("; ")
        assert topic.split(" ")[1] in LEXICON and 1 <= len(constraints) <= 4
        names = [c.split(" ")[0] for c in constraints]
        assert len(set(names)) == len(names)
        word_args = [c.split(" ")[1] for c in constraints if c.split(" ")[0] not in ("words", "sentences", "case")]
        assert len(set(word_args)) == len(word_args) and set(word_args) <= set(LEXICON[topic.split(" ")[1]])
        kinds.update(names)
        counts[len(constraints)] += 1
    assert set(kinds) == {"words", "include", "exclude", "start", "end", "twice", "sentences", "case"}
    assert set(counts) == {1, 2, 3, 4}


def test_the_constraints_policy_meets_a_varying_number_of_constraints():
    rng, met_counts = random.Random(1), Counter()
    for _ in range(3000):
        prompt = CONSTRAINTS.prompt(rng)
        reward = CONSTRAINTS.reward(prompt, CONSTRAINTS.completion(prompt, rng))
        met_counts[round(reward * prompt.count(";"))] += 1
    assert set(met_counts) == {0, 1, 2, 3, 4} and min(met_counts.values()) > 50


def test_every_arithmetic_prompt_and_answer_form_is_scored_as_the_docstring_says():
    ops = "+-*"
    prompts = [f"compute {a} {o} {b}" for a, o, b in itertools.product(range(1, 10), ops, range(1, 10))]
    prompts += [f"compute {a} {o} {b} {p} {c}"
                for a, o, b, p, c in itertools.product(range(1, 10), ops, range(1, 10), ops, range(1, 10))]
    assert len(prompts) == 81 * 3 + 729 * 9
    for prompt in prompts:
        value = eval(prompt.removeprefix("compute "))  # Python's precedence is the documented one
        expr = prompt.removeprefix("compute ")
        for text in (str(value), f"{expr} = {value}", f" = {value} ", f"x = 3 = {value}"):
            assert ARITHMETIC.reward(prompt, text) == 1.0, (prompt, text)
        for text in (str(value + 1), f"{expr} = {value - 2}", f"{value} = {value + 3}", f"+{value}" if value >= 0
                     else f"--{-value}", f"0{abs(value)}", f"{value}.0", f"{value} apples", "", f"{value} ="):
            assert ARITHMETIC.reward(prompt, text) == 0.0, (prompt, text)


def test_the_arithmetic_policy_writes_right_off_by_some_and_left_to_right_answers():
    rng, kinds = random.Random(0), Counter()
    for _ in range(3000):
        prompt = ARITHMETIC.prompt(rng)
        expr = prompt.removeprefix("compute ")
        text = ARITHMETIC.completion(prompt, rng)
        assert text.startswith(expr + " = ") or "=" not in text
        got = int(text.rsplit("=", 1)[-1])
        tokens = expr.split(" ")
        left_to_right = int(tokens[0])
        for op, digit in zip(tokens[1::2], tokens[2::2]):
            left_to_right = eval(f"{left_to_right} {op} {digit}")
        right = eval(expr)
        kind = "right" if got == right else "left_to_right" if got == left_to_right else "off"
        assert kind != "off" or 1 <= abs(got - right) <= 3
        kinds[kind] += 1
        assert ARITHMETIC.reward(prompt, text) == float(kind == "right")
    assert min(kinds.values()) > 50, kinds  # left to right differs only where * follows + or -


def flips(rows, task) -> float:
    return sum(task.reward(r["prompt"], r["chosen"]) < task.reward(r["prompt"], r["rejected"]) for r in rows) / len(rows)


@pytest.mark.parametrize("rate", [0.1, 0.25])
def test_the_measured_flip_rate_is_the_setting(rate):
    """Noiseless labels, then flips: the share of pairs whose chosen side has the lower gold reward is the
    flip rate within four binomial standard errors."""
    n = 4000
    measured = flips(REVIEWS.pairs(n, 0, Annotator(flip_rate=rate)), REVIEWS)
    assert abs(measured - rate) < 4 * math.sqrt(rate * (1 - rate) / n), measured
    assert flips(REVIEWS.pairs(n, 0, Annotator()), REVIEWS) == 0


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 25) -> np.ndarray:
    """Maximum-likelihood weights of P(y = 1) = sigma(x w), by Newton's method."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x @ w))
        w += np.linalg.solve(x.T @ (x * (p * (1 - p))[:, None]), x.T @ (y - p))
    return w


@pytest.mark.parametrize("bias", [0.1, 0.3])
def test_the_measured_length_bias_is_the_setting(bias):
    """Under Bradley-Terry noise the label's log-odds are (dr + bias * dwords) / temperature: a logistic fit on
    the generated pairs (both orders) recovers 1 / temperature and the bias within sampling error."""
    temperature, n = 1.0, 6000
    rows = REVIEWS.pairs(n, 0, Annotator(temperature=temperature, length_bias=bias))
    x, y = [], []
    for r in rows:
        dr = REVIEWS.reward(r["prompt"], r["chosen"]) - REVIEWS.reward(r["prompt"], r["rejected"])
        dw = len(r["chosen"].split()) - len(r["rejected"].split())
        x += [[dr, dw], [-dr, -dw]]
        y += [1, 0]
    w = fit_logistic(np.array(x, dtype=float), np.array(y, dtype=float))
    assert w[0] == pytest.approx(1 / temperature, rel=0.1)
    assert w[1] / w[0] == pytest.approx(bias, abs=0.04)
    chosen_longer = np.mean([len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows])
    unbiased = REVIEWS.pairs(n, 0, Annotator(temperature=temperature))
    assert chosen_longer > np.mean([len(r["chosen"].split()) > len(r["rejected"].split()) for r in unbiased]) + 0.05


def test_a_deterministic_length_biased_annotator_ranks_by_reward_plus_bias_times_words():
    for r in REVIEWS.pairs(500, 3, Annotator(length_bias=0.5)):
        u = [REVIEWS.reward(r["prompt"], t) + 0.5 * len(t.split()) for t in (r["chosen"], r["rejected"])]
        assert u[0] >= u[1]


def test_the_bradley_terry_annotator_draws_the_labels_it_drew_before_flips_and_bias_existed():
    """Temperature only: the same random draws as P(a > b) = sigma((r_a - r_b) / T) with nothing else drawn,
    so the built-in tasks' data (and every result computed from it) is unchanged."""
    rng = random.Random("reviews-pairs-0")
    expected = []
    while len(expected) < 300:
        p = REVIEWS.prompt(rng)
        a, b = REVIEWS.completion(p, rng), REVIEWS.completion(p, rng)
        ra, rb = REVIEWS.reward(p, a), REVIEWS.reward(p, b)
        if a == b or ra == rb:
            continue
        a_wins = rng.random() < 1 / (1 + math.exp(-(ra - rb) / 0.25))
        expected.append({"prompt": p, "chosen": a if a_wins else b, "rejected": b if a_wins else a})
    assert REVIEWS.pairs(300, 0, Annotator(temperature=0.25)) == expected


def task_cfg(name: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml"), overrides)


@pytest.mark.parametrize("settings,agreement", [({"temperature": 0.0}, (1.0, 1.0)),
                                                ({"temperature": 0.0, "flip_rate": 0.25}, (0.72, 0.78))])
def test_the_annotators_agreement_with_gold_on_the_training_pairs_is_counted(settings, agreement):
    clean, _ = load_clean(task_cfg("reviews", annotator=settings), 0)
    low, high = agreement
    assert low <= clean.counts["annotator_gold_agreement"] <= high
    assert clean.counts["annotator_gold_agreement"] == 1 - flips(
        [{k: "".join(m["content"] for m in r[k]) for k in ("prompt", "chosen", "rejected")} for r in clean.train],
        REVIEWS)


@pytest.mark.parametrize("overrides,message", [
    ({"label_temperature": 0.5}, "task.annotator.temperature"),
    ({"annotator": {"noise": 0.1}}, "unknown setting(s) noise; allowed: temperature, flip_rate, length_bias"),
    ({"annotator": {"flip_rate": 1.5}}, "flip_rate in [0, 1]"),
    ({"annotator": {"temperature": -1}}, "temperature must be >= 0"),
])
def test_bad_annotator_settings_are_one_line(overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        annotator(task_cfg("reviews", **overrides))


def test_a_sweep_over_two_tasks_ranks_each_task_and_says_what_travels(tmp_path, shared_cache):
    """SFT, DPO and IPO on constraints (25% flipped labels) and arithmetic, two seeds: every run done and judged
    by the task's gold reward; the report ranks each task on its own, measures the agreement across the two
    (Kendall's W, tau), shows each task's annotator and arithmetic's pass@k."""
    sweep = tmp_path / "t"
    prefbench("sweep", "task=constraints,arithmetic", "method=sft,dpo,ipo", "seed=0,1",
              "task.annotator.flip_rate=0.25",
              f"results_dir={tmp_path}", "sweep_name=t", f"cache_dir={shared_cache}", *SMOKE)
    runs = {p.name.split(",")[0].split("--")[0].replace("-tiny-xs", ""): p for p in sweep.iterdir()
            if (p / "summary.json").exists()}
    summaries = {name: json.loads((p / "summary.json").read_text()) for name, p in runs.items()}
    assert sorted(summaries) == sorted(f"{t}-{m}-s{s}" for t in ("arithmetic", "constraints")
                                       for m in ("sft", "dpo", "ipo") for s in (0, 1))
    for name, s in summaries.items():
        assert s["status"] == "done" and s["eval/judge"] == "gold", name
        assert 0.5 < s["data/annotator_gold_agreement"] < 0.95, name
    for name in ("arithmetic-sft-s0", "arithmetic-dpo-s1"):  # 8 prompts x 2 samples, scored by the gold reward
        rows = [json.loads(line) for line in (runs[name] / "samples.jsonl").read_text().splitlines()]
        by_prompt = [[r["score"] for r in rows if r["prompt_index"] == i] for i in range(8)]
        assert summaries[name]["eval/pass_at_1"] == pytest.approx(np.mean([np.mean(s) for s in by_prompt]))
        assert summaries[name]["eval/pass_at_k"] == pytest.approx(np.mean([max(s) for s in by_prompt]))
    assert "eval/pass_at_1" not in summaries["constraints-sft-s0"]

    prefbench("report", str(sweep))
    page = (sweep / "report" / "index.html").read_text()
    assert "<h2>Annotators</h2>" in page and page.count("<td>0.250</td>") >= 2
    assert "<h2>Across tasks</h2>" in page and "Kendall&#x27;s W over 2 tasks at tiny-xs" in page.replace("'", "&#x27;")
    assert "<td>arithmetic and constraints</td>" in page and "pass@k" in page
    for task in ("arithmetic", "constraints"):
        assert f"<h2>Task: {task}</h2>" in page and f"<td>{task}</td>" in page
    ranked = page.split("<h2>Across tasks</h2>")[1].split("<h2>Task: constraints</h2>")[0]
    assert "task.name=" not in ranked and "<td>DPO</td>" in ranked  # each task's series named by method alone
    pairs = pd.read_csv(sweep / "report" / "pairs.csv")
    assert set(pairs["task"]) == {"arithmetic", "constraints"} and set(pairs["a"]) | set(pairs["b"]) == {
        "sft", "dpo", "ipo"}


def test_pass_at_k_is_the_unbiased_estimator_on_hand_computed_counts():
    """n = 4 samples: c = 0 -> 0; c = 1 -> pass@1 1/4, pass@2 1 - C(3,2)/C(4,2) = 1/2; c = 4 -> 1."""
    from prefbench.eval.metrics import pass_at

    assert pass_at([[0, 0, 0, 0]], 2) == 0.0 and pass_at([[1, 1, 1, 1]], 2) == 1.0
    assert pass_at([[0, 1, 0, 0]], 1) == pytest.approx(0.25) and pass_at([[0, 1, 0, 0]], 2) == pytest.approx(0.5)
    assert pass_at([[0, 1, 0, 0], [1, 1, 0, 0]], 2) == pytest.approx((0.5 + 1 - 1 / 6) / 2)
    assert pass_at([[0.5, 1, 0, 0]], 4) == 1.0  # only a reward of exactly 1 counts as correct


def test_the_annotators_preset_plans_five_methods_under_three_annotators():
    from prefbench.job.config import register_resolvers, validate
    from prefbench.job.sweep import plan

    register_resolvers()
    sweep_dir, jobs = plan(["sweep=annotators"], validate)
    assert sweep_dir.name == "annotators" and len(jobs) == 45 and not any(j.refused for j in jobs)
    assert {j.identity["model"] for j in jobs} == {"tiny-xs"}
    settings = {next(o for o in j.overrides if o.startswith("task.annotator=")) for j in jobs}
    assert settings == {"task.annotator={temperature:0.0}", "task.annotator={temperature:0.0,flip_rate:0.25}",
                        "task.annotator={temperature:0.0,length_bias:0.1}"}
