"""Follow verifiable instructions, as IFEval checks them: the gold reward is the fraction of constraints met.

Prompt: 'about <topic>; <constraint>; ...' with 1-4 constraints of distinct kinds, e.g.
'about sea; words 4-8; include blue; start the'. A completion's words are its whitespace-separated pieces with
full stops removed (empty pieces dropped), compared case-insensitively; its sentences are the non-empty pieces
between full stops (text after the last one counts). The constraint kinds and when each is met:
  words A-B      A <= number of words <= B           include W   W is one of the words
  exclude W      W is none of the words              start W     the first word is W
  end W          the last word is W                  twice W     W is exactly two of the words
  sentences N    exactly N sentences                 case lower / case upper   it has letters, and none of
                                                                               them is upper / lower case
The gold reward is the number of constraints met over the number asked for; a completion without a word
scores 0. The words W of one prompt are distinct, drawn from the topic's lexicon.
"""
from __future__ import annotations

import random
import re

from prefbench.data.tasks import register_task
from prefbench.data.tasks.base import SyntheticTask

LEXICON = {
    "sea": ["the", "blue", "waves", "boat", "salt", "wind", "calm", "deep", "shore", "fish"],
    "forest": ["the", "green", "trees", "moss", "path", "birds", "quiet", "old", "leaves", "deer"],
    "city": ["the", "busy", "streets", "lights", "train", "tall", "noise", "night", "crowd", "cafe"],
    "winter": ["the", "cold", "snow", "ice", "white", "fire", "long", "dark", "frost", "warm"],
    "music": ["the", "loud", "song", "drums", "slow", "voice", "piano", "band", "soft", "beat"],
    "garden": ["the", "red", "roses", "soil", "rain", "bees", "sun", "grass", "seeds", "tall"],
}
WORD_KINDS = ("include", "exclude", "start", "end", "twice")
KINDS = ("words", "sentences", "case", *WORD_KINDS)
PROMPT = re.compile(r"about (\w+)((?:; \w+ [\w-]+)+)")


def parse(prompt: str) -> tuple[str, list[tuple[str, str]]]:
    """A prompt's topic and its (kind, argument) constraints."""
    match = PROMPT.fullmatch(prompt)
    if match is None:
        raise ValueError(f"not a constraints prompt: {prompt!r}")
    return match[1], [tuple(c.split(" ")) for c in match[2].split("; ")[1:]]


def words_of(text: str) -> list[str]:
    return [w.lower() for w in text.replace(".", " ").split()]


def sentences_of(text: str) -> list[str]:
    return [s for s in text.split(".") if s.strip()]


def met(kind: str, arg: str, text: str) -> bool:
    """Whether ``text`` meets the constraint ``kind arg``."""
    words = words_of(text)
    if kind == "words":
        low, high = map(int, arg.split("-"))
        return low <= len(words) <= high
    if kind == "sentences":
        return len(sentences_of(text)) == int(arg)
    if kind == "case":
        letters = [c for c in text if c.isalpha()]
        return bool(letters) and all(c.islower() if arg == "lower" else c.isupper() for c in letters)
    checks = {"include": lambda: arg in words, "exclude": lambda: arg not in words,
              "start": lambda: words[:1] == [arg], "end": lambda: words[-1:] == [arg],
              "twice": lambda: words.count(arg) == 2}
    return checks[kind]()


@register_task
class Constraints(SyntheticTask):
    name = "constraints"
    max_new_tokens = 40

    def prompt(self, rng: random.Random) -> str:
        topic = rng.choice(sorted(LEXICON))
        kinds = rng.sample(KINDS, rng.randint(1, 4))
        pool = rng.sample(LEXICON[topic], len(kinds))
        args = {"words": lambda: f"{(low := rng.randint(3, 8))}-{low + rng.randint(2, 5)}",
                "sentences": lambda: str(rng.randint(1, 3)), "case": lambda: rng.choice(["lower", "upper"])}
        parts = [f"{k} {args[k]() if k in args else pool[i]}" for i, k in enumerate(kinds)]
        return "; ".join([f"about {topic}", *parts])

    def completion(self, prompt: str, rng: random.Random) -> str:
        """Sentences of topic words that honour each constraint with probability 0.6 (some by chance)."""
        topic, constraints = parse(prompt)
        honour = {kind: (arg, rng.random() < 0.6) for kind, arg in constraints}
        words = self._words(LEXICON[topic], honour, rng)
        n_sent = int(honour["sentences"][0]) if honour.get("sentences", ("", False))[1] else rng.randint(1, 3)
        n_sent = min(n_sent, len(words))
        cuts = sorted(rng.sample(range(1, len(words)), n_sent - 1)) if n_sent > 1 else []
        text = " ".join(" ".join(words[a:b]) + "." for a, b in zip([0, *cuts], [*cuts, len(words)]))
        case, keep = honour.get("case", (None, rng.random() < 0.7))
        if case == "upper" and keep:
            return text.upper()
        return text if keep or case == "upper" else text[0].upper() + text[1:]

    @staticmethod
    def _words(lexicon: list[str], honour: dict, rng: random.Random) -> list[str]:
        low, high = (3, 12)
        if "words" in honour:
            a, b = map(int, honour["words"][0].split("-"))
            low, high = (a, b) if honour["words"][1] else rng.choice([(1, max(1, a - 1)), (b + 1, b + 4)])
        fixed = {honour[k][0] for k in WORD_KINDS if k in honour}
        free = [w for w in lexicon if w not in fixed] or lexicon
        words = [rng.choice(free) for _ in range(rng.randint(low, high))]
        for kind in WORD_KINDS:
            if kind not in honour:
                continue
            (arg, keep), middle = honour[kind], rng.randrange(len(words))
            if kind == "include" and keep or kind == "exclude" and not keep:
                words[middle] = arg
            elif kind == "start" and keep:
                words[0] = arg
            elif kind == "end" and keep:
                words[-1] = arg
            elif kind == "twice":
                for i in rng.sample(range(len(words)), min(len(words), 2 if keep else rng.choice([1, 3]))):
                    words[i] = arg
        return words

    def reward(self, prompt: str, completion: str) -> float:
        _, constraints = parse(prompt)
        if not words_of(completion):
            return 0.0
        return sum(met(kind, arg, completion) for kind, arg in constraints) / len(constraints)
