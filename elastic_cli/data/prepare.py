"""`elastic prepare`: tokenize sources into a prepared directory (docs/internals.md, Data)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elastic_cli import console
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
    with store.Writer(out_p, dt) as w, console.progress(len(col.docs), "prepare", "doc") as bar:
        for doc, (ids, nb) in zip(col.docs, _encoded(col.docs, str(tok.path), workers)):
            if len(ids) < min_tokens:
                dropped += 1
            else:
                w.add(doc.name, ids, nb, store.split_of(doc.name, val_frac, test_frac))
                n_bytes += nb
            elapsed = max(time.monotonic() - t0, 1e-9)
            bar.update(1, MB_s=f"{n_bytes / elapsed / 1e6:.2f}", tok_s=f"{w.n_tokens / elapsed:.0f}")
        if not w.docs:
            raise DataError(f"every document is shorter than --min-tokens {min_tokens} ({dropped} dropped)")
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
