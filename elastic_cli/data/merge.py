"""`elastic prepare --merge`: join the parts of a sharded prepare (`--shard I/N`) into one prepared
directory equal to a one-process `prepare` of the same sources (tokens, index, splits, meta.json).

Every part must be complete (its meta.json is written last, so an interrupted part has none and is
redone by running its `--shard` again), come from the same sources and settings, and verify (shard
sizes and sha256); anything else stops the merge before `--out` is touched. Documents are copied in
part order, which is the sources' order, then the split rules of a one-process run apply once.
"""

from __future__ import annotations

import time
from pathlib import Path

from elastic_cli import console
from elastic_cli.data import store
from elastic_cli.data.loader import PreparedData
from elastic_cli.data.prepare import Summary, finish_splits, run_meta
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import DataError, UsageError


def _open_part(path: Path) -> PreparedData:
    if not (path / "meta.json").is_file():
        raise DataError(f"{path} is not a finished part (no meta.json): run its `elastic prepare ... --shard I/N` again")
    data = PreparedData(path, part=True)
    if "part" not in data.meta:
        raise DataError(f"{path} is a prepared directory, not a part of a sharded prepare (--shard I/N)")
    for s in data.meta["shards"]:
        if store.file_sha256(path / s["name"]) != s["sha256"]:
            raise DataError(f"{path / s['name']} does not match its sha256: run its `--shard` again with --force")
    return data


def _stored(data: PreparedData, i: int) -> store.StoredTokens:
    """Document i of a part, read from its shard file when copied (not memory-mapped)."""
    start, length = (int(x) for x in data.index[i])
    shard = next(s for s in reversed(data.meta["shards"]) if s["start"] <= start)
    return store.StoredTokens(data.path / shard["name"], data.dtype, start - shard["start"], length)


def check_parts(parts: list[PreparedData]) -> None:
    """DataError unless `parts` are parts 0..N-1 (each once) of one sharded prepare of the same sources."""
    first = parts[0].meta["part"]
    count, fp = first["count"], first["fingerprint"]
    for data in parts:
        if data.meta["part"]["fingerprint"] != fp or data.meta["part"]["count"] != count:
            raise DataError(f"{data.path} comes from other sources, settings or --shard N than {parts[0].path}")
    have = sorted(data.meta["part"]["index"] for data in parts)
    if have != list(range(count)):
        missing = sorted(set(range(count)) - set(have))
        twice = sorted({i for i in have if have.count(i) > 1})
        what = f"part(s) {', '.join(f'{i}/{count}' for i in missing)} missing" if missing else \
            f"part(s) {', '.join(f'{i}/{count}' for i in twice)} given twice"
        raise DataError(f"cannot merge: {what} (parts are numbered 0/{count} to {count - 1}/{count})")


def merge(part_dirs: list[str], out: str, tokenizer: str | None = None, force: bool = False) -> Summary:
    if not part_dirs:
        raise UsageError("--merge needs the part directories written by `elastic prepare ... --shard I/N`")
    out_p = Path(out)
    parts = [_open_part(Path(p)) for p in part_dirs]
    check_parts(parts)
    parts.sort(key=lambda d: d.meta["part"]["index"])
    meta0 = parts[0].meta
    tok = Tokenizer.load(tokenizer or meta0["tokenizer"])
    if tok.sha256 != meta0["tokenizer_sha256"]:
        raise DataError(f"{tok.path} is not the tokenizer the parts were prepared with "
                        f"(sha256 {meta0['tokenizer_sha256'][:12]}): give it with --tokenizer")
    fp = meta0["part"]["fingerprint"]
    if store.up_to_date(out_p, fp, force):
        console.info(f"{out_p} is up to date (same inputs and settings): nothing to do")
        return Summary(out_p, skipped=True)
    settings = meta0["settings"]
    fracs = {"val": settings["val_frac"], "test": settings["test_frac"]}
    n_bytes = sum(d.meta["n_bytes"] for d in parts)
    dropped = sum(d.meta["stats"]["dropped_short"] for d in parts)
    t0 = time.monotonic()
    with store.Writer(out_p, meta0["dtype"]) as w:
        for data in parts:
            for i, doc in enumerate(data.meta["docs"]):
                w.add_stored(_stored(data, i), doc)
        if not w.docs:
            raise DataError(f"every document is shorter than --min-tokens {settings['min_tokens']} ({dropped} dropped)")
        finish_splits(w, fracs, tok)
        w.finish(run_meta(meta0, fp, n_bytes, dropped))
        n_docs, n_tokens = len(w.docs), w.n_tokens
    secs = time.monotonic() - t0
    console.info(f"merged {len(parts)} parts into {out_p}: {n_docs} docs, {n_tokens} tokens in {secs:.1f} s")
    return Summary(out_p, False, n_docs, n_tokens, n_bytes, secs, dropped)
