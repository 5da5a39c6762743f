"""BABILong-style documents (Kuratov et al. 2024): a bAbI story (`data/babi.py`) whose facts are spread
through a passage of real text (`data/haystack.py`), then the question and its one-word answer.

Facts keep their order. With a depth range (lo, hi) each fact sits at a depth drawn uniformly in it
(BABILong spreads them over the whole text: 0:1); with one depth d the story sits there in one
block. The answer span's source is the earliest supporting fact; meta.json also records every
supporting fact's offset (`supporting`) and the depth of the earliest one (`depth`). Newlines after
the answer pad it to the longest possible answer's tokens: the question always sits at the same
offset, so its position cannot tell the answer (answers are 1-5 tokens: " garden" vs " k|it|ch|en").
"""

from __future__ import annotations

import random

from elastic_cli.data import babi, babi_solver
from elastic_cli.data.haystack import Built, Haystack, Pieces, build


def document(hay: Haystack, length: int, rng: random.Random, qa: int, depth: tuple[float, float]) -> Built:
    s = babi.story(qa, rng)
    at = sorted(rng.uniform(*depth) for _ in s.facts)
    inserts = [(d, " " + f, i in s.supporting) for i, (d, f) in enumerate(zip(at, s.facts))]
    first = min(s.supporting)
    room = max(len(hay.tok.encode(" " + w)) for w in (*babi.PLACES, *babi.OBJECTS, *babi.ACTORS))
    doc = build(hay, length, rng, Pieces("", inserts, f"\nQuestion: {s.question} Answer:", [(" " + s.answer, first)], room))
    if babi_solver.solve(doc.text) != s.answer:  # the haystack filter keeps book sentences from reading as facts
        raise RuntimeError(f"babilong qa{qa}: the document's facts do not give its answer {s.answer!r}")
    return doc
