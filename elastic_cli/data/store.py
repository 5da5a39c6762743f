"""Writing a prepared directory atomically (docs/internals.md, Data): shards, docs.npy, meta.json.

Everything is built in `DIR.tmp-<pid>`; `meta.json` is written last and the folder is then renamed
to `DIR`, so a killed run never leaves a `DIR` that looks complete. A finished `DIR` records a
fingerprint of its inputs and settings: the same fingerprint is "nothing to do", another one needs
`force`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from elastic_cli import __version__
from elastic_cli.atomic import replace_tree
from elastic_cli.data import holdout
from elastic_cli.data.tokenizer import BOS_ID, EOS_ID
from elastic_cli.errors import DataError, UsageError

FORMAT_VERSION = 1
SHARD_TOKENS = 1 << 29          # a new shard starts after this many tokens (1 GiB of uint16)
COPY_TOKENS = 1 << 22           # stored tokens are copied and hashed this many at a time
SPLITS = ("train", "val", "test")


def choose_dtype(vocab_size: int, dtype: str) -> str:
    if dtype == "auto":
        return "uint16" if vocab_size <= 1 << 16 else "uint32"
    if dtype == "uint16" and vocab_size > 1 << 16:
        raise UsageError(f"--dtype uint16 cannot hold a vocabulary of {vocab_size} (max 65536); use uint32 or auto")
    if dtype not in ("uint16", "uint32"):
        raise UsageError(f"--dtype must be auto, uint16 or uint32, got {dtype!r}")
    return dtype


def split_of(name: str, val_frac: float, test_frac: float) -> str:
    """Deterministic split of a document from a hash of its name (see holdout.py for empty splits)."""
    u = holdout.draw(name)
    return "val" if u < val_frac else "test" if u < val_frac + test_frac else "train"


def fingerprint(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> None:
    """Remove `DIR.tmp-<pid>` / `DIR.old-<pid>` left by runs that were killed."""
    for p in out.parent.glob(f"{out.name}.*-*"):
        kind, _, pid = p.name[len(out.name) + 1:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def up_to_date(out: Path, fp: str, force: bool) -> bool:
    """True when `out` was prepared from the same inputs; DataError when it differs and not `force`."""
    if out.parent.exists():
        clean_stale(out)
    if not out.exists():
        return False
    meta = out / "meta.json"
    if not meta.is_file():
        if out.is_dir() and not any(out.iterdir()):
            return False
        raise DataError(f"{out} exists and is not a prepared directory (no meta.json); remove it or choose another --out")
    try:
        old = json.loads(meta.read_text()).get("fingerprint")
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = None
    if old == fp and not force:
        return True
    if not force:
        raise DataError(f"{out} was prepared from other input or settings; use --force to rebuild it")
    return False


class StoredTokens:
    """Tokens [start, start + n) of a token file, read from the file only when used: never mapped,
    so reading a large document does not keep it resident (a memmap's pages count in the RSS)."""

    def __init__(self, path: Path, dtype: np.dtype, start: int, n: int):
        self.path, self.dtype, self.start, self.n = Path(path), dtype, start, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(self.n)
            assert step == 1, "StoredTokens slices are contiguous"
            return StoredTokens(self.path, self.dtype, self.start + a, max(b - a, 0))
        i = i + self.n if i < 0 else i
        if not 0 <= i < self.n:
            raise IndexError(i)
        return int(self[i:i + 1].array()[0])

    def array(self) -> np.ndarray:
        with open(self.path, "rb") as f:
            return np.fromfile(f, dtype=self.dtype, count=self.n, offset=self.start * self.dtype.itemsize)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.array() if dtype is None else self.array().astype(dtype)

    def __iter__(self):
        return iter(self.array().tolist())


class Writer:
    """Collects documents into shards inside `DIR.tmp-<pid>`; `finish` makes `DIR` appear at once.
    A document is streamed (`begin`, `extend`..., then `end` or `discard`), so it is never held
    whole; shards are hashed when finished."""

    def __init__(self, out: Path, dtype: str):
        self.out, self.dtype = Path(out), dtype
        self._np = np.dtype(dtype).newbyteorder("<")
        self.tmp = self.out.parent / f"{self.out.name}.tmp-{os.getpid()}"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.docs: list[dict] = []
        self.index: list[tuple[int, int]] = []
        self.shards: list[dict] = []
        self.n_tokens = 0
        self._f = None
        self._start: int | None = None   # first token of the document being written

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._f is not None:
            self._f.close()
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _shard(self):
        if self._f is None or self.shards[-1]["tokens"] >= SHARD_TOKENS:
            if self._f is not None:
                self._f.close()
            name = f"tokens-{len(self.shards):05d}.bin"
            self.shards.append({"name": name, "start": self.n_tokens, "tokens": 0})
            self._f = open(self.tmp / name, "wb")
        return self._f

    def _put(self, ids) -> None:
        arr = np.ascontiguousarray(ids, dtype=self._np)
        self._f.write(arr.data)
        self.shards[-1]["tokens"] += len(arr)
        self.n_tokens += len(arr)

    def begin(self) -> None:
        """Start a document (a document never spans shards): its BOS is written."""
        self._shard()
        self._start = self.n_tokens
        self._put([BOS_ID])

    def extend(self, ids) -> None:
        self._put(ids)

    def tokens_written(self) -> int:
        """Tokens of the document being written, without its BOS."""
        return self.n_tokens - self._start - 1

    def end(self, name: str, n_bytes: int, split: str, answers=()) -> None:
        """Close the document with its EOS; `answers` are (start, end, source) token offsets of the stored
        document (BOS at 0): the span [start, end) answers a question about the fact written at `source`
        (None: unknown)."""
        self._put([EOS_ID])
        self._record(name, n_bytes, split, answers)

    def discard(self) -> None:
        """Drop the document being written (the shard is cut back; a shard left empty is removed)."""
        shard = self.shards[-1]
        shard["tokens"] -= self.n_tokens - self._start
        self.n_tokens, self._start = self._start, None
        self._f.flush()
        self._f.truncate(shard["tokens"] * self._np.itemsize)
        self._f.seek(0, os.SEEK_END)
        if shard["tokens"] == 0:
            self._f.close()
            self._f = None
            (self.tmp / shard["name"]).unlink()
            self.shards.pop()
            if self.shards:
                self._f = open(self.tmp / self.shards[-1]["name"], "ab")

    def add(self, name: str, ids, n_bytes: int, split: str, answers=()) -> None:
        """Store `[BOS] ids [EOS]` (see `end` for `answers`)."""
        self.begin()
        self.extend(ids)
        self.end(name, n_bytes, split, answers)

    def add_stored(self, stored: StoredTokens, doc: dict) -> None:
        """Copy a document as stored elsewhere (`[BOS] ... [EOS]`, its meta.json entry), in chunks."""
        self._shard()
        self._start = self.n_tokens
        for i in range(0, len(stored), COPY_TOKENS):
            self._put(np.asarray(stored[i:i + COPY_TOKENS]))
        self._record(doc["name"], doc["bytes"], doc["split"], doc.get("answers", ()))

    def _record(self, name: str, n_bytes: int, split: str, answers) -> None:
        length = self.n_tokens - self._start
        self.index.append((self._start, length))
        self._start = None
        doc = {"name": name, "tokens": length, "bytes": n_bytes, "split": split}
        if answers:
            doc["answers"] = [[int(a), int(b), None if f is None else int(f)] for a, b, f in answers]
        self.docs.append(doc)

    def stored(self, k: int) -> StoredTokens:
        """Document k as written (`[BOS] ... [EOS]`), read back from its shard when used."""
        self._f.flush()
        start, length = self.index[k]
        shard = next(s for s in reversed(self.shards) if s["start"] <= start)
        return StoredTokens(self.tmp / shard["name"], self._np, start - shard["start"], length)

    def cut_tails(self, k: int, tails: list[tuple[str, int, int]], head_bytes: int) -> None:
        """Split document k into its head (train) and (split, tokens, bytes) tails taken from its end,
        each a document `<name>#<split>-tail` stored right after it (its shard is rewritten)."""
        self._f.close()
        start, length = self.index[k]
        si = next(i for i in reversed(range(len(self.shards))) if self.shards[i]["start"] <= start)
        shard = self.shards[si]
        path = self.tmp / shard["name"]
        old = StoredTokens(path, self._np, 0, shard["tokens"])
        off = start - shard["start"]
        head = length - 2 - sum(n for _, n, _ in tails)
        new_path = path.with_name(path.name + ".new")
        with open(new_path, "wb") as f:
            def copy(a: int, b: int) -> None:
                for i in range(a, b, COPY_TOKENS):
                    f.write(old[i:min(i + COPY_TOKENS, b)].array().data)
            bos, eos = np.asarray([BOS_ID], self._np), np.asarray([EOS_ID], self._np)
            copy(0, off + 1 + head)
            f.write(eos.data)
            at = off + 1 + head
            for _, n, _ in tails:
                f.write(bos.data)
                copy(at, at + n)
                f.write(eos.data)
                at += n
            copy(off + length, shard["tokens"])
        del old
        os.replace(new_path, path)
        grow = 2 * len(tails)
        name = self.docs[k]["name"]
        self.index[k] = (start, head + 2)
        self.docs[k].update(tokens=head + 2, bytes=head_bytes, split="train")
        at = start + head + 2
        for j, (split, n, nb) in enumerate(tails, start=1):
            self.index.insert(k + j, (at, n + 2))
            self.docs.insert(k + j, {"name": f"{name}#{split}-tail", "tokens": n + 2, "bytes": nb, "split": split})
            at += n + 2
        for j in range(k + len(tails) + 1, len(self.index)):
            self.index[j] = (self.index[j][0] + grow, self.index[j][1])
        shard["tokens"] += grow
        for later in self.shards[si + 1:]:
            later["start"] += grow
        self.n_tokens += grow
        self._f = open(self.tmp / self.shards[-1]["name"], "ab")

    def finish(self, meta: dict) -> dict:
        if self._f is not None:
            self._f.close()
            self._f = None
        shards = [{"name": s["name"], "start": s["start"], "tokens": s["tokens"],
                   "sha256": file_sha256(self.tmp / s["name"])} for s in self.shards]
        np.save(self.tmp / "docs.npy", np.asarray(self.index, dtype=np.int64).reshape(-1, 2))
        full = {"format_version": FORMAT_VERSION, "elastic_version": __version__, "dtype": self.dtype,
                "n_docs": len(self.docs), "n_tokens": self.n_tokens, "shards": shards,
                "splits": {s: sum(d["split"] == s for d in self.docs) for s in SPLITS}, **meta, "docs": self.docs}
        with open(self.tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(full, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        replace_tree(self.tmp, self.out)  # leaves DIR.old-<pid> only when killed between its renames
        return full


def file_sha256(path: Path) -> str:
    """sha256 of a file, read COPY_TOKENS * 4 bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(COPY_TOKENS * 4), b""):
            h.update(block)
    return h.hexdigest()
