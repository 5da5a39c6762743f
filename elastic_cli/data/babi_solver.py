"""Recompute the answer of a bAbI / BABILong document from its text alone (the tests' independent
solver; `tasks.check_answer("babilong", ...)`).

It shares no code with the generator (`data/babi.py`): it finds the fact sentences in the text by
pattern, then answers the question by searching backwards through them (qa1, qa2, qa5), by asking
where the object was after each fact (qa3), or by reading the relations both ways round (qa4).
The generator instead simulates the world forward.
"""

from __future__ import annotations

import re

NAME = r"([A-Z][a-z]+)"
WORD = r"([a-z]+)"
PATTERNS = [
    ("move", re.compile(rf"\b{NAME} (?:moved|went|journeyed|travelled|went back) to the {WORD}\.")),
    ("get", re.compile(rf"\b{NAME} (?:picked up|got|grabbed|took) the {WORD} there\.")),
    ("drop", re.compile(rf"\b{NAME} (?:dropped|discarded|put down|left) the {WORD}\.")),
    ("give", re.compile(rf"\b{NAME} gave the {WORD} to {NAME}\.")),
    ("rel", re.compile(rf"\bThe {WORD} is (north|south|east|west) of the {WORD}\.")),
]
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def facts(text: str) -> list[tuple]:
    """Every fact sentence of `text` in order of appearance: (kind, *arguments)."""
    found = []
    for kind, pat in PATTERNS:
        found += [(m.start(), (kind, *m.groups())) for m in pat.finditer(text)]
    return [f for _, f in sorted(found)]


def solve(text: str) -> str | None:
    """The answer to the last question of `text`, from its facts; None when it cannot be answered."""
    qs = re.findall(r"Question: ([^?\n]*\?)", text)
    if not qs:
        return None
    q, fs = qs[-1], facts(text.rsplit("Question:", 1)[0])
    if m := re.fullmatch(rf"Where is {NAME}\?", q):
        return _place_of(fs, m.group(1), len(fs))
    if m := re.fullmatch(rf"Where is the {WORD}\?", q):
        return _object_at(fs, m.group(1), len(fs))
    if m := re.fullmatch(rf"Where was the {WORD} before the {WORD}\?", q):
        trail = []
        for t in range(1, len(fs) + 1):
            p = _object_at(fs, m.group(1), t)
            if p is not None and (not trail or trail[-1] != p):
                trail.append(p)
        hits = [i for i, p in enumerate(trail) if p == m.group(2) and i > 0]
        return trail[hits[-1] - 1] if hits else None
    if m := re.fullmatch(rf"What is (north|south|east|west) of the {WORD}\?", q):
        return _related(fs, m.group(2), m.group(1))
    if m := re.fullmatch(rf"What is the {WORD} (north|south|east|west) of\?", q):
        return _related(fs, m.group(1), OPPOSITE[m.group(2)])
    gifts = [f[1:] for f in fs if f[0] == "give"][::-1]          # (giver, object, receiver), latest first
    for pattern, want, pick in [(rf"Who gave the {WORD} to {NAME}\?", (None, 1, 2), 0),
                                (rf"Who did {NAME} give the {WORD} to\?", (1, 2, None), 2),
                                (rf"What did {NAME} give to {NAME}\?", (1, None, 2), 1),
                                (rf"Who received the {WORD}\?", (None, 1, None), 2),
                                (rf"Who gave the {WORD}\?", (None, 1, None), 0)]:
        if m := re.fullmatch(pattern, q):
            for g in gifts:
                if all(k is None or g[i] == m.group(k) for i, k in enumerate(want)):
                    return g[pick]
            return None
    return None


def _place_of(fs: list[tuple], actor: str, t: int) -> str | None:
    """Where `actor` is after the first t facts: their latest move."""
    for f in reversed(fs[:t]):
        if f[0] == "move" and f[1] == actor:
            return f[2]
    return None


def _object_at(fs: list[tuple], obj: str, t: int) -> str | None:
    """Where `obj` is after the first t facts: with whoever last took, got or was given it (where they
    are now), or where it was last dropped (where the dropper was then)."""
    for n in range(t - 1, -1, -1):
        f = fs[n]
        if f[0] in ("get", "drop") and f[2] == obj:
            return _place_of(fs, f[1], t if f[0] == "get" else n)
        if f[0] == "give" and f[2] == obj:
            return _place_of(fs, f[3], t)
    return None


def _related(fs: list[tuple], place: str, direction: str) -> str | None:
    """The place lying `direction` of `place`, from "A is D of B" facts read both ways round."""
    for f in fs:
        if f[0] == "rel":
            a, d, b = f[1:]
            if b == place and d == direction:
                return a
            if a == place and d == OPPOSITE[direction]:
                return b
    return None
