"""The one encoding policy for text inputs (`generate --file`, stdin; `prepare` can share it):
`--encoding NAME` (default UTF-8). A byte-order mark decides by itself: a UTF-8 BOM is dropped and a
UTF-16/32 file with a BOM is read as such whatever --encoding says (a BOM is unambiguous). Bytes the
encoding cannot decode are replaced by U+FFFD, one per byte, and counted per file so the caller
reports them; with `strict`, the first one is a DataError (exit 3) naming the file and offset.

Counting is exact because decoding runs with `surrogateescape` (each undecodable byte becomes one
lone surrogate U+DC80..U+DCFF, which decoded text never contains otherwise), then those become U+FFFD.
"""
from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Iterator, NamedTuple

from elastic_cli.errors import DataError, UsageError

BLOCK_BYTES = 1 << 20  # files are read and decoded this much at a time (constant memory)
_ESCAPED = re.compile("[\udc80-\udcff]")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # utf-32-le starts like utf-16-le


class Policy(NamedTuple):
    encoding: str = "utf-8"
    strict: bool = False  # refuse undecodable bytes instead of replacing them


def check_encoding(name: str) -> str:
    """UsageError (exit 2) for an encoding Python does not know; returns its canonical name."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise UsageError(f"--encoding {name}: unknown encoding (e.g. utf-8, latin-1, cp1252, utf-16)") from None


def encoding_of(head: bytes, policy: Policy) -> str:
    """The encoding a file is read with: its byte-order mark's, else the policy's."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    return policy.encoding


class Decoder:
    """Incremental decoding of one input under the policy; `replaced` counts undecodable bytes."""

    def __init__(self, where: str, encoding: str, policy: Policy):
        self.where, self.policy, self.replaced, self.offset = where, policy, 0, 0
        self._dec = codecs.getincrementaldecoder(encoding)(errors="strict" if policy.strict else "surrogateescape")

    def pending(self) -> bool:
        """Whether bytes of an unfinished character are held back from the last block."""
        return bool(self._dec.getstate()[0])

    def decode(self, block: bytes, final: bool = False) -> str:
        self.offset += len(block)  # bytes read so far, this block included
        try:
            text = self._dec.decode(block, final=final)
        except UnicodeDecodeError as e:  # strict only; e.object: bytes held back from earlier blocks + this one
            raise DataError(f"{self.where} is not {self.policy.encoding} text (undecodable byte at offset "
                            f"{self.offset - len(e.object) + e.start}); pass --encoding NAME, or leave out "
                            f"--strict to replace such bytes") from None
        n = 0 if text.isascii() else len(_ESCAPED.findall(text))  # isascii: one pass in C, no escapes possible
        if n:
            self.replaced += n
            text = _ESCAPED.sub("\ufffd", text)
        return text


def decode(blob: bytes, where: str, policy: Policy) -> tuple[str, int]:
    """A whole input (stdin, a small file) -> (text, bytes replaced)."""
    dec = Decoder(where, encoding_of(blob[:4], policy), policy)
    return dec.decode(blob, final=True), dec.replaced


def read_blocks(path: Path, policy: Policy) -> Iterator[str]:
    """A file's text, decoded BLOCK_BYTES at a time; the generator's return value is the count of
    replaced bytes (use `scan` to get it without keeping the text)."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        dec = Decoder(str(path), encoding_of(head, policy), policy)
        for block in iter(lambda: f.read(BLOCK_BYTES), b""):
            yield dec.decode(block)
        yield dec.decode(b"", final=True)
    return dec.replaced


class Scan(NamedTuple):
    replaced: int  # undecodable bytes (replaced by U+FFFD)
    blank: bool  # nothing but whitespace
    encoding: str  # the encoding it is read with (a BOM's, else the policy's)


def scan(path: Path, policy: Policy) -> Scan:
    """Read a file once in blocks (constant memory): its replaced-byte count and whether it is blank.
    DataError (exit 3) under `strict`; UsageError (exit 2) when it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UsageError(f"--file {path}: cannot read ({e.strerror})") from None
    blocks, blank = read_blocks(path, policy), True
    try:
        while True:
            blank = not next(blocks).strip() and blank
    except StopIteration as stop:
        replaced = stop.value
    except OSError as e:
        raise UsageError(f"--file {path}: cannot read ({e.strerror})") from None
    return Scan(replaced, blank, encoding_of(head, policy))


def replaced_note(where: str, replaced: int, policy: Policy) -> str:
    """The warning for an input with undecodable bytes."""
    return (f"{where}: {replaced} byte(s) are not valid {policy.encoding}; each was replaced by U+FFFD "
            f"(--encoding NAME reads them as another encoding, --strict refuses the file)")
