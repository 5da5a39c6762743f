"""Synthetic tasks: exact lengths, answer spans that decode to the answer checkable from the text."""

from pathlib import Path

import pytest

from elastic_cli.data.loader import PreparedData
from elastic_cli.data.tasks import check_answer, prepare_task
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
BOOKS = str(ROOT / "tokenizers" / "books-8k.model")
CODE = str(ROOT / "tokenizers" / "code-8k.model")


@pytest.mark.parametrize("task", ["passkey", "recall", "sorting"])
@pytest.mark.parametrize("tok_path", [BOOKS, CODE])
def test_lengths_and_answers(tmp_path, task, tok_path):
    tok = Tokenizer.load(tok_path)
    prepare_task(task, 700, 12, tok_path, str(tmp_path / "t"), seed=5)
    data = PreparedData(tmp_path / "t")
    assert data.task["name"] == task and len(data) == 12
    answers = set()
    for i in range(len(data)):
        t = data.tokens(i)
        a, b = data.answer(i)
        assert len(t) == 700 and b == len(t) - 1 and 0 < a < b
        before, answer = tok.decode(t[1:a]), tok.decode(t[a:b])
        answers.add(answer)
        assert check_answer(task, before, answer), (task, i, answer)
        assert not check_answer(task, before, answer[::-1] + "0"), "the checker must be able to fail"
    assert len(answers) > 1
    if task == "sorting":
        assert all(len(x.split()) == 20 for x in answers)


def test_passkey_depth_varies_and_generation_is_seeded(tmp_path):
    tok = Tokenizer.load(BOOKS)
    prepare_task("passkey", 400, 20, BOOKS, str(tmp_path / "a"), seed=1)
    prepare_task("passkey", 400, 20, BOOKS, str(tmp_path / "b"), seed=1)
    a, b = PreparedData(tmp_path / "a"), PreparedData(tmp_path / "b")
    assert all((a.tokens(i) == b.tokens(i)).all() for i in range(20))
    depths = {tok.decode(a.tokens(i)).index("The pass key is") for i in range(20)}
    assert len(depths) > 5


def test_sorting_frequencies_drift_between_halves(tmp_path):
    prepare_task("sorting", 16000, 4, BOOKS, str(tmp_path / "s"), seed=2)
    data, tok = PreparedData(tmp_path / "s"), Tokenizer.load(BOOKS)
    moved = 0
    for i in range(4):
        syms = tok.decode(data.tokens(i)).split("Sorted")[0].split()
        half = len(syms) // 2
        first, second = syms[:half], syms[half:]
        moved += sum(abs(first.count(s) - second.count(s)) for s in set(syms)) / len(syms)
    # drift: E ~ 0.5 * L1(p0, p1) ~ 0.1; a fixed distribution gives sampling noise ~ 0.03 at this length
    assert moved / 4 > 0.07


def test_too_short_length_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="too short for the passkey task"):
        prepare_task("passkey", 20, 1, BOOKS, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
