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


class Writer:
    """Collects documents into shards inside `DIR.tmp-<pid>`; `finish` makes `DIR` appear at once."""

    def __init__(self, out: Path, dtype: str):
        self.out, self.dtype = Path(out), dtype
        self.tmp = self.out.parent / f"{self.out.name}.tmp-{os.getpid()}"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.docs: list[dict] = []
        self.index: list[tuple[int, int]] = []
        self.shards: list[dict] = []
        self.n_tokens = 0
        self._f = None

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
            self.shards.append({"name": name, "start": self.n_tokens, "tokens": 0, "_h": hashlib.sha256()})
            self._f = open(self.tmp / name, "wb")
        return self._f

    def add(self, name: str, ids, n_bytes: int, split: str, answers=()) -> None:
        """Store `[BOS] ids [EOS]`; `answers` are (start, end, source) token offsets of the stored document
        (BOS at 0): the span [start, end) answers a question about the fact written at `source` (None: unknown)."""
        arr = np.empty(len(ids) + 2, dtype=np.dtype(self.dtype).newbyteorder("<"))
        arr[0], arr[-1] = BOS_ID, EOS_ID
        arr[1:-1] = ids
        blob = arr.tobytes()
        f = self._shard()
        f.write(blob)
        self.shards[-1]["_h"].update(blob)
        self.shards[-1]["tokens"] += len(arr)
        self.index.append((self.n_tokens, len(arr)))
        self.n_tokens += len(arr)
        doc = {"name": name, "tokens": len(arr), "bytes": n_bytes, "split": split}
        if answers:
            doc["answers"] = [[int(a), int(b), None if f is None else int(f)] for a, b, f in answers]
        self.docs.append(doc)

    def finish(self, meta: dict) -> dict:
        if self._f is not None:
            self._f.close()
            self._f = None
        shards = [{"name": s["name"], "start": s["start"], "tokens": s["tokens"], "sha256": s["_h"].hexdigest()}
                  for s in self.shards]
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
