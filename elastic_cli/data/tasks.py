"""Synthetic long-range tasks written as prepared directories, with the answer span of each document.

- passkey: a 5-digit key hidden at a random depth in repeated filler, asked for at the end
  (Mohtashami & Jaggi 2023, Landmark Attention, "passkey retrieval").
- recall: key -> value statements spread over the document, one key queried at the end
  (associative recall as in RMT/ARMT, written as text).
- mqar: multi-query associative recall with many answer spans per document and a chosen range of
  distances in segments between each fact and its query (`data/mqar.py`).
- babilong, niah-multikey, niah-multivalue (and passkey with a haystack): the same in real text
  from `--haystack` (`data/babilong.py`, `data/niah.py`, `data/haystack.py`), at chosen depths.
- sorting: the ∞-former task (Martins et al. 2022, §4.1): symbols drawn with frequencies that drift
  linearly between two random distributions (integer weights 1-9), then a separator and the 20
  symbols by descending frequency (ties: alphabetical).
Every document is built from separately encoded pieces, so its stored length is exactly
`--length` tokens (BOS and EOS included; newline tokens make up the rest) and the answer span is exact.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import NamedTuple
from types import SimpleNamespace

import numpy as np

from elastic_cli import console
from elastic_cli.data import babi, babi_solver, babilong, haystack, mqar, niah, sources, store
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import UsageError

TASKS = ("passkey", "recall", "sorting", "mqar", "babilong", "niah-multikey", "niah-multivalue")
HAYSTACK_TASKS = ("babilong", "niah-multikey", "niah-multivalue")      # passkey takes one too
HAYSTACK_DEFAULTS = {"depth": "0:1", "qa": 1, "needles": 4}
FILLER = (" The grass is green.", " The sky is blue.", " The sun is yellow.", " Here we go.", " There and back again.")
SYMBOLS = tuple("ABCDEFGHIJKLMNOPQRST")
SORT_SEP = "\nSorted by frequency:"
GENERATOR_VERSION = 2  # 2: answers carry the offset of their fact; mqar (and the haystack tasks, new in it)


class _Doc:
    """Text and token ids built piece by piece. `answers` are (start, end, source) spans in the stored
    document (BOS at 0); `source` is where the fact the answer needs was written (the last piece
    added with `source=True`)."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.ids, self.parts, self.answers, self.source = tok, [], [], [], None

    def add(self, text: str, ids: list[int] | None = None, answer: bool = False, source: bool = False) -> None:
        ids = self.tok.encode(text) if ids is None else ids
        if source:
            self.source = 1 + len(self.ids)
        if answer:
            self.answers.append((1 + len(self.ids), 1 + len(self.ids) + len(ids), self.source))
        self.ids += ids
        self.parts.append(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _fill(tok: Tokenizer, budget: int, name: str) -> list[str]:
    """Filler pieces worth exactly `budget` tokens: whole sentences, then newlines."""
    if budget < 0:
        raise UsageError(f"--length is too short for the {name} task (needs {-budget} more tokens)")
    enc = [len(tok.encode(s)) for s in FILLER]
    out, i = [], 0
    while budget >= enc[i % len(FILLER)]:
        out.append(FILLER[i % len(FILLER)])
        budget -= enc[i % len(FILLER)]
        i += 1
    return out + ["\n"] * budget


def passkey(tok: Tokenizer, length: int, rng: random.Random) -> _Doc:
    key = str(rng.randrange(10000, 100000))
    intro = "There is a pass key hidden inside a lot of irrelevant text. Find it and remember it.\n"
    needle = f" The pass key is {key}. Remember it. {key} is the pass key."
    question = "\nWhat is the pass key? The pass key is "
    fixed = sum(len(tok.encode(s)) for s in (intro, needle, question, key))
    filler = _fill(tok, length - 2 - fixed, "passkey")
    depth = rng.randint(0, len(filler))
    doc = _Doc(tok)
    for piece in [intro, *filler[:depth], needle, *filler[depth:], question]:
        doc.add(piece, source=piece is needle)
    doc.add(key, answer=True)
    return doc


def recall(tok: Tokenizer, length: int, rng: random.Random) -> _Doc:
    n = max(2, min(50, length // 160))
    keys = rng.sample([a + b + c for a in SYMBOLS for b in SYMBOLS for c in SYMBOLS], n)
    values = [str(rng.randrange(1000, 10000)) for _ in keys]
    facts = [f" The value of {k} is {v}." for k, v in zip(keys, values)]
    q = rng.randrange(n)
    question = f"\nWhat is the value of {keys[q]}? The value of {keys[q]} is "
    fixed = sum(len(tok.encode(s)) for s in (*facts, question, values[q]))
    filler = _fill(tok, length - 2 - fixed, "recall")
    doc = _Doc(tok)
    cut = [round(i * len(filler) / n) for i in range(n + 1)]                # fact i after filler[:cut[i]]
    for i, fact in enumerate(facts):
        doc.add(fact, source=i == q)
        for piece in filler[cut[i]:cut[i + 1]]:
            doc.add(piece)
    doc.add(question)
    doc.add(values[q], answer=True)
    return doc


def sorting(tok: Tokenizer, length: int, rng: random.Random) -> _Doc:
    nrng = np.random.default_rng(rng.randrange(2**32))
    sym_ids = [tok.encode(" " + s) for s in SYMBOLS]
    answer_len = sum(len(i) for i in sym_ids)
    budget = length - 2 - len(tok.encode(SORT_SEP)) - answer_len
    lens = np.asarray([len(i) for i in sym_ids])                            # (20,) tokens per symbol
    p0, p1 = (w / w.sum() for w in nrng.integers(1, 10, size=(2, len(SYMBOLS))).astype(float))
    n = int(budget / float(lens @ (p0 + p1) / 2))                           # expected symbols that fit
    if n < 2:
        raise UsageError(f"--length is too short for the sorting task (needs {2 * lens.max() - budget} more tokens)")
    a = np.linspace(0.0, 1.0, n)[:, None]                                   # (n, 1)
    cdf = np.cumsum((1 - a) * p0 + a * p1, axis=1)                          # (n, 20)
    seq = np.minimum((nrng.random(n)[:, None] > cdf).sum(axis=1), len(SYMBOLS) - 1)  # (n,)
    seq = seq[np.cumsum(lens[seq]) <= budget]                               # drop what overflows the budget
    doc = _Doc(tok)
    for s in seq:
        doc.add(" " + SYMBOLS[s], sym_ids[s])
    doc.add("\n" * (budget - int(lens[seq].sum())))
    doc.add(SORT_SEP)
    doc.add("".join(" " + s for s in sort_answer(doc.text)), answer=True)
    return doc


def sort_answer(text: str) -> list[str]:
    """The 20 symbols by descending count in `text` before the separator (ties alphabetical)."""
    counts = {s: 0 for s in SYMBOLS}
    for s in text.split(SORT_SEP)[0].split():
        counts[s] += 1
    return sorted(SYMBOLS, key=lambda s: (-counts[s], s))


def check_answer(task: str, text: str, answer: str) -> bool:
    """Whether `answer` is the right answer to the task document `text` (text before the answer)."""
    if task == "passkey":
        keys = re.findall(r"The pass key is (\d{5})\. Remember it", text)
        return len(keys) == 1 and answer == keys[0]
    if task == "recall":
        facts = dict(re.findall(r"The value of ([A-Z]{3}) is (\d+)\.", text))
        asked = re.search(r"What is the value of ([A-Z]{3})\?", text)
        return asked is not None and facts.get(asked.group(1)) == answer
    if task == "babilong":
        return babi_solver.solve(text) == answer.strip()
    if task in ("niah-multikey", "niah-multivalue"):
        return niah.check(text, answer)
    return answer.split() == sort_answer(text)


GENERATORS = {"passkey": passkey, "recall": recall, "sorting": sorting}
MQAR_DEFAULTS = {"pairs": 8, "queries": None, "distance": (0, 1 << 30), "segment_len": 64, "keys": 64, "values": 64, "noise": 256}


def parse_depth(spec: str) -> list[tuple[float, float]]:
    """--depth: "A:B" (each fact's depth drawn in [A, B]) or "a,b,..." (a grid: documents take the
    depths in turn, each a point) -> [(lo, hi), ...], fractions of the haystack in [0, 1]."""
    try:
        if ":" in spec:
            lo, hi = (float(x) for x in spec.split(":"))
            out = [(lo, hi)]
        else:
            out = [(float(x), float(x)) for x in spec.split(",")]
    except ValueError:
        raise UsageError(f"--depth takes A:B or a,b,... as fractions in [0, 1] (e.g. 0:1 or 0,0.5,1), got {spec!r}") from None
    if not all(0 <= lo <= hi <= 1 for lo, hi in out):
        raise UsageError(f"--depth fractions must satisfy 0 <= A <= B <= 1, got {spec!r}")
    return out


def _generator(task: str, tok: Tokenizer, options: dict):
    """(make, haystack): make(rng, length, depth) -> a _Doc-like object (ids, text, answers[, extra]) for
    one document; the loaded Haystack of a haystack task (else None)."""
    hay_opts = {k: options[k] for k in ("haystack", "depth", "qa", "needles") if k in options}
    other = {k: v for k, v in options.items() if k not in hay_opts}
    if task in HAYSTACK_TASKS or (task == "passkey" and "haystack" in hay_opts):
        if other:
            raise UsageError(f"{', '.join('--' + k.replace('_', '-') for k in other)} only apply to --task mqar")
        o = {**HAYSTACK_DEFAULTS, **hay_opts}
        if "haystack" not in o:
            raise UsageError(f"--task {task} needs --haystack (a folder of books, text files or a prepared directory)")
        if o["qa"] not in babi.QA or o["needles"] < 1:
            raise UsageError(f"--qa must be one of 1-5 and --needles >= 1, got {o['qa']} and {o['needles']}")
        own = {"babilong": "qa", "niah-multikey": "needles", "niah-multivalue": "needles"}.get(task)
        for k in ("qa", "needles"):
            if k in hay_opts and k != own:
                raise UsageError(f"--{k} only applies to --task {'babilong' if k == 'qa' else 'niah-multikey, niah-multivalue'}")
        hay = haystack.load(list(o["haystack"]), tok)
        if task == "babilong":
            return lambda rng, length, depth: babilong.document(hay, length, rng, o["qa"], depth), hay
        if task == "passkey":
            return lambda rng, length, depth: niah.passkey(hay, length, rng, depth), hay
        fn = niah.multikey if task == "niah-multikey" else niah.multivalue
        return lambda rng, length, depth: fn(hay, length, rng, depth, o["needles"]), hay
    if hay_opts:
        raise UsageError(f"{', '.join('--' + k for k in hay_opts)} only apply to --task "
                         f"{', '.join(HAYSTACK_TASKS)} and passkey")
    if task != "mqar":
        if options:
            raise UsageError(f"{', '.join('--' + k.replace('_', '-') for k in options)} only apply to --task mqar")
        return lambda rng, length, depth: GENERATORS[task](tok, length, rng), None
    o = {**MQAR_DEFAULTS, **options}
    o["queries"] = o["pairs"] if o["queries"] is None else o["queries"]
    if o["segment_len"] < 4 or o["distance"][0] < 0 or o["distance"][0] > o["distance"][1]:
        raise UsageError(f"mqar needs --segment-len >= 4 and --distance A:B with 0 <= A <= B, got "
                         f"{o['segment_len']} and {o['distance'][0]}:{o['distance'][1]}")
    pools = mqar.word_pools(tok, o["keys"], o["values"], o["noise"])

    facts = mqar.Facts(o["pairs"], o["queries"], tuple(o["distance"]), o["segment_len"])

    def make(rng, length, depth):
        ids, text, spans = mqar.mqar(tok, length, rng, pools, facts)
        return SimpleNamespace(ids=ids, text=text, answers=spans)
    return make, None


class TaskOptions(NamedTuple):
    """How `prepare_task` draws and splits its documents (the flags of `elastic prepare --task`)."""

    seed: int = 0  # the generator's seed
    val_frac: float = 0.05
    test_frac: float = 0.05
    dtype: str = "auto"  # auto | uint16 | uint32
    force: bool = False  # rebuild even if `out` holds other input
    options: dict | None = None  # the task's own settings (below)


def prepare_task(task: str, length: int | list[int], count: int, tokenizer: str, out: str,
                 opts: TaskOptions = TaskOptions()) -> None:
    """Write `count` documents of `task` to `out`. `length`: tokens per document, or a list that the
    documents take in turn. `opts.options` are the task's own settings (mqar: pairs, queries, distance
    (lo, hi) in segments, segment_len, keys, values, noise; haystack tasks: haystack (sources), depth
    (see `parse_depth`; documents take the grid's points in turn after the lengths), qa, needles)."""
    if task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    lengths = [length] if isinstance(length, int) else list(length)
    if count < 1 or not lengths or min(lengths) < 8:
        raise UsageError(f"--count must be >= 1 and --length >= 8, got {count} and {length}")
    seed, val_frac, test_frac, dtype, force, options = opts
    options = {k: v for k, v in (options or {}).items() if v is not None and v != ()}
    depths = parse_depth(options.get("depth", HAYSTACK_DEFAULTS["depth"]))
    tok = Tokenizer.load(tokenizer)
    dt = store.choose_dtype(tok.vocab_size, dtype)
    out_p = Path(out)
    if options.get("haystack"):
        sources.check_out_outside(out_p, list(options["haystack"]), None)
    make, hay = _generator(task, tok, options)
    shown = {**MQAR_DEFAULTS, **options} if task == "mqar" else (
        {**HAYSTACK_DEFAULTS, **options, "haystack": list(options["haystack"])} if hay is not None else None)
    info = {"name": task, "length": length if isinstance(length, int) else lengths, "count": count, "seed": seed,
            "generator_version": GENERATOR_VERSION, **({"options": shown} if shown else {})}
    settings = {"task": info, "val_frac": val_frac, "test_frac": test_frac, "dtype": dt, "tokenizer_sha256": tok.sha256,
                **({"haystack_files": [[f["path"], f.get("size"), f.get("sha256", f.get("fingerprint"))]
                                       for f in hay.files]} if hay is not None else {})}
    fp = store.fingerprint(settings)
    if store.up_to_date(out_p, fp, force):
        console.info(f"{out_p} is up to date (same task settings): nothing to do")
        return
    n_bytes = 0
    with store.Writer(out_p, dt) as w, console.progress(count, f"prepare {task}", "doc") as bar:
        for i in range(count):
            n = len(lengths)
            doc = make(random.Random(f"{task}-{seed}-{i}"), lengths[i % n], depths[(i // n) % len(depths)])
            name = f"{task}-{i:06d}"
            nb = len(doc.text.encode("utf-8"))
            w.add(name, doc.ids, nb, store.split_of(name, val_frac, test_frac), doc.answers)
            w.docs[-1].update(getattr(doc, "extra", None) or {})
            n_bytes += nb
            bar.update(1)
        w.finish({"tokenizer_sha256": tok.sha256, "tokenizer": str(tok.path), "vocab_size": tok.vocab_size,
                  "fingerprint": fp, "settings": settings, "task": info, "n_bytes": n_bytes,
                  "sources": hay.files if hay is not None else []})
    console.info(f"prepared {out_p}: {count} {task} documents of {', '.join(map(str, lengths))} tokens")
