"""Test-only stand-in for elastic_cli.data.loader (branch `data` not merged yet), written from the
contract in docs/internals.md. Installed by tests/standin/sitecustomize.py only while the real
module is missing; delete this folder once `data` lands."""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from elastic_cli.errors import DataError


class Batch(NamedTuple):
    inputs: torch.Tensor  # (b, S, L) long
    targets: torch.Tensor  # (b, S, L) long, -1 = no target
    doc_start: torch.Tensor  # (b, S) bool


class PreparedData:
    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / "meta.json").is_file():
            raise DataError(f"{self.path}: not a prepared data directory (no meta.json)")
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.vocab_size = self.meta["vocab_size"]
        self._tokens = np.memmap(self.path / "tokens-00000.bin", dtype=self.meta["dtype"], mode="r")
        self._docs = np.load(self.path / "docs.npy")

    def documents(self, split):
        return [i for i, d in enumerate(self.meta["docs"]) if d["split"] == split]

    def tokens(self, doc_id):
        start, length = self._docs[doc_id]
        return np.asarray(self._tokens[start:start + length], dtype=np.int64)


class SegmentLoader:
    """Documents (in a seeded order) padded to whole segments, laid end to end; window w is
    segments [w*S, (w+1)*S); global batch k is windows k*G .. k*G+G-1; rank r takes its slice."""

    def __init__(self, data, split, global_batch, segments, segment_len, seed, rank=0, world=1):
        self.G, self.S, self.L, self.rank, self.world = global_batch, segments, segment_len, rank, world
        ids = data.documents(split)
        order = np.random.default_rng(seed).permutation(len(ids))
        inp, tgt, first = [], [], []
        for i in order:
            toks = data.tokens(ids[i])
            n = -(-(len(toks) - 1) // segment_len) * segment_len
            x = np.full(n, 0, np.int64)
            y = np.full(n, -1, np.int64)
            x[:len(toks) - 1], y[:len(toks) - 1] = toks[:-1], toks[1:]
            f = np.zeros(n // segment_len, bool)
            f[0] = True
            inp.append(x), tgt.append(y), first.append(f)
        self.x = np.concatenate(inp).reshape(-1, segment_len)  # (segments total, L)
        self.y = np.concatenate(tgt).reshape(-1, segment_len)
        self.f = np.concatenate(first)
        self.n_windows = len(self.f) // segments
        self.cursor = 0

    def next_batch(self):
        b = self.G // self.world
        rows = [(self.cursor * self.G + self.rank * b + j) % self.n_windows for j in range(b)]
        seg = np.array([[w * self.S + s for s in range(self.S)] for w in rows])  # (b, S)
        first = self.f[seg].copy()
        first[:, 0] = True
        self.cursor += 1
        return Batch(torch.from_numpy(self.x[seg]), torch.from_numpy(self.y[seg]), torch.from_numpy(first))

    def state_dict(self):
        return {"cursor": self.cursor}

    def load_state_dict(self, d):
        self.cursor = d["cursor"]


def write_dataset(out: Path, docs: list[list[int]], vocab_size: int, splits: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    flat = np.concatenate([np.asarray(d, np.uint16) for d in docs])
    flat.tofile(out / "tokens-00000.bin")
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    np.save(out / "docs.npy", np.stack([starts, [len(d) for d in docs]], 1).astype(np.int64))
    meta = {"format_version": 1, "tokenizer_sha256": "standin", "vocab_size": vocab_size, "dtype": "uint16",
            "n_docs": len(docs), "n_tokens": int(len(flat)), "sources": [],
            "docs": [{"name": f"d{i}", "tokens": len(d), "bytes": len(d), "split": s} for i, (d, s) in enumerate(zip(docs, splits))]}
    (out / "meta.json").write_text(json.dumps(meta))
    return out
