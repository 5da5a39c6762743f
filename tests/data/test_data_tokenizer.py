"""Tokenizer: byte-exact round trip, special ids, reservoir sampling, training and loading errors via the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elastic_cli.data.tokenizer import (BOS_ID, EOS_ID, FILE_SEP, FILE_SEP_ID, PAD_ID, UNK_ID, Tokenizer,
                                        sample_lines)
from elastic_cli.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SHIPPED = [ROOT / "tokenizers" / "books-8k.model", ROOT / "tokenizers" / "code-8k.model"]
TRICKY = ["def f(x):\n    if x:\n\t\treturn 12345  \r\n", "  leading and trailing  ", "é 中文 🙂 \x01\x7f",
          f"{FILE_SEP}pkg/a.py\nx = 1\n", "", "\n\n\n", "a" * 3000]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_models_round_trip_bytes_and_never_emit_unk(path):
    tok = Tokenizer.load(path)
    assert tok.vocab_size == 8000
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.file_sep_id) == (PAD_ID, BOS_ID, EOS_ID, FILE_SEP_ID)
    for text in TRICKY + [bytes(range(1, 128)).decode()]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text and UNK_ID not in ids
    assert tok.encode(f"{FILE_SEP}x")[0] == FILE_SEP_ID
    assert [tok.piece(i) for i in tok.encode("2024")] == ["2", "0", "2", "4"]      # split digits


def test_code_model_keeps_indentation_as_whitespace_pieces():
    tok = Tokenizer.load(SHIPPED[1])
    pieces = [tok.piece(i) for i in tok.encode("class A:\n    def f(self):\n        return 1\n")]
    assert "▁▁▁▁" in pieces or "▁▁▁▁▁▁▁▁" in pieces


def test_reservoir_sample_is_bounded_seeded_and_covers_the_stream():
    texts = (f"line {i}\n\n" for i in range(10000))
    a = sample_lines(texts, 100, seed=3)
    assert len(a) == 100 and len(set(a)) == 100
    assert a == sample_lines((f"line {i}\n\n" for i in range(10000)), 100, seed=3)
    idx = sorted(int(x.split()[1]) for x in a)
    assert idx[-1] > 5000 and idx[0] < 5000               # not just the head of the stream
    assert sample_lines(["x\ny\n"], 10, seed=0) == ["x", "y"]


@pytest.mark.slow
def test_train_via_cli_and_load_errors(tmp_path):
    src = Path(json.__file__).parent                       # the standard library's json package
    out = tmp_path / "t.model"
    run = subprocess.run([sys.executable, "-m", "elastic_cli", "tokenizer", "train", str(src), "--vocab-size", "600",
                          "--kind", "code", "--out", str(out)], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 600 and tok.decode(tok.encode("def g(y):\n    return y\n")) == "def g(y):\n    return y\n"
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(DataError, match="tokenizer not found"):
        Tokenizer.load(tmp_path / "none.model")
    (tmp_path / "junk.model").write_bytes(b"\x00junk" * 10)
    with pytest.raises(DataError, match="not a sentencepiece model"):
        Tokenizer.load(tmp_path / "junk.model")
    bad = subprocess.run([sys.executable, "-m", "elastic_cli", "tokenizer", "train", str(tmp_path / "missing"),
                          "--vocab-size", "320", "--out", str(tmp_path / "m.model")], env=ENV, capture_output=True, text=True)
    assert bad.returncode == 3 and bad.stderr.strip() == f"error: no such file or directory: {tmp_path / 'missing'}"
