"""Find the documents in `prepare`'s sources and read them as text.

A source is a text file (a document), a `.gz` file (a document), a folder (a document per text
file) or, with `repos=True`, a folder whose immediate subfolders are repositories (a document per
repository: its text files in sorted path order, each behind `<|file|>path\\n`). `python-stdlib`
is the running Python's standard library as repositories. Binary files are skipped and counted;
undecodable bytes are replaced and counted; everything else that is wrong is a `DataError`.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from elastic_cli.data import textio
from elastic_cli.data.tokenizer import FILE_SEP
from elastic_cli.errors import DataError, UsageError

SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "build", "dist", "node_modules", ".venv", "venv",
             ".tox", ".mypy_cache", ".pytest_cache", ".eggs"}
SNIFF_BYTES = 8192
READ_BYTES = 1 << 20    # files are read (and .gz decompressed) this much at a time
CORPORA = ("python-stdlib",)
# The standard library without its test suites, compiled extensions, build config and third-party packages.
STDLIB_SKIP = {"site-packages", "test", "tests", "idle_test", "lib-dynload", "__pycache__", "ensurepip"}


@dataclass(frozen=True)
class DocSpec:
    name: str
    paths: tuple[str, ...]              # files, in document order
    headers: tuple[str, ...] | None     # repository-relative path per file; None: a plain document


@dataclass
class Collection:
    docs: list[DocSpec] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)       # path, size, mtime_ns, sha256 of every file read
    binary: list[str] = field(default_factory=list)       # skipped binary files
    replaced: list[str] = field(default_factory=list)     # files with undecodable bytes (replaced by U+FFFD)
    replaced_bytes: dict[str, int] = field(default_factory=dict)  # how many bytes were replaced, per such file
    skipped_empty: int = 0


def _cannot_read(path, e: OSError) -> DataError:
    if isinstance(e, PermissionError):
        return DataError(f"cannot read {path}: permission denied")
    return DataError(f"cannot read {path}: {e.strerror or e}")


def byte_blocks(path: str | Path) -> Iterator[bytes]:
    """The bytes of a file (decompressed for `.gz`), READ_BYTES at a time; unreadable or corrupt
    files are a DataError."""
    gz = str(path).endswith(".gz")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise _cannot_read(path, e) from None
    with f:
        stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
        while True:
            try:
                block = stream.read(READ_BYTES)
            except (EOFError, zlib.error, gzip.BadGzipFile):
                raise DataError(f"not a valid gzip file: {path}") from None
            except OSError as e:
                raise (DataError(f"not a valid gzip file: {path}") if gz else _cannot_read(path, e)) from None
            if not block:
                return
            yield block


def read_bytes(path: str | Path) -> bytes:
    """Bytes of a file (decompressed for `.gz`), whole."""
    return b"".join(byte_blocks(path))


def read_text(path: str | Path, policy: textio.Policy = textio.Policy()) -> str:
    """A file's text, whole, under the encoding policy (textio: a byte-order mark decides, else
    --encoding; undecodable bytes become U+FFFD, one per byte)."""
    return textio.decode(read_bytes(path), str(path), policy)[0]


def read_document(doc: DocSpec, policy: textio.Policy = textio.Policy()) -> str:
    """The text of a document, exactly as it is tokenized, whole (the slow twin of `document_texts`)."""
    if doc.headers is None:
        return read_text(doc.paths[0], policy)
    return "".join(f"{FILE_SEP}{h}\n{read_text(p, policy)}" for p, h in zip(doc.paths, doc.headers))


def file_texts(path: str | Path, policy: textio.Policy = textio.Policy()) -> Iterator[str]:
    """`read_text(path, policy)` in pieces of at most READ_BYTES characters (an incremental decode:
    the same text as a decode of the whole)."""
    decoder = None
    for block in byte_blocks(path):
        if decoder is None:  # the first block holds the byte-order mark, if any
            decoder = textio.Decoder(str(path), textio.encoding_of(block[:4], policy), policy)
        text = decoder.decode(block)
        if text:
            yield text
    last = "" if decoder is None else decoder.decode(b"", final=True)
    if last:
        yield last


def document_texts(doc: DocSpec, policy: textio.Policy = textio.Policy()) -> Iterator[str]:
    """`read_document(doc, policy)` as a stream of pieces: memory of one read block, whatever the document's size."""
    if doc.headers is None:
        yield from file_texts(doc.paths[0], policy)
        return
    for p, h in zip(doc.paths, doc.headers):
        yield f"{FILE_SEP}{h}\n"
        yield from file_texts(p, policy)


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"symlink loop: {path}") from None
        if e.errno == errno.ENOENT:
            raise DataError(f"no such file or directory: {path}") from None
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def _walk(root: Path, ancestors: tuple[str, ...] = ()) -> list[Path]:
    """Files under `root` in sorted order, following symlinks; a link back to an ancestor is a DataError."""
    real = os.path.realpath(root)
    if real in ancestors:
        raise DataError(f"symlink loop: {root} points back to {real}")
    try:
        names = sorted(os.listdir(root))
    except OSError as e:
        raise DataError(f"cannot read {root}: {e.strerror}") from None
    out: list[Path] = []
    for name in names:
        p = root / name
        if name.startswith(".") or name in SKIP_DIRS or name.endswith(".egg-info"):
            continue
        _stat(p)
        if os.path.isdir(p):
            out.extend(_walk(p, ancestors + (real,)))
        elif os.path.isfile(p):
            out.append(p)
    return out


class _Collector:
    def __init__(self, policy: textio.Policy = textio.Policy()) -> None:
        self.c = Collection()
        self.policy = policy
        self._names: set[str] = set()

    def text_file(self, path: Path, explicit: bool) -> bool:
        """Record a file (read one block at a time); False when it is empty or binary (skipped).
        Undecodable bytes are counted (`Collection.replaced_bytes`); with a strict policy they are a
        DataError naming the file and offset, before anything is written."""
        h, head, decoder = hashlib.sha256(), b"", None
        wide = False  # a UTF-16/32 byte-order mark: NUL bytes are text there
        for block in byte_blocks(path):
            h.update(block)
            if decoder is None:
                encoding = textio.encoding_of(block[:4], self.policy)
                wide = encoding in ("utf-16", "utf-32")
                decoder = textio.Decoder(str(path), encoding, self.policy)
            head += block[:SNIFF_BYTES - len(head)]
            if b"\x00" in head and not wide:
                decoder = False  # binary: skipped below, not decoded
            if decoder and not (encoding == "utf-8" and block.isascii() and not decoder.pending()):
                decoder.decode(block)  # (an ASCII block between whole characters is valid UTF-8: skipped)
        if decoder:
            decoder.decode(b"", final=True)
        st = path.stat()
        self.c.files.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                             "sha256": h.hexdigest()})
        if not head:
            if explicit:
                raise DataError(f"empty file: {path}")
            self.c.skipped_empty += 1
            return False
        if decoder is False:
            self.c.binary.append(str(path))
            return False
        if decoder.replaced:
            self.c.replaced.append(str(path))
            self.c.replaced_bytes[str(path)] = decoder.replaced
        return True

    def add(self, name: str, paths: list[Path], headers: list[str] | None) -> None:
        if name in self._names:
            raise DataError(f"two documents are named {name!r}; rename one of the sources")
        self._names.add(name)
        self.c.docs.append(DocSpec(name, tuple(str(p) for p in paths),
                                   None if headers is None else tuple(headers)))

    def repo(self, name: str, root: Path, files: list[Path]) -> None:
        keep = [p for p in files if self.text_file(p, explicit=False)]
        if keep:
            self.add(name, keep, [p.relative_to(root).as_posix() for p in keep])


def collect(sources: list[str], repos: bool = False, corpus: str | None = None,
            policy: textio.Policy = textio.Policy()) -> Collection:
    col = _Collector(policy)
    for src in sources:
        path = Path(src)
        if not os.path.lexists(path):
            raise DataError(f"no such file or directory: {path}")
        _stat(path)
        before = len(col.c.docs)
        if path.is_file():
            if col.text_file(path, explicit=True):
                col.add(path.name, [path], None)
            continue
        if repos:
            for sub in sorted(path.iterdir()):
                if sub.is_dir() and not sub.name.startswith(".") and sub.name not in SKIP_DIRS:
                    col.repo(f"{path.name}/{sub.name}", sub, _walk(sub, (os.path.realpath(path),)))
        else:
            for p in _walk(path):
                if col.text_file(p, explicit=False):
                    col.add(f"{path.name}/{p.relative_to(path).as_posix()}", [p], None)
        if len(col.c.docs) == before:
            raise DataError(f"no text files in {path}")
    if corpus is not None:
        _stdlib(col)
    if not col.c.docs:
        shown = f" (skipped {len(col.c.binary)} binary files, e.g. {col.c.binary[0]})" if col.c.binary else ""
        raise DataError(f"no text documents in the sources{shown}")
    return col.c


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib(col: _Collector) -> None:
    """Each top-level package or module of the standard library as a repository document."""
    root = stdlib_root()
    for entry in sorted(root.iterdir()):
        name = entry.name
        if name in STDLIB_SKIP or name.startswith(("config-", ".")):
            continue
        if entry.is_dir():
            files = [p for p in _walk(entry) if not set(p.relative_to(root).parts) & STDLIB_SKIP]
            col.repo(f"python-stdlib/{name}", root, files)
        elif name.endswith(".py"):
            col.repo(f"python-stdlib/{name}", root, [entry])


def check_out_outside(out: Path, sources: list[str], corpus: str | None) -> None:
    """`--out` must not be inside a source (it would read its own output)."""
    out_real = Path(os.path.realpath(out))
    roots = [Path(os.path.realpath(s)) for s in sources]
    if corpus is not None:
        roots.append(Path(os.path.realpath(stdlib_root())))
    for r in roots:
        if out_real == r or r in out_real.parents:
            raise UsageError(f"--out {out} is inside the source {r}")
