"""Find the documents in `prepare`'s sources and read them as text.

A source is a text file (a document), a `.gz` file (a document), a folder (a document per text
file) or, with `repos=True`, a folder whose immediate subfolders are repositories (a document per
repository: its text files in sorted path order, each behind `<|file|>path\\n`). `python-stdlib`
is the running Python's standard library as repositories. Binary files are skipped and counted;
undecodable bytes are replaced and counted; everything else that is wrong is a `DataError`.
"""

from __future__ import annotations

import codecs
import errno
import gzip
import hashlib
import os
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

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


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8", errors="replace")


def read_document(doc: DocSpec) -> str:
    """The text of a document, exactly as it is tokenized, whole (the slow twin of `document_texts`)."""
    if doc.headers is None:
        return read_text(doc.paths[0])
    return "".join(f"{FILE_SEP}{h}\n{read_text(p)}" for p, h in zip(doc.paths, doc.headers))


def file_texts(path: str | Path) -> Iterator[str]:
    """`read_text(path)` in pieces of at most READ_BYTES characters (an incremental UTF-8 decode:
    undecodable bytes become U+FFFD exactly as in a decode of the whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for block in byte_blocks(path):
        text = decoder.decode(block)
        if text:
            yield text
    last = decoder.decode(b"", final=True)
    if last:
        yield last


def document_texts(doc: DocSpec) -> Iterator[str]:
    """`read_document(doc)` as a stream of pieces: memory of one read block, whatever the document's size."""
    if doc.headers is None:
        yield from file_texts(doc.paths[0])
        return
    for p, h in zip(doc.paths, doc.headers):
        yield f"{FILE_SEP}{h}\n"
        yield from file_texts(p)


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
    def __init__(self) -> None:
        self.c = Collection()
        self._names: set[str] = set()

    def text_file(self, path: Path, explicit: bool) -> bool:
        """Record a file (read one block at a time); False when it is empty or binary (skipped)."""
        h, head, utf8 = hashlib.sha256(), b"", codecs.getincrementaldecoder("utf-8")()
        valid = True
        for block in byte_blocks(path):
            h.update(block)
            head += block[:SNIFF_BYTES - len(head)]
            if valid and not (block.isascii() and not utf8.getstate()[0]):  # ASCII: valid, nothing to decode
                try:
                    utf8.decode(block)
                except UnicodeDecodeError:
                    valid = False
        try:
            utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            valid = False
        st = path.stat()
        self.c.files.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                             "sha256": h.hexdigest()})
        if not head:
            if explicit:
                raise DataError(f"empty file: {path}")
            self.c.skipped_empty += 1
            return False
        if b"\x00" in head:
            self.c.binary.append(str(path))
            return False
        if not valid:
            self.c.replaced.append(str(path))
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


def collect(sources: list[str], repos: bool = False, corpus: str | None = None) -> Collection:
    col = _Collector()
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
