"""Needles in a haystack of real text (`data/haystack.py`): passkey retrieval (Mohtashami & Jaggi 2023)
and RULER's multi-key and multi-value needles (Hsieh et al. 2024, §3.1, niah_multikey /
niah_multivalue).

- passkey: one 5-digit key, asked at the end (the same sentences as the filler passkey task).
- niah-multikey: `needles` magic numbers, each under its own key; one key is asked.
- niah-multivalue: `needles` magic numbers under one key; all are asked, in order of appearance,
  each value its own answer span with its own source.
A depth range (lo, hi) draws each needed needle's depth in it; one depth d puts them there together.
Distractor needles (multikey) sit anywhere. `check` recomputes the answer from the text alone.
"""

from __future__ import annotations

import random
import re

from elastic_cli.data.haystack import Built, Haystack, Pieces, build

ADJ = ("amber", "brave", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly", "lucky", "mellow")
NOUN = ("anchor", "badger", "candle", "dune", "ember", "falcon", "harbor", "island", "lantern", "meadow", "orchid",
        "pebble")
INTRO = ("A special magic number is hidden within the following text. Make sure to memorize it. "
         "I will quiz you about the number afterwards.\n")
NEEDLE = " One of the special magic numbers for {} is: {}."
PASSKEY_INTRO = "There is a pass key hidden inside a lot of irrelevant text. Find it and remember it.\n"
PASSKEY_NEEDLE = " The pass key is {0}. Remember it. {0} is the pass key."


def _at(rng: random.Random, depth: tuple[float, float]) -> float:
    return rng.uniform(*depth)


def passkey(hay: Haystack, length: int, rng: random.Random, depth: tuple[float, float]) -> Built:
    key = str(rng.randrange(10000, 100000))
    return build(hay, length, rng, Pieces(PASSKEY_INTRO, [(_at(rng, depth), PASSKEY_NEEDLE.format(key), True)],
                                          "\nWhat is the pass key? The pass key is ", [(key, 0)]))


def multikey(hay: Haystack, length: int, rng: random.Random, depth: tuple[float, float], needles: int) -> Built:
    keys = rng.sample([f"{a}-{n}" for a in ADJ for n in NOUN], needles)
    values = [str(rng.randrange(1000000, 10000000)) for _ in keys]
    inserts = [(_at(rng, depth) if i == 0 else rng.random(), NEEDLE.format(k, v), i == 0)
               for i, (k, v) in enumerate(zip(keys, values))]                      # keys[0] is asked
    q = (f"\nWhat is the special magic number for {keys[0]} mentioned in the provided text? "
         f"The special magic number for {keys[0]} mentioned in the provided text is")
    return build(hay, length, rng, Pieces(INTRO, inserts, q, [(" " + values[0], 0)]))


def multivalue(hay: Haystack, length: int, rng: random.Random, depth: tuple[float, float], needles: int) -> Built:
    key = f"{rng.choice(ADJ)}-{rng.choice(NOUN)}"
    values = rng.sample(range(1000000, 10000000), needles)
    at = sorted(_at(rng, depth) for _ in values)                                   # index order = text order
    inserts = [(d, NEEDLE.format(key, v), True) for d, v in zip(at, values)]
    q = (f"\nWhat are all the special magic numbers for {key} mentioned in the provided text? "
         f"The special magic numbers for {key} mentioned in the provided text are")
    tail = []
    for i, v in enumerate(values):
        tail += [(",", None)] * (i > 0) + [(f" {v}", i)]
    return build(hay, length, rng, Pieces(INTRO, inserts, q, tail))


def check(text: str, answer: str) -> bool:
    """Whether `answer` (the text after the question) is right for a multi-key or multi-value
    document `text`: the value(s) written under the asked key, in order of appearance."""
    asked = re.findall(r"special magic numbers? for (\S+) mentioned in the provided text\?", text)
    if not asked:
        return False
    found = [v for k, v in re.findall(r"One of the special magic numbers for (\S+) is: (\d+)\.", text) if k == asked[-1]]
    return bool(found) and [a.strip() for a in answer.split(",")] == found   # multikey: its one value
