"""Documents as blocks of text, encoded in order by worker processes (`elastic prepare`).

A document is read as a stream of text pieces (sources.document_texts) and regrouped into blocks
of about BLOCK_CHARS characters that end where the tokenizer allows a cut (Tokenizer.cuts): after
a newline, or, in a line longer than a block, before a space that follows a non-space. Encoding
the blocks one by one gives the tokens of the whole text, up to ties of sentencepiece's float32
lattice in texts longer than a block (docs/internals.md, Data; tests/data/test_data_blocks.py), so
memory holds a few blocks, never a document.

Blocks of every document go, in batches of about BLOCK_CHARS, to the workers (`Encoders`, started
before the sources are listed and hashed, so they load meanwhile); results come back in order with
at most 2 × workers batches in flight, so one large document uses every worker and reading never
runs ahead of encoding.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from functools import partial
from multiprocessing.pool import Pool
from typing import Callable, Iterable, Iterator

import numpy as np

from elastic_cli.allocator import keep_freed_memory
from elastic_cli.data.tokenizer import Tokenizer

BLOCK_CHARS = 1 << 20   # a block (and a batch of small documents' blocks) is about this many characters

_worker: tuple[Tokenizer, str] | None = None  # a worker process's (tokenizer, dtype), set by `_init` (spawned processes get a path)


def cut(text: str, newlines: bool, spaces: bool) -> int:
    """Where `text` can be cut (text[:i] encoded apart from the rest): after its last newline, else
    before its last space that follows a non-space; 0: nowhere."""
    if newlines:
        i = text.rfind("\n") + 1
        if i:
            return i
    if spaces:
        i = text.rfind(" ")
        j = len(text[:i + 1].rstrip(" ")) if i > 0 else 0  # where the run of spaces holding i starts
        if j:
            return j
    return 0


def blocks(pieces: Iterable[str], newlines: bool, spaces: bool, size: int = BLOCK_CHARS) -> Iterator[str]:
    """The text of `pieces` regrouped into blocks of about `size` characters ending at cuts (a block
    is longer only where no cut exists); at least one block, "" for an empty text."""
    buf: list[str] = []
    held = 0
    emitted = False
    for piece in pieces:
        buf.append(piece)
        held += len(piece)
        if held < size:
            continue
        text = "".join(buf)
        i = cut(text, newlines, spaces)
        if i:
            yield text[:i]
            emitted = True
            text = text[i:]
        buf, held = [text], len(text)
    if held or not emitted:
        yield "".join(buf)


def batches(blocks_of_docs: Iterable[tuple[int, Iterator[str]]], size: int = BLOCK_CHARS
            ) -> Iterator[list[tuple[int, bool, str]]]:
    """[(document number, last block of it?, block)] lists of about `size` characters, in order."""
    batch: list[tuple[int, bool, str]] = []
    held = 0
    for doc, texts in blocks_of_docs:
        nxt = next(texts)
        while nxt is not None:
            text, nxt = nxt, next(texts, None)
            batch.append((doc, nxt is None, text))
            held += len(text)
            if held >= size:
                yield batch
                batch, held = [], 0
    if batch:
        yield batch


def _init(tokenizer_path: str, dtype: str) -> None:
    """A worker process's start: load the tokenizer for `_encode` (a spawned process receives a path,
    not the loaded tokenizer), and keep freed memory for the next batch (`keep_freed_memory`): the
    worker's heap holds one batch at a time, so the high-water mark is one block's lattice, and
    sentencepiece's ~30 MB per block is not faulted in afresh every time (in `prepare`'s own process,
    which holds the writer's state, `return_large_buffers` stays: docs/internals.md, Data)."""
    global _worker
    keep_freed_memory()
    _worker = (Tokenizer.load(tokenizer_path), dtype)


def _encode(batch: list[tuple[int, bool, str]]) -> list[tuple[int, bool, np.ndarray, int]]:
    """`encode_batch` with the worker's tokenizer (runs in a worker process)."""
    return encode_batch(_worker, batch)


def encode_batch(worker: tuple[Tokenizer, str], batch: list[tuple[int, bool, str]]
                 ) -> list[tuple[int, bool, np.ndarray, int]]:
    """(document number, last?, token ids, UTF-8 bytes) of each block of a batch; worker: (tokenizer, dtype)."""
    tok, dtype = worker
    return [(doc, last, np.asarray(tok.encode(text), dtype=dtype), len(text) if text.isascii() else len(text.encode()))
            for doc, last, text in batch]


def ordered(fn: Callable, tasks: Iterable, pool: Pool | None, workers: int) -> Iterator:
    """fn(task) for each task, in order: in this process without a pool, else in the pool with at
    most 2 x workers tasks in flight (Pool.imap would read every task ahead)."""
    if pool is None:
        yield from map(fn, tasks)
        return
    flight: deque = deque()
    for task in tasks:
        flight.append(pool.apply_async(fn, (task,)))
        if len(flight) >= 2 * workers:
            yield flight.popleft().get()
    while flight:
        yield flight.popleft().get()


class Encoders:
    """The processes that encode blocks (`--workers`): with 1, this process; with more, spawned
    processes, started when this is made, so that they load while the caller lists and hashes its
    sources. A context manager: leaving it stops them."""

    def __init__(self, tok: Tokenizer, dtype: str, workers: int):
        self.workers = workers
        self.fn = partial(encode_batch, (tok, dtype)) if workers <= 1 else _encode  # in this process: tok as loaded
        self.pool = None if workers <= 1 else \
            mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(str(tok.path), dtype))

    def __enter__(self) -> Encoders:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def encode(self, blocks_of_docs: Iterable[tuple[int, Iterator[str]]]) -> Iterator[tuple[int, bool, np.ndarray, int]]:
        """(document number, last block?, token ids, UTF-8 bytes) for every block of every document, in order."""
        for results in ordered(self.fn, batches(blocks_of_docs), self.pool, self.workers):
            yield from results
