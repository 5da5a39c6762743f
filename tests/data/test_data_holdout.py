"""`elastic prepare` gives small collections a non-empty val and test split, and says so."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from elastic_cli.data import holdout, store
from elastic_cli.data.loader import PreparedData
from elastic_cli.data.prepare import PrepareOptions, prepare
from elastic_cli.data.tokenizer import Tokenizer

TOKENIZER = str(Path(__file__).resolve().parents[2] / "tokenizers" / "books-8k.model")
BOOK = "It was a dark and stormy night; the rain fell in torrents. " * 40


def books(root: Path, n: int) -> Path:
    src = root / "books"
    src.mkdir(parents=True)
    for i in range(n):
        (src / f"novel-{i}.txt").write_text(f"Chapter {i}. " + BOOK)
    return src


def test_six_books_with_default_fractions_get_val_and_test(tmp_path, capsys):
    names = [f"books/novel-{i}.txt" for i in range(6)]
    assert all(store.split_of(n, 0.05, 0.05) == "train" for n in names)  # the hash draw alone leaves none
    prepare([str(books(tmp_path, 6))], TOKENIZER, str(tmp_path / "out"), PrepareOptions(workers=1))
    data = PreparedData(tmp_path / "out")
    assert [len(data.documents(s)) for s in ("train", "val", "test")] == [4, 1, 1]
    by_draw = sorted(names, key=holdout.draw)
    assert data.name(data.documents("val")[0]) == by_draw[0] and data.name(data.documents("test")[0]) == by_draw[1]
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["splits"] == {"train": 4, "val": 1, "test": 1}
    assert "split 'val' was empty: moved document" in capsys.readouterr().err


@pytest.mark.parametrize("n", [1, 2])
def test_one_or_two_books_hold_out_the_tail(tmp_path, capsys, n):
    prepare([str(books(tmp_path, n))], TOKENIZER, str(tmp_path / "out"), PrepareOptions(workers=1, val_frac=0.1, test_frac=0.05))
    data = PreparedData(tmp_path / "out")
    tok = Tokenizer.load(TOKENIZER)
    val, test = data.documents("val"), data.documents("test")
    assert len(val) == len(test) == 1 and len(data.documents("train")) == n
    head = next(i for i in data.documents("train") if data.name(i) == data.name(val[0]).split("#")[0])
    whole = np.asarray(tok.encode(f"Chapter {data.name(head).split('-')[1].split('.')[0]}. " + BOOK))
    parts = [data.tokens(i)[1:-1] for i in (head, val[0], test[0])]  # without BOS/EOS
    assert np.array_equal(np.concatenate(parts), whole)  # head + val tail + test tail = the book, in order
    assert len(parts[1]) == round(0.1 * len(whole)) and len(parts[2]) == round(0.05 * len(whole))
    assert data.name(val[0]).endswith("#val-tail") and "held out the last" in capsys.readouterr().err


def test_splits_asked_to_be_empty_stay_empty(tmp_path):
    prepare([str(books(tmp_path, 4))], TOKENIZER, str(tmp_path / "out"), PrepareOptions(workers=1, val_frac=0.0, test_frac=0.0))
    assert len(PreparedData(tmp_path / "out").documents("train")) == 4


def test_cut_tails_and_fill_closed_forms():
    head, tails = holdout.cut_tails(np.arange(20), {"val": 0.1, "test": 0.25})
    assert head.tolist() == list(range(13)) and tails["val"].tolist() == [13, 14] and tails["test"].tolist() == list(range(15, 20))
    assert holdout.cut_tails(np.arange(2), {"val": 0.5, "test": 0.5})[1] == {}  # nothing left for train: no cut
    splits, _ = holdout.fill_empty_splits(["a", "b"], ["train", "val"], {"val": 0.1, "test": 0.1})
    assert splits == ["train", "val"]  # one train document left: it stays
