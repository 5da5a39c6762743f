"""Multi-query associative recall written as text (after Zoology's MQAR, Arora et al. 2023, §3).

A document is a row of single-token words. `pairs` keys are written once each, each followed by
its value ("k v"); later, `queries` of those keys are written again, and the token after each is
its value: an answer span. Every other position holds a noise word (`noise` of them; 1 = one filler word repeated). Keys, values and noise come
from three disjoint pools of words that the tokenizer encodes as one piece each, so every word is
exactly one token and a span's position is exact.

Distances are counted in segments of `segment_len` tokens of the stored document (BOS at offset 0,
as the loader cuts it): a pair whose fact sits in segment f and whose query sits in segment g has
distance g - f. `distance=(0, 0)` puts every fact in the same segment as its query (local attention
can solve it: the control), `distance=(2, 7)` only memory can. A fact or a query never straddles a
segment boundary.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import UsageError

WORD = re.compile(r"[a-z]{3,8}")
NOISE_POOL = 256  # noise words at most (`noise` chooses how many are used)


def word_pools(tok: Tokenizer, keys: int, values: int, noise: int = NOISE_POOL) -> tuple[list[str], list[str], list[str]]:
    """Disjoint key, value and noise words, each exactly one token after a space. Deterministic for a
    tokenizer: its one-piece lower-case words in id order, dealt in turn to keys, values and noise."""
    words = [p[1:] for p in map(tok.piece, range(tok.vocab_size))
             if p.startswith("\u2581") and WORD.fullmatch(p[1:]) and len(tok.encode(" " + p[1:])) == 1]
    if len(words) < 3 * max(keys, values, NOISE_POOL):
        raise UsageError(f"the tokenizer has {len(words)} one-token words; mqar with --keys {keys} and "
                         f"--values {values} needs {3 * max(keys, values, NOISE_POOL)}")
    if not 1 <= noise <= NOISE_POOL:
        raise UsageError(f"--noise must be in [1, {NOISE_POOL}], got {noise}")
    return words[0::3][:keys], words[1::3][:values], words[2::3][:noise]


class Facts(NamedTuple):
    """Where a document's facts go: `pairs` key-value facts, `queries` of them asked again, each asked
    fact `distance` = (lo, hi) segments of `segment_len` tokens before its query."""
    pairs: int
    queries: int
    distance: tuple[int, int]
    segment_len: int


def _slots(length: int, segment_len: int) -> list[list[int]]:
    """Per segment, the first positions p of free two-token slots [p, p+2) inside it, excluding BOS
    (offset 0) and EOS (offset length-1)."""
    n_seg = -(-length // segment_len)
    out = []
    for s in range(n_seg):
        lo, hi = max(1, s * segment_len), min((s + 1) * segment_len, length - 1)
        out.append(list(range(lo, hi - 1, 2)))
    return out


def layout(length: int, facts: Facts, rng: random.Random) -> list[tuple[int, int | None]]:
    """Positions (fact, query) of each pair (query None for a pair that is never asked).
    Each queried pair's distance in segments is drawn uniformly from the feasible part of `distance`."""
    pairs, queries, distance, segment_len = facts
    slots = _slots(length, segment_len)
    n_seg = len(slots)
    lo, hi = distance[0], min(distance[1], n_seg - 1)
    if lo > hi:
        raise UsageError(f"--distance {distance[0]}:{distance[1]} needs documents of more than {distance[0]} "
                         f"segments of {segment_len} tokens (--length {length} has {n_seg})")
    placed: list[tuple[int, int | None]] = []
    for i in range(pairs):
        for _ in range(200):
            if i < queries:
                d = rng.randint(lo, hi)
                f = rng.randint(0, n_seg - 1 - d)
                g = f + d
                need = {f: 1, g: 1} if d else {f: 2}
                if any(len(slots[s]) < k for s, k in need.items()):
                    continue
                if d:
                    fact, query = rng.choice(slots[f]), rng.choice(slots[g])
                else:
                    fact, query = sorted(rng.sample(slots[f], 2))
                slots[f].remove(fact)
                slots[g].remove(query)
                placed.append((fact, query))
            else:
                free = [s for s in range(n_seg) if slots[s]]
                if not free:
                    continue
                s = rng.choice(free)
                fact = rng.choice(slots[s])
                slots[s].remove(fact)
                placed.append((fact, None))
            break
        else:
            raise UsageError(f"cannot place {pairs} pairs with --distance {distance[0]}:{distance[1]} in "
                             f"{length} tokens; use fewer --pairs or a longer --length")
    return placed


def mqar(tok: Tokenizer, length: int, rng: random.Random, pools: tuple[list[str], list[str], list[str]],
         facts: Facts):
    """One document: (token ids without BOS/EOS, text, spans [(start, end, fact)] in stored offsets)."""
    keys, values, noise = pools
    pairs, queries = facts.pairs, facts.queries
    if not 1 <= queries <= pairs <= len(keys):
        raise UsageError(f"need 1 <= --queries ({queries}) <= --pairs ({pairs}) <= --keys ({len(keys)})")
    words = [rng.choice(noise) for _ in range(length)]                 # stored offsets; 0 and length-1 unused
    spans = []
    chosen = rng.sample(keys, pairs)
    for key, (fact, query) in zip(chosen, layout(length, facts, rng)):
        value = rng.choice(values)
        words[fact], words[fact + 1] = key, value
        if query is not None:
            words[query], words[query + 1] = key, value
            spans.append((query + 1, query + 2, fact))
    body = words[1:length - 1]
    ids = [tok.encode(" " + w)[0] for w in body]
    spans.sort()
    return ids, "".join(" " + w for w in body), spans


def check_answers(text: str, keys: list[str]) -> list[str]:
    """The right value of every query of an mqar text, in order, recomputed from the text alone: a key
    word seen for the second time is a query, and its value is the word after its first occurrence."""
    first, out = {}, []
    words = text.split()
    for i, w in enumerate(words[:-1]):
        if w in keys:
            if w in first:
                out.append(words[first[w] + 1])
            else:
                first[w] = i
    return out
