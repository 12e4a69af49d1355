"""Movie reviews, after the DPO paper's IMDb experiment: the gold reward is the review's sentiment.

Prompt: 'Review "<title>", focusing on the <aspect>.'  A review is 1-5 sentences from a small grammar:
  the <aspect> was [modifier] <adjective>.   |   i <verb> the <aspect>.   |   a [modifier] <adjective> film.
Sentence sentiment is the adjective's or verb's value times the modifier's factor ('not' flips and
damps, intensifiers scale). The gold reward is the mean sentence sentiment, +1 if a well-formed
sentence discusses the requested aspect, -3 times the fraction of malformed sentences, -0.5 per
sentence beyond three; an empty review scores -4.
"""
from __future__ import annotations

import random

from bench.tasks import register_task
from bench.tasks.base import SyntheticTask

ADJECTIVES = {"great": 2.0, "wonderful": 2.0, "brilliant": 2.0, "good": 1.0, "fine": 0.5, "okay": 0.0,
              "dull": -1.0, "bad": -1.0, "awful": -2.0, "terrible": -2.0}
VERBS = {"loved": 2.0, "liked": 1.0, "enjoyed": 1.0, "disliked": -1.0, "hated": -2.0}
MODIFIERS = {"": 1.0, "very ": 1.5, "really ": 1.5, "extremely ": 2.0, "slightly ": 0.5,
             "not ": -0.5, "not very ": -0.3}
ASPECTS = ["acting", "plot", "music", "ending", "dialogue", "visuals", "pacing", "cast"]
TITLE_A = ["silent", "last", "golden", "broken", "hidden", "crimson", "distant", "little", "wild", "final"]
TITLE_B = ["river", "summer", "empire", "garden", "signal", "harbor", "winter", "machine", "kingdom", "road"]


def sentence_sentiment(sentence: str) -> float | None:
    """Sentiment of one sentence, or None when the grammar does not derive it."""
    words = sentence.split(" ")
    if len(words) == 3 and words[0] == "i" and words[1] in VERBS and words[2] in ASPECTS:
        return VERBS[words[1]]
    if len(words) >= 3 and words[0] == "the" and words[1] in ASPECTS and words[2] == "was":
        return _modified(words[3:])
    if len(words) >= 3 and words[0] == "a" and words[-1] == "film":
        return _modified(words[1:-1])
    return None


def _modified(words: list[str]) -> float | None:
    if not words or words[-1] not in ADJECTIVES:
        return None
    modifier = " ".join(words[:-1]) + " " if len(words) > 1 else ""
    if modifier not in MODIFIERS:
        return None
    return MODIFIERS[modifier] * ADJECTIVES[words[-1]]


@register_task
class Reviews(SyntheticTask):
    name = "reviews"
    max_new_tokens = 40

    def prompt(self, rng: random.Random) -> str:
        title = f"{rng.choice(TITLE_A)} {rng.choice(TITLE_B)}"
        return f'Review "{title}", focusing on the {rng.choice(ASPECTS)}.'

    def completion(self, prompt: str, rng: random.Random) -> str:
        aspect = prompt.rsplit(" ", 1)[-1].rstrip(".")
        mood = rng.gauss(0, 1)  # a reviewer leans positive or negative across the review
        sentences = []
        for _ in range(rng.choice([1, 2, 2, 3, 3, 4, 5])):
            about = aspect if rng.random() < 0.5 else rng.choice(ASPECTS)
            sentences.append(self._sentence(about, mood, rng))
        text = " ".join(sentences)
        if rng.random() < 0.15:  # a slip: a word dropped or swapped
            words = text.split(" ")
            i = rng.randrange(len(words))
            if rng.random() < 0.5 and len(words) > 1:
                del words[i]
            else:
                words[i] = rng.choice(list(ADJECTIVES) + ASPECTS + ["the", "was"])
            text = " ".join(words)
        return text

    @staticmethod
    def _sentence(aspect: str, mood: float, rng: random.Random) -> str:
        def pick(table: dict[str, float]) -> str:
            keys = list(table)
            weights = [2.718 ** (0.8 * mood * table[k]) for k in keys]
            return rng.choices(keys, weights)[0]

        modifier = rng.choice(list(MODIFIERS))
        form = rng.randrange(3)
        if form == 0:
            return f"the {aspect} was {modifier}{pick(ADJECTIVES)}."
        if form == 1:
            return f"i {pick(VERBS)} the {aspect}."
        return f"a {modifier}{pick(ADJECTIVES)} film."

    def reward(self, prompt: str, completion: str) -> float:
        aspect = prompt.rsplit(" ", 1)[-1].rstrip(".")
        text = completion.strip()
        if not text:
            return -4.0
        sentences = [s.strip() for s in text.split(".")]
        if sentences[-1] == "":
            sentences.pop()
        else:
            sentences[-1] += " <unterminated>"  # a review must end with a full stop
        scores = [sentence_sentiment(s) for s in sentences]
        good = [s for s in scores if s is not None]
        malformed = (len(scores) - len(good)) / len(scores)
        on_topic = any(sentence_sentiment(s) is not None and f" {aspect} " in f" {s} " for s in sentences)
        mean = sum(good) / len(good) if good else -2.0
        return mean + 1.0 * on_topic - 3.0 * malformed - 0.5 * max(0, len(sentences) - 3)
