"""Real text as the haystack of long-context tasks: the user's own books, cut into sentences.

`load(sources, tok)` reads `--haystack` (text files, `.gz`, folders of books, or a prepared
directory, decoded with the tokenizer it was made with) into books of sentences. A document is one
passage of consecutive sentences from a random place in a random book (the next book follows the
last), with the task's pieces inserted *between* sentences at the chosen depths (`place`), so
sentence boundaries are respected and every piece is encoded on its own (its span is exact).

Sentences that could be read as a task's own facts or questions (a bAbI actor's name, "north of",
"pass key", "magic number", or any sentence the bAbI solver would parse as a fact, e.g. "Eve took
the apple there.") are left out, so an answer can be recomputed from the document alone.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from elastic_cli.data import babi_solver
from elastic_cli.data import sources as src
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import DataError, UsageError
from elastic_cli.data.loader import PreparedData

SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+")
MIN_WORDS, MAX_WORDS = 3, 60
# Words and phrases the tasks write; a haystack sentence holding one is left out (see module docstring).
RESERVED = re.compile(r"\b(Mary|John|Daniel|Sandra|Fred|Bill|Jeff|Julie|Question|Answer)\b|"
                      r"\b(north|south|east|west) of\b|pass key|magic number", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """The usable sentences of a text: whitespace collapsed, split after . ! ? (and closing quotes),
    3-60 words, with a letter, without the reserved words and without U+2581 or control characters."""
    out = []
    for s in SENTENCE_END.split(" ".join(text.split())):
        s = s.strip()
        n = len(s.split())
        if (MIN_WORDS <= n <= MAX_WORDS and re.search(r"[A-Za-z]", s) and not RESERVED.search(s)
                and "\u2581" not in s and s.isprintable() and not babi_solver.facts(s)):
            out.append(s)
    return out


@dataclass
class Haystack:
    books: list[list[str]]                              # sentences per book, in order
    files: list[dict]                                   # what was read (path, size, sha256), for the fingerprint
    tok: Tokenizer
    _ids: dict = field(default_factory=dict)

    def ids(self, book: int, i: int) -> list[int]:
        """Token ids of " sentence" (each sentence is encoded once, on first use)."""
        key = (book, i)
        if key not in self._ids:
            self._ids[key] = self.tok.encode(" " + self.books[book][i])
        return self._ids[key]

    def passage(self, rng: random.Random, budget: int) -> tuple[list[str], list[list[int]]]:
        """Consecutive sentences worth at most `budget` tokens, from a random sentence of a book
        drawn in proportion to its sentences (then the following books, around)."""
        sizes = [len(b) for b in self.books]
        book = rng.choices(range(len(self.books)), weights=sizes)[0]
        i, texts, ids, used, seen, total = rng.randrange(sizes[book]), [], [], 0, 0, sum(sizes)
        while seen < total:
            piece = self.ids(book, i)
            if used + len(piece) > budget:
                break
            texts.append(" " + self.books[book][i])
            ids.append(piece)
            used += len(piece)
            seen += 1
            i += 1
            if i == sizes[book]:
                book, i = (book + 1) % len(self.books), 0
        else:
            raise DataError(f"the haystack has {total} usable sentences, too few for documents of this "
                            f"--length; give more text")
        return texts, ids


def load(sources: list[str], tok: Tokenizer) -> Haystack:
    """Books of sentences from `--haystack` SOURCES; DataError (one line) when missing, empty, binary or
    without usable sentences."""
    if not sources:
        raise DataError("--haystack needs at least one file or folder of text")
    books, files = [], []
    plain = []
    for s in sources:
        if (Path(s) / "meta.json").is_file():
            b, f = _prepared(Path(s))
            books += b
            files += f
        else:
            plain.append(s)
    if plain:
        col = src.collect(plain)
        files += col.files
        books += [sentences(src.read_document(d)) for d in col.docs]
    books = [b for b in books if b]
    if not books:
        raise DataError(f"no usable sentences in --haystack {' '.join(sources)} (it needs prose: sentences of "
                        f"{MIN_WORDS}-{MAX_WORDS} words ending in . ! or ?)")
    return Haystack(books, files, tok)


def _prepared(path: Path) -> tuple[list[list[str]], list[dict]]:
    """A prepared directory's documents as books, decoded with the tokenizer it names."""

    data = PreparedData(path)
    tok_path = data.meta.get("tokenizer")
    if not tok_path or not Path(tok_path).is_file():
        raise DataError(f"--haystack {path}: its tokenizer {tok_path!r} is not at hand to decode it")
    tok = Tokenizer.load(tok_path)
    if tok.sha256 != data.meta.get("tokenizer_sha256"):
        raise DataError(f"--haystack {path}: {tok_path} is not the tokenizer it was prepared with")
    books = [sentences(tok.decode(data.tokens(i)[1:-1].tolist())) for i in range(len(data))]
    return books, [{"path": str(path), "fingerprint": json.loads((path / "meta.json").read_text())["fingerprint"]}]


def place(passage: list[list[int]], depths: list[float]) -> list[int]:
    """For each depth in [0, 1] (sorted), the sentence boundary k (0..len(passage)) whose share of the
    passage's tokens before it is nearest to that depth (ties: the earlier boundary)."""
    before = [0]
    for p in passage:
        before.append(before[-1] + len(p))
    total = max(before[-1], 1)
    return [min(range(len(before)), key=lambda k: (abs(before[k] / total - d), k)) for d in depths]


@dataclass
class Built:
    """One document: token ids (no BOS/EOS), its text, answer spans (start, end, source) in stored
    offsets (BOS at 0), and what meta.json records beside them (`depth`, `supporting`)."""
    ids: list[int]
    text: str
    answers: list[tuple[int, int, int | None]]
    extra: dict


class Pieces(NamedTuple):
    """A task's own text around the haystack passage: `intro`; `inserts` (depth in [0, 1], text, needed
    by the answer) placed between the passage's sentences; `question`; then `tail`: pieces (text, index
    of the insert it answers about, or None for a separator that is not part of an answer).
    `tail_tokens`: the tail's room, at least its tokens; newlines after the tail fill the rest, so
    where the question sits does not tell how many tokens the answer has (answers of other lengths)."""
    intro: str
    inserts: list[tuple[float, str, bool]]
    question: str
    tail: list[tuple[str, int | None]]
    tail_tokens: int | None = None


def build(hay: Haystack, length: int, rng: random.Random, pieces: Pieces) -> Built:
    """The pieces around a passage of the haystack (newlines after its sentences fill up to `length`
    tokens). An answer span's source is its insert's offset; `depth` is the passage share before the
    first needed insert, `supporting` the offsets of every needed insert."""
    intro, inserts, question, tail, tail_tokens = pieces
    tok = hay.tok
    enc = {t: tok.encode(t) for t in [intro, question, *(i[1] for i in inserts), *(t[0] for t in tail)]}
    tail_len = sum(len(enc[t]) for t, _ in tail)
    after = (tail_len if tail_tokens is None else tail_tokens) - tail_len
    if after < 0:
        raise RuntimeError(f"tail_tokens {tail_tokens} < the tail's {tail_len} tokens")
    fixed = sum(len(enc[t]) for t in [intro, question, *(i[1] for i in inserts)]) + tail_len + after
    budget = length - 2 - fixed
    if budget < 0:
        raise UsageError(f"--length {length} is too short for this task (it needs {-budget} more tokens)")
    texts, pids = hay.passage(rng, budget)
    pad = budget - sum(map(len, pids))              # the tokens no whole sentence fits: newlines after
    nl = tok.encode("\n")                           # the sentences, spread evenly (paragraph breaks)
    if not texts:                                   # not even one sentence fits: newlines only
        texts, pids = [""], [[]]
    for j in range(len(texts)):
        extra = pad // len(texts) + (j < pad % len(texts))
        texts[j], pids[j] = texts[j] + "\n" * extra, pids[j] + nl * extra
    order = sorted(range(len(inserts)), key=lambda n: inserts[n][0])        # stable: equal depths keep order
    at = dict(zip(order, place(pids, [inserts[n][0] for n in order])))    # insert -> sentence boundary
    before = [0]
    for p in pids:
        before.append(before[-1] + len(p))
    ids, parts, where = list(enc[intro]), [intro], {}
    for j in range(len(texts) + 1):
        for n in order:
            if at[n] == j:
                where[n] = 1 + len(ids)                                     # stored offset (BOS at 0)
                ids += enc[inserts[n][1]]
                parts.append(inserts[n][1])
        if j < len(texts):
            ids += pids[j]
            parts.append(texts[j])
    if len(ids) != length - 2 - len(enc[question]) - tail_len - after:
        raise RuntimeError(f"the tokenizer does not encode a newline as one token; cannot fill {length} tokens exactly")
    ids += enc[question]
    parts.append(question)
    answers = []
    for t, src_i in tail:
        if src_i is not None:
            answers.append((1 + len(ids), 1 + len(ids) + len(enc[t]), where[src_i]))
        ids += enc[t]
        parts.append(t)
    ids += nl * after
    parts.append("\n" * after)
    needed = [n for n, i in enumerate(inserts) if i[2]]
    first = min(needed, key=lambda n: where[n]) if needed else None
    depth = None if first is None else round(before[at[first]] / max(before[-1], 1), 4)
    return Built(ids, "".join(parts), answers, {"depth": depth, "supporting": sorted(where[n] for n in needed)})
