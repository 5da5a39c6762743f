"""`elastic prepare`: tokenize sources into a prepared directory (docs/internals.md, Data)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elastic_cli import console
from elastic_cli.data import holdout
from elastic_cli.data import sources as src
from elastic_cli.data import store
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import DataError, UsageError

_worker_tok: Tokenizer | None = None


@dataclass
class Summary:
    out: Path
    skipped: bool          # True: already up to date, nothing done
    n_docs: int = 0
    n_tokens: int = 0
    n_bytes: int = 0
    seconds: float = 0.0
    dropped: int = 0


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tok
    _worker_tok = Tokenizer.load(tokenizer_path)


def _encode(doc: src.DocSpec) -> tuple[np.ndarray, int]:
    """Token ids and UTF-8 byte count of one document (runs in a worker)."""
    text = src.read_document(doc)
    return np.asarray(_worker_tok.encode(text), dtype=np.uint32), len(text.encode("utf-8"))


def _encoded(docs: list[src.DocSpec], tokenizer_path: str, workers: int):
    if workers <= 1:
        _init_worker(tokenizer_path)
        yield from map(_encode, docs)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_path,)) as pool:
        yield from pool.imap(_encode, docs, chunksize=1)


def _check_fracs(val_frac: float, test_frac: float) -> None:
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UsageError(f"--val-frac and --test-frac must be >= 0 with a sum below 1, got {val_frac} and {test_frac}")


def _add(w: store.Writer, name: str, ids, n_bytes: int, val_frac: float, test_frac: float) -> None:
    w.add(name, ids, n_bytes, store.split_of(name, val_frac, test_frac))


def _finish_splits(w: store.Writer, pending: list, fracs: dict[str, float], tok: Tokenizer) -> None:
    """Write the pending documents and make every requested split non-empty when possible
    (data/holdout.py): 1-2 documents -> the longest one's tail held out; 3+ -> documents moved."""
    if len(pending) + len(w.docs) <= 2 and pending:
        longest = max(range(len(pending)), key=lambda i: len(pending[i][1]))
        name, ids, nb = pending[longest]
        missing = {s: f for s, f in fracs.items()
                   if f > 0 and not any(store.split_of(p[0], fracs["val"], fracs["test"]) == s for p in pending)}
        head, tails = holdout.cut_tails(ids, {s: missing.get(s, 0.0) for s in holdout.SPLITS})
        for p in pending:
            if p is pending[longest] and tails:
                tail_bytes = {s: len(tok.decode(t.tolist()).encode("utf-8")) for s, t in tails.items()}
                w.add(name, head, max(nb - sum(tail_bytes.values()), 0), "train")
                for split, tail in tails.items():
                    w.add(f"{name}#{split}-tail", tail, tail_bytes[split], split)
                    console.info(f"split {split!r} was empty: held out the last {len(tail)} tokens of {name!r} "
                                 f"as document {name + '#' + split + '-tail'!r}")
            else:
                _add(w, *p, fracs["val"], fracs["test"])
        return
    for p in pending:
        _add(w, *p, fracs["val"], fracs["test"])
    splits, notes = holdout.fill_empty_splits([d["name"] for d in w.docs], [d["split"] for d in w.docs], fracs)
    for doc, split in zip(w.docs, splits):
        doc["split"] = split
    for note in notes:
        console.info(note)


def prepare(sources: list[str], tokenizer: str, out: str, repos: bool = False, min_tokens: int = 1,
            val_frac: float = 0.05, test_frac: float = 0.05, dtype: str = "auto", force: bool = False,
            corpus: str | None = None, workers: int | None = None) -> Summary:
    out_p = Path(out)
    _check_fracs(val_frac, test_frac)
    if not sources and corpus is None:
        raise UsageError("give SOURCES, --corpus or --task")
    if corpus is not None and corpus not in src.CORPORA:
        raise UsageError(f"--corpus must be one of {', '.join(src.CORPORA)}, got {corpus!r}")
    src.check_out_outside(out_p, sources, corpus)
    tok = Tokenizer.load(tokenizer)
    dt = store.choose_dtype(tok.vocab_size, dtype)
    col = src.collect(sources, repos=repos, corpus=corpus)
    settings = {"repos": repos, "corpus": corpus, "min_tokens": min_tokens, "val_frac": val_frac,
                "test_frac": test_frac, "dtype": dt, "tokenizer_sha256": tok.sha256}
    fp = store.fingerprint({"settings": settings, "docs": [[d.name, d.headers] for d in col.docs],
                            "files": [[f["path"], f["size"], f["sha256"]] for f in col.files]})
    if store.up_to_date(out_p, fp, force):
        console.info(f"{out_p} is up to date (same inputs and settings): nothing to do")
        return Summary(out_p, skipped=True)
    if col.binary:
        console.warn(f"skipped {len(col.binary)} binary file(s), e.g. {col.binary[0]}")
    if col.replaced:
        console.warn(f"replaced undecodable bytes in {len(col.replaced)} file(s), e.g. {col.replaced[0]}")
    workers = workers or min(2, os.cpu_count() or 1)
    t0 = time.monotonic()
    dropped = n_bytes = 0
    fracs = {"val": val_frac, "test": test_frac}
    with store.Writer(out_p, dt) as w, console.progress(len(col.docs), "prepare", "doc") as bar:
        pending: list[tuple[str, np.ndarray, int]] = []  # the first two documents wait: maybe tails are cut
        for doc, (ids, nb) in zip(col.docs, _encoded(col.docs, str(tok.path), workers)):
            if len(ids) < min_tokens:
                dropped += 1
            else:
                pending.append((doc.name, ids, nb))
                n_bytes += nb
                if len(pending) + len(w.docs) > 2:
                    _add(w, *pending.pop(0), val_frac, test_frac)
            elapsed = max(time.monotonic() - t0, 1e-9)
            bar.update(1, MB_s=f"{n_bytes / elapsed / 1e6:.2f}", tok_s=f"{w.n_tokens / elapsed:.0f}")
        if not pending and not w.docs:
            raise DataError(f"every document is shorter than --min-tokens {min_tokens} ({dropped} dropped)")
        _finish_splits(w, pending, fracs, tok)
        meta = {"tokenizer_sha256": tok.sha256, "tokenizer": str(tok.path), "vocab_size": tok.vocab_size,
                "fingerprint": fp, "settings": settings, "n_bytes": n_bytes,
                "stats": {"dropped_short": dropped, "skipped_binary": len(col.binary),
                          "skipped_empty": col.skipped_empty, "replaced_files": len(col.replaced)},
                "sources": col.files}
        w.finish(meta)
        n_docs, n_tokens = len(w.docs), w.n_tokens
    secs = time.monotonic() - t0
    if dropped:
        console.warn(f"dropped {dropped} document(s) shorter than --min-tokens {min_tokens}")
    console.info(f"prepared {out_p}: {n_docs} docs, {n_tokens} tokens, {n_bytes / 1e6:.1f} MB in {secs:.1f} s "
                 f"({n_bytes / secs / 1e6:.2f} MB/s, {n_tokens / secs:.0f} tokens/s, {workers} workers)")
    return Summary(out_p, False, n_docs, n_tokens, n_bytes, secs, dropped)
