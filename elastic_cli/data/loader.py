"""Reading prepared directories (`PreparedData`) and cutting them into training windows (`SegmentLoader`).

Layout (docs/internals.md, Data): each document `[BOS] ... [EOS]` is padded to a whole number of
segments of L tokens; an epoch is the documents of a split one after another (train: a seeded
permutation per epoch; val/test: stored order); window g of an epoch is segments [g*S, (g+1)*S)
of that stream (the last one padded with empty segments). The cursor is the global window index,
so a batch is the same whatever the number of processes: rank r takes rows [r*b, (r+1)*b).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from elastic_cli.data.store import FORMAT_VERSION, SPLITS
from elastic_cli.data.tokenizer import PAD_ID
from elastic_cli.errors import DataError, UsageError


class PreparedData:
    """A prepared directory: meta.json, docs.npy and memmapped token shards (opened lazily)."""

    def __init__(self, path: str | Path, part: bool = False):
        """`part`: also open one part of a sharded prepare (`--shard I/N`), as data/merge.py does."""
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.path} is not a prepared directory (no meta.json); run `elastic prepare`")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{meta_path} is not valid JSON") from None
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{meta_path}: format_version {self.meta.get('format_version')} (this elastic reads {FORMAT_VERSION}); prepare it again")
        if "part" in self.meta and not part:
            p = self.meta["part"]
            raise DataError(f"{self.path} is part {p['index']}/{p['count']} of a sharded prepare: join the parts "
                            f"with `elastic prepare --merge PART_DIRS... --out DIR`")
        self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self.index = np.load(self.path / "docs.npy")                          # (n_docs, 2): start, length
        if self.index.shape != (self.meta["n_docs"], 2):
            raise DataError(f"{self.path}/docs.npy has shape {self.index.shape}, meta.json says {self.meta['n_docs']} docs")
        self._shards = self.meta["shards"]
        self._starts = np.asarray([s["start"] for s in self._shards], dtype=np.int64)
        for s in self._shards:
            f = self.path / s["name"]
            if not f.is_file() or f.stat().st_size != s["tokens"] * self.dtype.itemsize:
                raise DataError(f"{f} is missing or truncated; prepare {self.path} again with --force")
        self._split = {sp: [i for i, d in enumerate(self.meta["docs"]) if d["split"] == sp] for sp in SPLITS}

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def task(self) -> dict | None:
        return self.meta.get("task")

    def __len__(self) -> int:
        return int(self.meta["n_docs"])

    @lru_cache(maxsize=None)
    def _shard(self, k: int) -> np.memmap:
        return np.memmap(self.path / self._shards[k]["name"], dtype=self.dtype, mode="r")

    def documents(self, split: str) -> list[int]:
        if split not in SPLITS:
            raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return list(self._split[split])

    def tokens(self, doc_id: int) -> np.ndarray:
        """The stored document `[BOS] ... [EOS]` (a read-only memmap view)."""
        start, length = (int(x) for x in self.index[doc_id])
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        off = start - int(self._starts[k])
        return self._shard(k)[off:off + length]

    def name(self, doc_id: int) -> str:
        return self.meta["docs"][doc_id]["name"]

    def doc_bytes(self, doc_id: int) -> int:
        return int(self.meta["docs"][doc_id]["bytes"])

    def answers(self, doc_id: int) -> list[tuple[int, int, int | None]]:
        """Answer spans of `tokens(doc_id)` (task data; [] otherwise): (start, end, source), the tokens
        [start, end) answer a question about the fact written at offset `source` (None: not recorded)."""
        doc = self.meta["docs"][doc_id]
        if "answer" in doc:  # format of the first task generator: one span, no source
            return [(int(doc["answer"][0]), int(doc["answer"][1]), None)]
        return [(int(a), int(b), None if f is None else int(f)) for a, b, f in doc.get("answers", ())]


class Batch(NamedTuple):
    inputs: torch.Tensor      # (b, S, L) long
    targets: torch.Tensor     # (b, S, L) long, -1 where there is no next token
    doc_start: torch.Tensor   # (b, S) bool: memory is empty before this segment


class Windows(NamedTuple):
    """What a step reads: `global_batch` windows (over all processes) of `segments` segments of
    `segment_len` tokens each."""
    global_batch: int
    segments: int
    segment_len: int


class SegmentLoader:
    """Batches of `Windows`; this process takes rows [rank*b, (rank+1)*b) of each. `answers_only`:
    targets outside the answer spans of task data are -1 (no loss). `set_segments` changes the
    window length between batches (a curriculum)."""

    def __init__(self, data: PreparedData, split: str, windows: Windows, seed: int, rank: int = 0, world: int = 1,
                 answers_only: bool = False):
        global_batch, segments, segment_len = windows
        if world < 1 or not 0 <= rank < world or global_batch % world:
            raise UsageError(f"global batch {global_batch} must split evenly over {world} processes (rank {rank})")
        if segments < 1 or segment_len < 1:
            raise UsageError(f"segments and segment_len must be positive, got {segments} and {segment_len}")
        self.data, self.split, self.seed, self.answers_only = data, split, seed, answers_only
        self.global_batch, self.S, self.L, self.rank, self.world = global_batch, segments, segment_len, rank, world
        self.docs = np.asarray(data.documents(split), dtype=np.int64)
        if len(self.docs) == 0:
            raise DataError(f"split {split!r} of {data.path} has no documents")
        if answers_only and not any(data.answers(int(d)) for d in self.docs):
            raise DataError(f"train.loss_on=answers, but split {split!r} of {data.path} has no answer spans "
                            f"(it is not task data); use train.loss_on=all")
        self.nseg = -(-data.index[self.docs, 1] // segment_len)               # (n,) segments per document
        self.total = int(self.nseg.sum())
        self.windows_per_epoch = -(-self.total // segments)
        self.window = 0
        self._order_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def set_segments(self, segments: int) -> None:
        """Windows of `segments` from now on, starting at the first new window boundary at or after
        the current position in this epoch's stream of segments."""
        if segments == self.S:
            return
        epoch, w = divmod(self.window, self.windows_per_epoch)
        offset = w * self.S                                                  # segments of the epoch consumed
        self.S = segments
        self.windows_per_epoch = -(-self.total // segments)
        self.window = epoch * self.windows_per_epoch + -(-offset // segments)

    @property
    def epoch(self) -> int:
        return self.window // self.windows_per_epoch

    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Document order of an epoch and the first segment of each document in it."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            n = len(self.docs)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.split == "train" else np.arange(n)
            first = np.concatenate([[0], np.cumsum(self.nseg[perm])])        # (n+1,)
            self._order_cache = (epoch, perm, first)
        return self._order_cache[1], self._order_cache[2]

    def window_arrays(self, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global window g: inputs (S, L), targets (S, L), doc_start (S,)."""
        S, L = self.S, self.L
        inp = np.full((S, L), PAD_ID, dtype=np.int64)
        tgt = np.full((S, L), -1, dtype=np.int64)
        start = np.ones(S, dtype=bool)
        epoch, w = divmod(g, self.windows_per_epoch)
        perm, first = self._order(epoch)
        for s in range(S):
            seg = w * S + s
            if seg >= self.total:
                break                                                        # tail: empty segments
            k = int(np.searchsorted(first, seg, side="right")) - 1
            toks = self.data.tokens(int(self.docs[perm[k]]))
            off = (seg - int(first[k])) * L
            chunk = toks[off:off + L]
            nxt = toks[off + 1:off + L + 1]
            inp[s, :len(chunk)] = chunk
            tgt[s, :len(nxt)] = nxt
            if self.answers_only:
                keep = np.zeros(L, dtype=bool)
                for a, b, _ in self.data.answers(int(self.docs[perm[k]])):  # target j is token j+1 of the chunk
                    keep[max(a - 1 - off, 0):max(b - 1 - off, 0)] = True
                tgt[s, ~keep] = -1
            start[s] = s == 0 or off == 0
        return inp, tgt, start

    def next_batch(self) -> Batch:
        b = self.global_batch // self.world
        first = self.window + self.rank * b
        rows = [self.window_arrays(first + i) for i in range(b)]
        self.window += self.global_batch
        return Batch(torch.from_numpy(np.stack([r[0] for r in rows])),      # (b, S, L)
                     torch.from_numpy(np.stack([r[1] for r in rows])),      # (b, S, L)
                     torch.from_numpy(np.stack([r[2] for r in rows])))      # (b, S)

    def state_dict(self) -> dict:
        return {"window": self.window, "split": self.split, "seed": self.seed, "segments": self.S,
                "segment_len": self.L, "n_docs": len(self.docs)}

    def load_state_dict(self, d: dict) -> None:
        """Restore a cursor; the window length is taken from `d` (a curriculum may have changed it)."""
        if isinstance(d.get("segments"), int) and d["segments"] > 0:
            self.S = d["segments"]
            self.windows_per_epoch = -(-self.total // self.S)
        mine = self.state_dict()
        for key in ("split", "seed", "segments", "segment_len", "n_docs"):
            if d.get(key) != mine[key]:
                raise DataError(f"data cursor was saved with {key}={d.get(key)!r}, this loader has {mine[key]!r}")
        self.window = int(d["window"])
