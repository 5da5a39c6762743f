"""The bAbI tasks qa1-qa5 (Weston et al. 2015, "Towards AI-complete question answering", §3), written
from their definitions as a small seeded world simulation; BABILong (Kuratov et al. 2024) hides such
a story in book text (`data/babilong.py`).

- qa1 single supporting fact: actors move between places; "Where is Mary?".
- qa2 two supporting facts: actors also pick up and drop objects; "Where is the football?"
  (who holds it, and where they went; or where it was dropped).
- qa3 three supporting facts: "Where was the football before the kitchen?" (the object's path).
- qa4 two-argument relations: "The office is north of the kitchen."; "What is north of the kitchen?"
  or "What is the kitchen north of?".
- qa5 three-argument relations: actors give objects to each other; "Who gave the milk to Fred?",
  "Who did Fred give the milk to?", "What did Fred give to Bill?", "Who received the milk?",
  "Who gave the milk?" (always about the latest matching gift).

The generator simulates the world forward (who is where, who holds what); `data/babi_solver.py`
recomputes each answer from the sentences alone by another method, for the tests and for checks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ACTORS = ("Mary", "John", "Daniel", "Sandra", "Fred", "Bill", "Jeff", "Julie")
PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
MOVE = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
GET = ("picked up", "got", "grabbed", "took")
DROP = ("dropped", "discarded", "put down", "left")
DIRS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
QA = (1, 2, 3, 4, 5)
FACTS = {1: (4, 8), 2: (6, 12), 3: (8, 14), 5: (6, 10)}   # facts per story, drawn in [lo, hi]


@dataclass
class Story:
    facts: list[str]          # sentences, e.g. "Mary moved to the bathroom."
    question: str             # e.g. "Where is Mary?"
    answer: str               # one word
    supporting: list[int]     # indices into facts


class World:
    """Where each actor is (and since which fact), who holds each object, and where each object has been."""

    def __init__(self, actors: list[str]):
        self.at: dict[str, tuple[str, int]] = {}           # actor -> (place, fact index of the move)
        self.holds: dict[str, str] = {}                    # object -> actor
        self.lying: dict[str, tuple[str, int]] = {}        # dropped object -> (place, fact index of the drop)
        self.path: dict[str, list[tuple[str, int]]] = {}   # object -> [(place, fact index that put it there)]
        self.actors, self.facts, self.events = actors, [], []

    def _log(self, text: str, event: tuple) -> None:
        self.facts.append(text)
        self.events.append(event)

    def _visit(self, obj: str, place: str, why: int) -> None:
        p = self.path.setdefault(obj, [])
        if not p or p[-1][0] != place:
            p.append((place, why))

    def move(self, rng: random.Random, actor: str) -> None:
        place = rng.choice([p for p in PLACES if p != self.at.get(actor, ("",))[0]])
        n = len(self.facts)
        self._log(f"{actor} {rng.choice(MOVE)} the {place}.", ("move", actor, place))
        self.at[actor] = (place, n)
        for obj, holder in self.holds.items():
            if holder == actor:
                self._visit(obj, place, n)

    def get(self, rng: random.Random, actor: str, obj: str) -> None:
        self._log(f"{actor} {rng.choice(GET)} the {obj} there.", ("get", actor, obj))
        self.holds[obj] = actor
        self.lying.pop(obj, None)
        self._visit(obj, self.at[actor][0], self.at[actor][1])

    def drop(self, rng: random.Random, actor: str, obj: str) -> None:
        n = len(self.facts)
        self._log(f"{actor} {rng.choice(DROP)} the {obj}.", ("drop", actor, obj))
        del self.holds[obj]
        self.lying[obj] = (self.at[actor][0], n)

    def give(self, actor: str, obj: str, to: str) -> None:
        self._log(f"{actor} gave the {obj} to {to}.", ("give", actor, obj, to))
        self.holds[obj] = to

    def gettable(self, actor: str) -> list[str]:
        """Objects `actor` can pick up: never seen yet, or lying where the actor is."""
        if actor not in self.at:
            return []
        return [o for o in OBJECTS if o not in self.holds and (o not in self.path or
                                                                self.lying.get(o, ("",))[0] == self.at[actor][0])]

    def step(self, rng: random.Random, gives: bool = False) -> None:
        """One random event that the world allows."""
        actor = rng.choice(self.actors)
        options = ["move"]
        if self.gettable(actor):
            options.append("get")
        held = [o for o, a in self.holds.items() if a == actor]
        if held:
            options.append("drop")
            mates = [b for b in self.actors if b != actor and b in self.at and self.at[b][0] == self.at[actor][0]]
            if gives and mates:
                options += ["give"] * 3
        kind = rng.choice(options)
        if kind == "move":
            self.move(rng, actor)
        elif kind == "get":
            self.get(rng, actor, rng.choice(self.gettable(actor)))
        elif kind == "drop":
            self.drop(rng, actor, rng.choice(held))
        else:
            self.give(actor, rng.choice(held), rng.choice(mates))


def story(qa: int, rng: random.Random) -> Story:
    """One story of bAbI task `qa` with its question, answer and supporting facts."""
    if qa == 4:
        return _relations(rng)
    for _ in range(1000):
        s = _try(qa, rng)
        if s is not None:
            return s
    raise RuntimeError(f"no qa{qa} story found")  # pragma: no cover (a question is always reachable)


def _try(qa: int, rng: random.Random) -> Story | None:
    w = World(rng.sample(ACTORS, 4))
    lo, hi = FACTS[qa]
    for _ in range(rng.randint(lo, hi)):
        if qa == 1:
            w.move(rng, rng.choice(w.actors))
        else:
            w.step(rng, gives=qa == 5)
    if qa == 1:
        actor = rng.choice(sorted(w.at))
        return Story(w.facts, f"Where is {actor}?", w.at[actor][0], [w.at[actor][1]])
    if qa == 2:
        objs = [o for o in sorted(w.path) if o in w.holds and w.holds[o] in w.at or o in w.lying]
        if not objs:
            return None
        obj = rng.choice(objs)
        if obj in w.lying:
            place, n = w.lying[obj]
            mover = max(i for i, e in enumerate(w.events[:n]) if e[:2] == ("move", w.events[n][1]))
            return Story(w.facts, f"Where is the {obj}?", place, [mover, n])
        actor = w.holds[obj]
        got = max(i for i, e in enumerate(w.events) if e == ("get", actor, obj))
        return Story(w.facts, f"Where is the {obj}?", w.at[actor][0], sorted({got, w.at[actor][1]}))
    if qa == 3:
        objs = [o for o in sorted(w.path) if len(w.path[o]) >= 2]
        if not objs:
            return None
        obj = rng.choice(objs)
        (before, n0), (now, n1) = w.path[obj][-2], w.path[obj][-1]
        got = max(i for i, e in enumerate(w.events[:n1 + 1]) if e[0] == "get" and e[2] == obj)
        return Story(w.facts, f"Where was the {obj} before the {now}?", before, sorted({n0, got, n1}))
    gifts = [i for i, e in enumerate(w.events) if e[0] == "give"]
    if not gifts:
        return None
    g = gifts[-1]
    _, giver, obj, to = w.events[g]
    kind = rng.randrange(5)
    question, answer = [(f"Who gave the {obj} to {to}?", giver), (f"Who did {giver} give the {obj} to?", to),
                        (f"What did {giver} give to {to}?", obj), (f"Who received the {obj}?", to),
                        (f"Who gave the {obj}?", giver)][kind]
    return Story(w.facts, question, answer, [g])


def _relations(rng: random.Random) -> Story:
    """qa4: places on a grid; two facts about a shared place, one asked either way round."""
    mid, a, b = rng.sample(PLACES, 3)
    d1, d2 = rng.sample(sorted(DIRS), 2)
    pos = {mid: (0, 0), a: DIRS[d1], b: DIRS[d2]}
    facts = [f"The {a} is {d1} of the {mid}.", f"The {b} is {d2} of the {mid}."]
    k = rng.randrange(2)
    other, d = (a, d1) if k == 0 else (b, d2)
    if rng.randrange(2):        # "What is D of the mid?" -> the place at mid + D
        target = (pos[mid][0] + DIRS[d][0], pos[mid][1] + DIRS[d][1])
        answer = next(p for p, xy in pos.items() if xy == target)
        return Story(facts, f"What is {d} of the {mid}?", answer, [k])
    target = (pos[other][0] - DIRS[d][0], pos[other][1] - DIRS[d][1])  # "What is the other D of?"
    answer = next(p for p, xy in pos.items() if xy == target)
    return Story(facts, f"What is the {other} {d} of?", answer, [k])
