"""Movie reviews, after the DPO paper's IMDb experiment: the gold reward is the review's sentiment.

Prompt: 'Review "<title>" in <n> sentences, focusing on the <aspect>.' or, with two distinct aspects,
'... focusing on the <aspect> and the <aspect>.'; n is 1-4 ('1 sentence'), and at least the number of
aspects. A review is sentences from a small grammar, each ending in a full stop:
  the <aspect> was [modifier] <adjective>.   |   i <verb> the <aspect>.   |   a [modifier] <adjective> film.
Words are separated by single spaces; text after the last full stop is one more, malformed, sentence.
Sentence sentiment is the adjective's or verb's value times the modifier's factor ('not' flips and
damps, intensifiers scale). The gold reward is the mean sentiment of the well-formed sentences (-2 when
none is), plus the fraction of the requested aspects that a well-formed sentence names, -3 times the
fraction of malformed sentences, and -0.5 per sentence more or fewer than the n requested; an empty
review scores -4.
"""
from __future__ import annotations

import random
import re

from prefbench.data.tasks import register_task
from prefbench.data.tasks.base import SyntheticTask

ADJECTIVES = {"great": 2.0, "wonderful": 2.0, "brilliant": 2.0, "good": 1.0, "fine": 0.5, "okay": 0.0,
              "dull": -1.0, "bad": -1.0, "awful": -2.0, "terrible": -2.0}
VERBS = {"loved": 2.0, "liked": 1.0, "enjoyed": 1.0, "disliked": -1.0, "hated": -2.0}
MODIFIERS = {"": 1.0, "very ": 1.5, "really ": 1.5, "extremely ": 2.0, "slightly ": 0.5,
             "not ": -0.5, "not very ": -0.3}
ASPECTS = ["acting", "plot", "music", "ending", "dialogue", "visuals", "pacing", "cast"]
TITLE_A = ["silent", "last", "golden", "broken", "hidden", "crimson", "distant", "little", "wild", "final"]
TITLE_B = ["river", "summer", "empire", "garden", "signal", "harbor", "winter", "machine", "kingdom", "road"]
MAX_SENTENCES = 4
PROMPT = re.compile(r'Review "[^"]*" in ([1-9]) sentences?, focusing on the (\w+)(?: and the (\w+))?\.')


def sentence_sentiment(sentence: str) -> float | None:
    """Sentiment of one sentence, or None when the grammar does not derive it."""
    words = sentence.split(" ")
    if len(words) == 4 and words[0] == "i" and words[1] in VERBS and words[2] == "the" and words[3] in ASPECTS:
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


def request(prompt: str) -> tuple[int, list[str]]:
    """The number of sentences and the aspects a prompt asks for."""
    match = PROMPT.fullmatch(prompt)
    if match is None:
        raise ValueError(f"not a reviews prompt: {prompt!r}")
    return int(match[1]), [a for a in match.groups()[1:] if a]


def split_sentences(text: str) -> list[str]:
    """A review's sentences (without their full stops); text after the last full stop is marked unterminated."""
    sentences = [s.strip() for s in text.strip().split(".")]
    if sentences[-1] == "":
        sentences.pop()
    else:
        sentences[-1] += " <unterminated>"  # a review must end with a full stop
    return sentences


@register_task
class Reviews(SyntheticTask):
    name = "reviews"
    max_new_tokens = 40
    version = 2  # 2: 'i <verb> the <aspect>' scored; prompts ask for a length and 1-2 aspects

    def prompt(self, rng: random.Random) -> str:
        title = f"{rng.choice(TITLE_A)} {rng.choice(TITLE_B)}"
        n = rng.randint(1, MAX_SENTENCES)
        aspects = rng.sample(ASPECTS, 2 if n > 1 and rng.random() < 0.5 else 1)
        unit = "sentence" if n == 1 else "sentences"
        return f'Review "{title}" in {n} {unit}, focusing on the {" and the ".join(aspects)}.'

    def completion(self, prompt: str, rng: random.Random) -> str:
        n, aspects = request(prompt)
        mood = rng.gauss(0, 1)  # a reviewer leans positive or negative across the review
        sentences = []
        length = n if rng.random() < 0.5 else rng.choice([1, 2, 2, 3, 3, 4, 5])
        for i in range(length):
            about = aspects[i % len(aspects)] if rng.random() < 0.5 else rng.choice(ASPECTS)
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
        n, aspects = request(prompt)
        if not completion.strip():
            return -4.0
        sentences = split_sentences(completion)
        scores = [sentence_sentiment(s) for s in sentences]
        good = [s for s in scores if s is not None]
        malformed = (len(scores) - len(good)) / len(scores)
        named = {w for s, score in zip(sentences, scores) if score is not None for w in s.split(" ")}
        on_topic = sum(a in named for a in aspects) / len(aspects)
        mean = sum(good) / len(good) if good else -2.0
        return mean + on_topic - 3.0 * malformed - 0.5 * abs(len(sentences) - n)
