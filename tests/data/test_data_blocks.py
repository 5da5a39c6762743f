"""Block encoding (`prepare`'s streaming): blocks cut where the tokenizer allows give the tokens of the
whole text (exactly on the standard library; on long texts up to sentencepiece's float32 ties), the
streamed read equals the whole read, and memory does not grow with the document."""

import gzip
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from elastic_cli.data import blocks, sources
from elastic_cli.data.tokenizer import FILE_SEP, Tokenizer

ROOT = Path(__file__).resolve().parents[2]
CODE, BOOKS = ROOT / "tokenizers" / "code-8k.model", ROOT / "tokenizers" / "books-8k.model"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def tricky_text() -> str:
    """300 kB of everything that could break a cut: CRLF, tabs, BOM, combining marks, emoji and CJK
    (byte fallback), NUL, long lines with spaces (space cuts), a line without any cut, space runs."""
    parts = ["\ufeffBOM first\r\n", "tabs\t\tand\ttrailing \t \r\n", "  leading spaces\n", "        \n", "\n\n\n",
             "combining e\u0301 a\u0308 \u0915\u094d\u0937\n", "emoji 😀👍🏽 👨‍👩‍👧 flags 🇫🇷\n", "中文字符，日本語のテキスト、한국어\n",
             "RTL \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627\n", "zero\u200bwidth\u200djoin\n",
             "nul\x00byte and \x7f del\n", "replacement \ufffd\ufffd char\n",
             f"{FILE_SEP}pkg/mod.py\ndef f(x):\n    return x  # ünïcödé ✓\n", "digits 1234567890 3.14159e-10 0xDEADBEEF\n",
             "word " * 700 + "\n", "x" * 3000 + " y\n", " " * 1000 + "after spaces\n", "a  b   c    d\n", "\r\r\r\n",
             "end without newline"]
    rng, out = random.Random(0), []
    for _ in range(40):
        rng.shuffle(parts)
        out.extend(parts)
    return "".join(out)


def encode_blocks(tok: Tokenizer, pieces, size: int) -> list[int]:
    return [i for b in blocks.blocks(pieces, *tok.cuts(), size) for i in tok.encode(b)]


def differing_lines(tok: Tokenizer, a: list[int], b: list[int]) -> tuple[int, list[tuple[bool, bool, float]]]:
    """(lines, [(same text, same pieces in another order, score gap)] for the lines whose tokens differ);
    a newline is always its own byte piece, so both streams split into the same lines."""
    nl = tok.encode("\n")[0]
    split = lambda ids: np.split(np.asarray(ids), np.nonzero(np.asarray(ids) == nl)[0] + 1)
    la, lb = split(a), split(b)
    assert len(la) == len(lb)
    score = lambda ids: sum(tok._sp.get_score(int(i)) for i in ids)
    return len(la), [(tok.decode(x) == tok.decode(y), sorted(x.tolist()) == sorted(y.tolist()), abs(score(x) - score(y)))
                     for x, y in zip(la, lb) if not np.array_equal(x, y)]


def test_cuts_closed_forms():
    assert blocks.cut("ab\ncd\nef", True, True) == 6 and blocks.cut("ab cd  ef", True, True) == 5
    assert blocks.cut("ab cd  ef", True, False) == 0 and blocks.cut("ab\ncd", False, True) == 0
    assert blocks.cut("   x", True, True) == 0 and blocks.cut("x   ", True, True) == 1
    assert Tokenizer.load(CODE).cuts() == Tokenizer.load(BOOKS).cuts() == (True, True)
    text = tricky_text()
    got = list(blocks.blocks([text[i:i + 100] for i in range(0, len(text), 100)], True, True, 257))
    assert "".join(got) == text and len(got) > 600
    assert all(b.endswith("\n") or blocks.cut(b + " ", False, True) == len(b) for b in got[:-1])
    assert list(blocks.blocks([], True, True)) == [""] and list(blocks.blocks(["a"], True, True)) == ["a"]


@pytest.mark.parametrize("size", [64, 257, 4096])
def test_tricky_text_in_blocks_gives_the_tokens_of_the_whole(size):
    """books-8k: identical with every kind of cut. code-8k: identical except where a run of spaces is
    split into the same pieces in another order (an exact tie of the float32 lattice)."""
    text = tricky_text()
    pieces = [text[i:i + 100] for i in range(0, len(text), 100)]
    books = Tokenizer.load(BOOKS)
    assert encode_blocks(books, pieces, size) == books.encode(text)
    code = Tokenizer.load(CODE)
    whole, got = code.encode(text), encode_blocks(code, pieces, size)
    n, diff = differing_lines(code, whole, got)
    assert len(got) == len(whole) and all(same_text and same_pieces and gap < 1e-9 for same_text, same_pieces, gap in diff)
    assert len(diff) <= 40 < n  # at most the 40 lines of 1000 spaces


@pytest.mark.slow
def test_stdlib_documents_stream_and_encode_like_the_whole_text():
    """Every document of the python-stdlib corpus: the streamed read is the whole read, and its default
    blocks give exactly the tokens of the whole text. With 64 kB blocks (many cuts per document) the
    lines that differ are ties: same text, pieces of equal score up to float32 rounding."""
    tok = Tokenizer.load(CODE)
    col = sources.collect([], corpus="python-stdlib")
    n_lines, diffs, n_blocks = 0, [], 0
    for doc in col.docs:
        text = sources.read_document(doc)
        assert "".join(sources.document_texts(doc)) == text
        whole = tok.encode(text)
        n_blocks += len(list(blocks.blocks(sources.document_texts(doc), True, True)))
        assert encode_blocks(tok, sources.document_texts(doc), blocks.BLOCK_CHARS) == whole, doc.name
        if len(text) > 1 << 18:
            n, diff = differing_lines(tok, whole, encode_blocks(tok, sources.document_texts(doc), 1 << 16))
            n_lines, diffs = n_lines + n, diffs + diff
    assert len(col.docs) > 150 and n_blocks >= len(col.docs)
    assert all(same_text and (same_pieces or gap < 0.01) for same_text, same_pieces, gap in diffs)
    assert len(diffs) < 1e-4 * n_lines  # measured (all documents): 8 of 335,211 lines, 6 exact ties, gaps <= 0.0017


def test_streamed_read_equals_whole_read_across_block_edges(tmp_path, monkeypatch):
    """A character or an undecodable byte that straddles two read blocks, in plain and .gz files."""
    monkeypatch.setattr(sources, "READ_BYTES", 7)
    raw = "é✓😀\n".encode() * 5 + b"caf\xe9 \xf0\x9f\x98 end\xe2\x9c"
    for name, blob in (("a.txt", raw), ("a.txt.gz", gzip.compress(raw))):
        (tmp_path / name).write_bytes(blob)
        assert "".join(sources.file_texts(tmp_path / name)) == sources.read_text(tmp_path / name) \
            == "".join("\ufffd" if "\udc80" <= c <= "\udcff" else c  # one U+FFFD per undecodable byte (textio)
                       for c in raw.decode("utf-8", errors="surrogateescape"))
    col = sources.collect([str(tmp_path / "a.txt"), str(tmp_path / "a.txt.gz")])
    assert col.replaced == [str(tmp_path / "a.txt"), str(tmp_path / "a.txt.gz")]
    assert list(col.replaced_bytes.values()) == [6, 6]  # \xe9, \xf0\x9f\x98 and \xe2\x9c
    assert [f["sha256"] for f in col.files] == [__import__("hashlib").sha256(raw).hexdigest()] * 2


def test_decoded_bytes_in_chunks_equals_the_whole_decode():
    tok = Tokenizer.load(BOOKS)
    ids = np.asarray(tok.encode(tricky_text()[:20000]))
    for a, b in [(0, len(ids)), (5, len(ids) - 7), (1, 2)]:
        part = ids[a:b]
        assert tok.decoded_bytes(part, chunk=13) == len(tok.decode(part.tolist()).encode("utf-8"))


def test_ordered_map_keeps_order_with_workers():
    tasks = [[(i, True, "x = %d\n" % i * (i % 7 + 1))] for i in range(40)]
    tok = Tokenizer.load(CODE)
    one = list(blocks.ordered(blocks.Encoders(tok, "uint16", 1).fn, tasks, None, 1))
    with blocks.Encoders(tok, "uint16", 2) as enc:
        two = list(blocks.ordered(enc.fn, tasks, enc.pool, 2))
    assert len(one) == 40 and [[(d, l, a.tolist(), n) for d, l, a, n in r] for r in one] == \
        [[(d, l, a.tolist(), n) for d, l, a, n in r] for r in two]


MEASURE = """
import resource, sys
from elastic_cli.data import blocks, sources
blocks.BLOCK_CHARS = sources.READ_BYTES = 1 << 16
from elastic_cli.data.prepare import PrepareOptions, prepare
prepare([sys.argv[1]], sys.argv[2], sys.argv[3], PrepareOptions(workers=1))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_document(tmp_path):
    """A 1 MB and an 8 MB document (64 kB blocks): the process's peak RSS differs by a few MB, where
    one whole-text encode of the 8 MB one would add ~280 MB (35x the input)."""
    line = "def f(x):  # ünïcödé ✓ 12345\n    return x * 2\n"
    peaks = []
    for mb in (1, 8):
        doc = tmp_path / f"doc{mb}.py"
        doc.write_text(line * (mb * 1_000_000 // len(line.encode())), encoding="utf-8")
        proc = subprocess.run([sys.executable, "-c", MEASURE, str(doc), str(CODE), str(tmp_path / f"out{mb}")],
                              env=ENV, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        peaks.append(int(proc.stdout.split()[-1]) / 1024)
    assert peaks[1] - peaks[0] < 25, peaks
