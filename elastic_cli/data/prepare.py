"""`elastic prepare`: tokenize sources into a prepared directory (docs/internals.md, Data)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from elastic_cli import console
from elastic_cli.data import textio
from elastic_cli.allocator import return_large_buffers
from elastic_cli.data import blocks, holdout
from elastic_cli.data import sources as src
from elastic_cli.data import store
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import DataError, UsageError


@dataclass
class Summary:
    out: Path
    skipped: bool          # True: already up to date, nothing done
    n_docs: int = 0
    n_tokens: int = 0
    n_bytes: int = 0
    seconds: float = 0.0
    dropped: int = 0


def _check_fracs(val_frac: float, test_frac: float) -> None:
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UsageError(f"--val-frac and --test-frac must be >= 0 with a sum below 1, got {val_frac} and {test_frac}")


def part_range(sizes: list[int], index: int, count: int) -> range:
    """Documents of part `index` of `count`: consecutive ones, a document in the part where the middle
    of its bytes falls when the sources' bytes are cut into `count` equal ranges (deterministic)."""
    total, before, parts = max(sum(sizes), 1), 0, []
    for size in sizes:
        parts.append((2 * before + size) * count // (2 * total))  # non-decreasing: each part is a run
        before += size
    return range(sum(p < index for p in parts), sum(p <= index for p in parts))


def finish_splits(w: store.Writer, fracs: dict[str, float], tok: Tokenizer) -> None:
    """Make every requested split non-empty when possible (data/holdout.py), once every document is
    written: 1-2 documents -> the longest one's tail held out; 3+ -> documents moved."""
    if len(w.docs) <= 2:
        longest = max(range(len(w.docs)), key=lambda i: w.docs[i]["tokens"])
        name = w.docs[longest]["name"]
        missing = {s: f for s, f in fracs.items() if f > 0 and not any(d["split"] == s for d in w.docs)}
        body = w.stored(longest)[1:-1]
        _, tails = holdout.cut_tails(range(len(body)), {s: missing.get(s, 0.0) for s in holdout.SPLITS})
        if not tails:
            return
        cuts = [(split, len(t), tok.decoded_bytes(body[t.start:t.stop])) for split, t in tails.items()]
        w.cut_tails(longest, cuts, max(w.docs[longest]["bytes"] - sum(nb for _, _, nb in cuts), 0))
        for split, n, _ in cuts:
            console.info(f"split {split!r} was empty: held out the last {n} tokens of {name!r} "
                         f"as document {name + '#' + split + '-tail'!r}")
        return
    splits, notes = holdout.fill_empty_splits([d["name"] for d in w.docs], [d["split"] for d in w.docs], fracs)
    for doc, split in zip(w.docs, splits):
        doc["split"] = split
    for note in notes:
        console.info(note)


def run_meta(base: dict, fingerprint: str, n_bytes: int, dropped: int) -> dict:
    """meta.json's fields beyond the store's, in one order for a one-process run and a merge."""
    return {"tokenizer_sha256": base["tokenizer_sha256"], "tokenizer": base["tokenizer"],
            "vocab_size": base["vocab_size"], "fingerprint": fingerprint, "settings": base["settings"],
            "n_bytes": n_bytes, "stats": {**base["stats"], "dropped_short": dropped}, "sources": base["sources"]}


def _write_docs(w: store.Writer, docs: list[src.DocSpec], tok: Tokenizer, enc: blocks.Encoders, opts: PrepareOptions,
                total_bytes: int) -> tuple[int, int]:
    """Stream every document's blocks through the workers into `w`; (UTF-8 bytes kept, dropped)."""
    min_tokens, policy = opts.min_tokens, opts.policy
    newlines, spaces = tok.cuts()
    if not newlines:
        console.warn(f"{tok.path} has pieces that hold a newline: each document is encoded whole "
                     f"(memory grows with the largest document)")
    size = blocks.BLOCK_CHARS if newlines else 1 << 62
    stream = ((j, blocks.blocks(src.document_texts(d, policy), newlines, spaces, size)) for j, d in enumerate(docs))
    t0, dropped, n_bytes, doc_bytes, seen, shown, open_doc = time.monotonic(), 0, 0, 0, 0, 0, False
    with console.progress(max(total_bytes >> 20, 1), "prepare", "MB") as bar:
        for j, last, ids, nb in enc.encode(stream):
            if not open_doc:
                w.begin()
                open_doc = True
            w.extend(ids)
            doc_bytes += nb
            if last:
                if w.tokens_written() < min_tokens:
                    w.discard()
                    dropped += 1
                else:
                    w.end(docs[j].name, doc_bytes, store.split_of(docs[j].name, opts.val_frac, opts.test_frac))
                    n_bytes += doc_bytes
                seen, doc_bytes, open_doc = seen + doc_bytes, 0, False
            elapsed = max(time.monotonic() - t0, 1e-9)
            done = (seen + doc_bytes) >> 20
            bar.update(done - shown, MB_s=f"{(seen + doc_bytes) / elapsed / 1e6:.2f}",
                       tok_s=f"{w.n_tokens / elapsed:.0f}")
            shown = done
    return n_bytes, dropped


class PrepareOptions(NamedTuple):
    """How `prepare` reads and splits its sources (the flags of `elastic prepare`)."""

    repos: bool = False  # each subfolder of a source folder is one document (a repository)
    min_tokens: int = 1  # drop shorter documents
    val_frac: float = 0.05
    test_frac: float = 0.05
    dtype: str = "auto"  # auto | uint16 | uint32
    force: bool = False  # rebuild even if `out` holds other input
    corpus: str | None = None  # a built-in corpus instead of (or besides) the sources
    workers: int | None = None  # encoding processes (default: up to 2 cores)
    shard: tuple[int, int] | None = None  # (I, N): only part I of N (joined by data/merge.py)
    policy: textio.Policy = textio.Policy()  # how files are decoded (--encoding, --strict; data/textio.py)


def prepare(sources: list[str], tokenizer: str, out: str, opts: PrepareOptions = PrepareOptions()) -> Summary:
    """Tokenize the sources into `out`; with `opts.shard=(I, N)`, only part I of N (joined by data/merge.py)."""
    repos, min_tokens, val_frac, test_frac, dtype, force, corpus, workers, shard, policy = opts
    return_large_buffers()  # before the first block is read
    out_p = Path(out)
    _check_fracs(val_frac, test_frac)
    if not sources and corpus is None:
        raise UsageError("give SOURCES, --corpus or --task")
    if corpus is not None and corpus not in src.CORPORA:
        raise UsageError(f"--corpus must be one of {', '.join(src.CORPORA)}, got {corpus!r}")
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise UsageError(f"--shard I/N needs 0 <= I < N, got {shard[0]}/{shard[1]}")
    src.check_out_outside(out_p, sources, corpus)
    tok = Tokenizer.load(tokenizer)
    dt = store.choose_dtype(tok.vocab_size, dtype)
    workers = workers or min(2, os.cpu_count() or 1)
    with blocks.Encoders(tok, dt, workers) as enc:  # the workers load while the sources are hashed
        return _prepare(sources, tok, out_p, opts._replace(dtype=dt, workers=workers), enc)


def _prepare(sources: list[str], tok: Tokenizer, out_p: Path, opts: PrepareOptions, enc: blocks.Encoders) -> Summary:
    """`prepare` once the tokenizer is loaded, the dtype and worker count chosen and the encoders started."""
    repos, min_tokens, val_frac, test_frac, dt, force, corpus, workers, shard, policy = opts
    col = src.collect(sources, repos=repos, corpus=corpus, policy=policy)
    settings = {"repos": repos, "corpus": corpus, "min_tokens": min_tokens, "val_frac": val_frac,
                "test_frac": test_frac, "dtype": dt, "tokenizer_sha256": tok.sha256}
    if policy.encoding != "utf-8":  # recorded only when not the default: earlier directories stay up to date
        settings["encoding"] = policy.encoding
    fp = store.fingerprint({"settings": settings, "docs": [[d.name, d.headers] for d in col.docs],
                            "files": [[f["path"], f["size"], f["sha256"]] for f in col.files]})
    out_fp = fp if shard is None else store.fingerprint({"fingerprint": fp, "shard": list(shard)})
    if store.up_to_date(out_p, out_fp, force):
        console.info(f"{out_p} is up to date (same inputs and settings): nothing to do")
        return Summary(out_p, skipped=True)
    if col.binary:
        console.warn(f"skipped {len(col.binary)} binary file(s), e.g. {col.binary[0]}")
    for path in col.replaced[:5]:
        n = col.replaced_bytes[path]
        console.warn(f"{path}: replaced {n} undecodable byte{'s' * (n != 1)} (not {policy.encoding}) by U+FFFD; "
                     f"--encoding NAME reads it as another encoding, --strict refuses it")
    if len(col.replaced) > 5:
        console.warn(f"... and {len(col.replaced) - 5} more file(s) with replaced bytes")
    sizes = {f["path"]: f["size"] for f in col.files}
    doc_sizes = [sum(sizes[p] for p in d.paths) for d in col.docs]
    docs = range(len(col.docs)) if shard is None else part_range(doc_sizes, *shard)
    fracs = {"val": val_frac, "test": test_frac}
    base = {"tokenizer_sha256": tok.sha256, "tokenizer": str(tok.path), "vocab_size": tok.vocab_size,
            "settings": settings, "sources": col.files,
            "stats": {"dropped_short": 0, "skipped_binary": len(col.binary), "skipped_empty": col.skipped_empty,
                      "replaced_files": len(col.replaced), "replaced_bytes": sum(col.replaced_bytes.values())}}
    t0 = time.monotonic()
    with store.Writer(out_p, dt) as w:
        n_bytes, dropped = _write_docs(w, [col.docs[j] for j in docs], tok, enc, opts, sum(doc_sizes[j] for j in docs))
        if shard is None:
            if not w.docs:
                raise DataError(f"every document is shorter than --min-tokens {min_tokens} ({dropped} dropped)")
            finish_splits(w, fracs, tok)
            w.finish(run_meta(base, fp, n_bytes, dropped))
        else:
            w.finish({**run_meta(base, out_fp, n_bytes, dropped),
                      "part": {"index": shard[0], "count": shard[1], "fingerprint": fp,
                               "docs": [docs.start, docs.stop]}})
        n_docs, n_tokens = len(w.docs), w.n_tokens
    secs = max(time.monotonic() - t0, 1e-9)
    if dropped:
        console.warn(f"dropped {dropped} document(s) shorter than --min-tokens {min_tokens}")
    span = f"documents {docs.start}-{docs.stop - 1}" if len(docs) else "no documents"
    what = out_p if shard is None else f"{out_p} (part {shard[0]}/{shard[1]}, {span})"
    console.info(f"prepared {what}: {n_docs} docs, {n_tokens} tokens, {n_bytes / 1e6:.1f} MB in {secs:.1f} s "
                 f"({n_bytes / secs / 1e6:.2f} MB/s, {n_tokens / secs:.0f} tokens/s, {workers} workers)")
    return Summary(out_p, False, n_docs, n_tokens, n_bytes, secs, dropped)
