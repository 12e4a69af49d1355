"""Property tests: every form of the built-in tasks' grammars is scored as the task's docstring specifies.

The expected values are computed here from the docstrings (prefbench/data/tasks/reviews.py, prefbench/data/tasks/sorting.py),
not with the tasks' own helpers; only the word tables (the lexicon) are shared.
"""
from __future__ import annotations

import itertools
import random
import re

import pytest

from prefbench.data.tasks import get_task
from prefbench.data.tasks.reviews import ADJECTIVES, ASPECTS, MODIFIERS, VERBS, sentence_sentiment

REVIEWS, SORTING = get_task("reviews"), get_task("sorting")


def grammar() -> dict[str, tuple[float, str | None]]:
    """Every sentence the reviews grammar derives (without its full stop): its sentiment and the aspect it names."""
    out = {}
    for verb, aspect in itertools.product(VERBS, ASPECTS):
        out[f"i {verb} the {aspect}"] = (VERBS[verb], aspect)
    for aspect, modifier, adjective in itertools.product(ASPECTS, MODIFIERS, ADJECTIVES):
        out[f"the {aspect} was {modifier}{adjective}"] = (MODIFIERS[modifier] * ADJECTIVES[adjective], aspect)
    for modifier, adjective in itertools.product(MODIFIERS, ADJECTIVES):
        out[f"a {modifier}{adjective} film"] = (MODIFIERS[modifier] * ADJECTIVES[adjective], None)
    return out


FORMS = grammar()
WORDS = sorted({w for s in FORMS for w in s.split(" ")})


def prompt(n: int, aspects: list[str], title: str = "wild river") -> str:
    return f'Review "{title}" in {n} sentence{"s" if n > 1 else ""}, focusing on the {" and the ".join(aspects)}.'


def documented_reward(n: int, aspects: list[str], sentences: list[str]) -> float:
    """The docstring's reward for a review of these sentences (each written with a full stop)."""
    parsed = [FORMS.get(s) for s in sentences]
    good = [p for p in parsed if p is not None]
    mean = sum(v for v, _ in good) / len(good) if good else -2.0
    named = sum(a in {aspect for _, aspect in good} for a in aspects) / len(aspects)
    malformed = (len(parsed) - len(good)) / len(parsed)
    return mean + named - 3.0 * malformed - 0.5 * abs(len(sentences) - n)


def test_the_grammar_has_every_documented_form():
    assert len(FORMS) == len(VERBS) * len(ASPECTS) + (len(ASPECTS) + 1) * len(MODIFIERS) * len(ADJECTIVES) == 670


def test_every_sentence_and_every_one_word_change_of_it_is_scored_as_the_grammar_derives():
    """Well-formed sentences have their value; a dropped, swapped or replaced word is well-formed only
    when the result is itself a sentence of the grammar."""
    for sentence, (value, _) in FORMS.items():
        assert sentence_sentiment(sentence) == pytest.approx(value), sentence
    variants = set()
    for sentence in FORMS:
        words = sentence.split(" ")
        for i in range(len(words)):
            variants.add(" ".join(words[:i] + words[i + 1:]))
            variants.update(" ".join(words[:i] + [w] + words[i + 1:]) for w in WORDS)
            variants.add(" ".join(words[:i] + words[i + 1: i + 2] + words[i: i + 1] + words[i + 2:]))
        variants.update({sentence + " film", sentence.replace(" ", "  ", 1), sentence.upper(), ""})
    for variant in variants - FORMS.keys():
        assert sentence_sentiment(variant) is None, variant
    assert len(variants - FORMS.keys()) > 20_000


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_every_sentence_as_a_review_for_every_aspect_and_length(n):
    """Value, on-topic bonus (one requested aspect) and the penalty for missing the requested length."""
    for sentence, aspect in itertools.product(FORMS, ASPECTS):
        got = REVIEWS.reward(prompt(n, [aspect]), sentence + ".")
        value, named = FORMS[sentence]
        assert got == pytest.approx(value + (named == aspect) - 0.5 * abs(1 - n)), (sentence, aspect, n)
        assert got == pytest.approx(documented_reward(n, [aspect], [sentence]))


def test_two_aspects_count_half_each_and_malformed_sentences_cost_three_times_their_fraction():
    broken = ["the acting was", "i loved acting", "a film", "the plot was very", "loved the plot", "good"]
    rng = random.Random(0)
    for first, second in itertools.permutations(ASPECTS, 2):
        for n in (2, 3, 4):
            for _ in range(20):
                sentences = rng.sample(list(FORMS), rng.randint(0, 4)) + rng.sample(broken, rng.randint(0, 2))
                if not sentences:
                    continue
                rng.shuffle(sentences)
                review = " ".join(s + "." for s in sentences)
                expected = documented_reward(n, [first, second], sentences)
                assert REVIEWS.reward(prompt(n, [first, second]), review) == pytest.approx(expected), (review, n)


def test_the_edges_of_a_review():
    p = prompt(2, ["acting"])
    assert REVIEWS.reward(p, "") == REVIEWS.reward(p, "  \n ") == -4.0
    # text after the last full stop is one more, malformed, sentence
    assert REVIEWS.reward(p, "i loved the acting. a good film") == pytest.approx(2.0 + 1 - 3 * 0.5)
    assert REVIEWS.reward(p, "i loved the acting.") == pytest.approx(2.0 + 1 - 0.5)
    # only malformed sentences: mean -2, no aspect named (a malformed sentence names none)
    assert REVIEWS.reward(p, "the acting was. acting.") == pytest.approx(-2.0 + 0 - 3.0)
    # more sentences than requested cost 0.5 each, fewer too
    for k in range(1, 8):
        review = " ".join(["a good film."] * k)
        assert REVIEWS.reward(p, review) == pytest.approx(1.0 - 0.5 * abs(k - 2)), k


def test_the_prompts_are_the_documented_ones_and_the_policy_writes_the_grammar():
    rng = random.Random(0)
    shape = re.compile(r'Review "(\w+ \w+)" in ([1-4]) (sentences?), focusing on the (\w+)(?: and the (\w+))?\.')
    malformed = total = 0
    for _ in range(2000):
        p = REVIEWS.prompt(rng)
        m = shape.fullmatch(p)
        assert m, p
        n, aspects = int(m[2]), [a for a in (m[4], m[5]) if a]
        assert (m[3] == "sentence") == (n == 1) and len(set(aspects)) == len(aspects) <= n
        assert set(aspects) <= set(ASPECTS)
        sentences = [s.strip() for s in REVIEWS.completion(p, rng).split(".")]
        malformed += sum(s not in FORMS for s in sentences[:-1]) + (sentences[-1] != "")
        total += len(sentences) - (sentences[-1] == "")
    assert malformed / total < 0.1, malformed / total  # only the policy's deliberate slips (15% of reviews)


def test_the_reward_depends_on_the_requested_length_and_aspects_but_not_the_title():
    probe = [" ".join(FORMS_LIST[i: i + k]) for i in range(0, 600, 37) for k in (1, 2, 3, 4, 5)]
    classes = {}
    for n in range(1, 5):
        for aspects in [[a] for a in ASPECTS] + [list(c) for c in itertools.combinations(ASPECTS, 2)]:
            if len(aspects) <= n:
                for title in ("wild river", "last road"):
                    classes.setdefault(tuple(REVIEWS.reward(prompt(n, aspects, title), c) for c in probe), set()).add(
                        (n, frozenset(aspects)))
    assert len(classes) == 4 * 8 + 3 * 28 and all(len(v) == 1 for v in classes.values())


FORMS_LIST = [s + "." for s in FORMS]


def sorting_reward(digits: list[str], completion: str) -> float:
    target, tokens = sorted(digits), completion.split()
    right = sum(i < len(tokens) and tokens[i] == d for i, d in enumerate(target)) / len(target)
    return right - 0.5 * (len(tokens) != len(target)) - 1.0 * any(t not in list("0123456789") for t in tokens)


def sorting_variants(target: list[str]):
    """The sorted list, each position replaced by every digit and by non-digit tokens, a token dropped or
    added, neighbours swapped, and other spacing."""
    yield target
    for i in range(len(target)):
        for t in [*"0123456789", "x", "12", "\u0663", "\u00b2", "-1", "1.", ""]:
            yield target[:i] + ([t] if t else []) + target[i + 1:]
        yield target[:i] + target[i + 1: i + 2] + target[i: i + 1] + target[i + 2:]
        yield target[:i] + [target[i], target[i]] + target[i + 1:]
    yield target + ["9"]
    yield target[::-1]
    yield []


def test_every_three_digit_list_and_its_variants_are_scored_as_documented():
    for digits in itertools.product("0123456789", repeat=3):
        p = "sort: " + " ".join(digits)
        for tokens in sorting_variants(sorted(digits)):
            for completion in (" ".join(tokens), "  " + "\t".join(tokens) + "\n"):
                got = SORTING.reward(p, completion)
                assert got == pytest.approx(sorting_reward(list(digits), completion)), (p, completion)
        assert SORTING.reward(p, " ".join(sorted(digits))) == 1.0


def test_longer_lists_and_the_behaviour_policy_are_scored_as_documented():
    rng = random.Random(0)
    for _ in range(300):
        p = SORTING.prompt(rng)
        digits = p.split(" ")[1:]
        assert p.startswith("sort: ") and 3 <= len(digits) <= 8 and all(d in "0123456789" for d in digits)
        completions = [" ".join(t) for t in sorting_variants(sorted(digits))] + [SORTING.completion(p, rng) for _ in range(5)]
        for c in completions:
            assert SORTING.reward(p, c) == pytest.approx(sorting_reward(digits, c)), (p, c)
