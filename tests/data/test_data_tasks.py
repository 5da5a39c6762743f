"""Synthetic tasks: exact lengths, answer spans that decode to the answer checkable from the text."""

from pathlib import Path

import pytest
import torch

from elastic_cli.data import mqar
from elastic_cli.data.loader import PreparedData, SegmentLoader, Windows
from elastic_cli.data.tasks import check_answer, TaskOptions, prepare_task
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
BOOKS = str(ROOT / "tokenizers" / "books-8k.model")
CODE = str(ROOT / "tokenizers" / "code-8k.model")


@pytest.mark.parametrize("task", ["passkey", "recall", "sorting"])
@pytest.mark.parametrize("tok_path", [BOOKS, CODE])
def test_lengths_and_answers(tmp_path, task, tok_path):
    tok = Tokenizer.load(tok_path)
    prepare_task(task, 700, 12, tok_path, str(tmp_path / "t"), TaskOptions(seed=5))
    data = PreparedData(tmp_path / "t")
    assert data.task["name"] == task and len(data) == 12
    answers = set()
    for i in range(len(data)):
        t = data.tokens(i)
        [(a, b, source)] = data.answers(i)
        assert len(t) == 700 and b == len(t) - 1 and 0 < a < b
        assert (source is None) == (task == "sorting") and (source is None or 0 < source < a)
        before, answer = tok.decode(t[1:a]), tok.decode(t[a:b])
        answers.add(answer)
        assert check_answer(task, before, answer), (task, i, answer)
        assert not check_answer(task, before, answer[::-1] + "0"), "the checker must be able to fail"
    assert len(answers) > 1
    if task == "sorting":
        assert all(len(x.split()) == 20 for x in answers)


def test_passkey_depth_varies_and_generation_is_seeded(tmp_path):
    tok = Tokenizer.load(BOOKS)
    prepare_task("passkey", 400, 20, BOOKS, str(tmp_path / "a"), TaskOptions(seed=1))
    prepare_task("passkey", 400, 20, BOOKS, str(tmp_path / "b"), TaskOptions(seed=1))
    a, b = PreparedData(tmp_path / "a"), PreparedData(tmp_path / "b")
    assert all((a.tokens(i) == b.tokens(i)).all() for i in range(20))
    depths = {tok.decode(a.tokens(i)).index("The pass key is") for i in range(20)}
    assert len(depths) > 5


def test_sorting_frequencies_drift_between_halves(tmp_path):
    prepare_task("sorting", 16000, 4, BOOKS, str(tmp_path / "s"), TaskOptions(seed=2))
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


def _mqar(tmp_path, distance, name="m", **kw):
    opts = {"pairs": 6, "segment_len": 32, "distance": distance, "keys": 16, "values": 16, **kw}
    prepare_task("mqar", 256, 30, CODE, str(tmp_path / name), TaskOptions(seed=3, options=opts))
    return PreparedData(tmp_path / name)


@pytest.mark.parametrize("distance", [(0, 0), (2, 7), (1, 3)])
def test_mqar_spans_and_distances_recomputed_from_the_text(tmp_path, distance):
    data, tok = _mqar(tmp_path, distance), Tokenizer.load(CODE)
    keys, values, noise = mqar.word_pools(tok, 16, 16)
    seen = set()
    for i in range(len(data)):
        t = data.tokens(i)
        text = tok.decode(t[1:-1])
        assert tok.encode(text) == list(t[1:-1]) and len(t) == 256      # one token per word, exact length
        words = ["<bos>"] + text.split()                                 # stored offsets: BOS at 0
        spans = data.answers(i)
        assert len(spans) == 6
        # recompute every query from the text alone: a key's second occurrence, answered by its first's value
        truth = mqar.check_answers(text, keys)
        assert [words[a] for a, _, _ in spans] == truth
        for a, b, fact in spans:
            assert b == a + 1 and words[fact] == words[a - 1] and words[fact + 1] == words[a]
            assert words[fact] in keys and words[a] in values
            # fact (key, value) and query (key, value) each inside one segment of 32
            assert fact // 32 == (fact + 1) // 32 and (a - 1) // 32 == a // 32
            d = (a - 1) // 32 - fact // 32
            assert distance[0] <= d <= distance[1]
            seen.add(d)
        assert sum(w in keys for w in words) == 12                      # 6 facts + 6 queries, nothing else
    assert seen == set(range(distance[0], distance[1] + 1))             # every allowed distance occurs


def test_mqar_is_deterministic_by_seed_and_checker_can_fail(tmp_path):
    a, b = _mqar(tmp_path, (0, 7), "a"), _mqar(tmp_path, (0, 7), "b")
    assert all((a.tokens(i) == b.tokens(i)).all() and a.answers(i) == b.answers(i) for i in range(len(a)))
    tok = Tokenizer.load(CODE)
    keys = mqar.word_pools(tok, 16, 16)[0]
    text = tok.decode(a.tokens(0)[1:-1]).split()
    fact = a.answers(0)[0][2]
    text[fact - 1] = "zzzunseen"  # the first key no longer appears twice: one query fewer
    assert len(mqar.check_answers(" ".join(text), keys)) == 5


def test_mqar_rejects_impossible_settings(tmp_path):
    with pytest.raises(UsageError, match="segments"):
        _mqar(tmp_path, (9, 12))                                         # 256 tokens are 8 segments of 32
    with pytest.raises(UsageError, match="cannot place"):
        _mqar(tmp_path, (0, 0), pairs=70, keys=80)                      # 140 items > 127 two-token slots
    with pytest.raises(UsageError, match="only apply to --task mqar"):
        prepare_task("recall", 256, 2, CODE, str(tmp_path / "r"), TaskOptions(options={"pairs": 3}))


def test_loader_answers_only_keeps_exactly_the_answer_targets(tmp_path):
    data = _mqar(tmp_path, (0, 7))
    full = SegmentLoader(data, "train", Windows(4, 8, 32), seed=0)
    only = SegmentLoader(data, "train", Windows(4, 8, 32), seed=0, answers_only=True)
    for _ in range(3):
        f, o = full.next_batch(), only.next_batch()
        kept = o.targets != -1
        assert torch.equal(o.inputs, f.inputs) and torch.equal(o.targets[kept], f.targets[kept])
        assert int(kept.sum()) == 4 * 6                                 # each window is one document of 6 answers
