"""Haystack tasks (babilong, niah-multikey, niah-multivalue, passkey with --haystack): exact lengths,
every answer recomputed from the document's own facts by the independent solver, checkers that fail
on corrupted documents, depths, and one-line errors with no output for bad haystacks."""

import json
import random
import re
from pathlib import Path

import pytest

from elastic_cli.data import babi, babi_solver, haystack
from elastic_cli.data.loader import PreparedData
from elastic_cli.data.tasks import check_answer, TaskOptions, prepare_task
from elastic_cli.data.tokenizer import Tokenizer
from tests.helpers.cli_run import run_cli

ROOT = Path(__file__).resolve().parents[2]
BOOKS = str(ROOT / "tokenizers" / "books-8k.model")


def split_doc(tok, data, i):
    """(text before the first answer span, answer text, tokens) of document i."""
    t = data.tokens(i)
    spans = data.answers(i)
    return tok.decode(t[1:spans[0][0]].tolist()), tok.decode(t[spans[0][0]:spans[-1][1]].tolist()), t


@pytest.mark.parametrize("qa", babi.QA)
def test_solver_recomputes_every_generated_story(qa):
    """The forward world simulation and the backward solver agree on 400 stories per task."""
    answers = set()
    for k in range(400):
        s = babi.story(qa, random.Random(f"{qa}-{k}"))
        text = "".join(" " + f for f in s.facts) + f"\nQuestion: {s.question} Answer:"
        assert babi_solver.solve(text) == s.answer, (qa, k, text)
        assert len(s.supporting) == {1: 1, 2: 2, 3: 3, 4: 1, 5: 1}[qa]
        if qa in (1, 4, 5):  # without its one supporting fact the question has another answer, or none
            rest = "".join(" " + f for n, f in enumerate(s.facts) if n != s.supporting[0])
            assert babi_solver.solve(rest + f"\nQuestion: {s.question} Answer:") != s.answer
        answers.add(s.answer)
    assert len(answers) >= 3


@pytest.mark.parametrize("qa", babi.QA)
def test_babilong_on_unseen_books_every_answer_recomputed(tmp_path, unseen_books, qa):
    tok = Tokenizer.load(BOOKS)
    prepare_task("babilong", [300, 500], 16, BOOKS, str(tmp_path / "b"), TaskOptions(seed=3, options={"haystack": [str(unseen_books)], "qa": qa}))
    data = PreparedData(tmp_path / "b")
    assert data.task["options"]["qa"] == qa and len(data) == 16
    answers = set()
    for i in range(len(data)):
        before, answer, t = split_doc(tok, data, i)
        doc = data.meta["docs"][i]
        [(a, b, source)] = data.answers(i)
        assert len(t) == (300, 500)[i % 2] and tok.decode(t[b:-1].tolist()) == "\n" * (len(t) - 1 - b)
        assert source == doc["supporting"][0] and all(0 < s < a for s in doc["supporting"])
        assert 0 <= doc["depth"] <= 1
        for s in doc["supporting"]:   # each supporting offset starts a fact sentence of the story
            assert babi_solver.facts(tok.decode(t[s:s + 16].tolist()))[0:1], (i, tok.decode(t[s:s + 16].tolist()))
        assert babi_solver.solve(before) == answer.strip(), (qa, i)
        assert check_answer("babilong", before, answer)
        assert before.count("Question:") == 1 and len(babi_solver.facts(before)) >= 2
        answers.add(answer)
    assert len(answers) > 1


def test_babilong_checker_fails_on_corrupted_documents(tmp_path, kjv_books):
    """Moving the asked actor elsewhere in its supporting fact changes the recomputed answer."""
    tok = Tokenizer.load(BOOKS)
    prepare_task("babilong", 400, 10, BOOKS, str(tmp_path / "b"), TaskOptions(options={"haystack": [str(kjv_books)], "qa": 1}))
    data = PreparedData(tmp_path / "b")
    for i in range(len(data)):
        before, answer, t = split_doc(tok, data, i)
        s = data.meta["docs"][i]["supporting"][0]
        fact = tok.decode(t[s:s + 16].tolist()).split(".")[0] + "."
        other = next(p for p in babi.PLACES if p != answer.strip())
        bad = before.replace(fact, re.sub(r"the [a-z]+\.$", f"the {other}.", fact))
        assert bad != before and not check_answer("babilong", bad, answer)
        assert check_answer("babilong", bad, " " + other)
        assert not check_answer("babilong", before, " " + other)


@pytest.mark.parametrize("task", ["niah-multikey", "niah-multivalue", "passkey"])
def test_needles_in_books(tmp_path, kjv_books, task):
    tok = Tokenizer.load(BOOKS)
    prepare_task(task, 400, 12, BOOKS, str(tmp_path / "n"), TaskOptions(seed=1, options={"haystack": [str(kjv_books)], **({} if task == "passkey" else {"needles": 3})}))
    data = PreparedData(tmp_path / "n")
    for i in range(len(data)):
        before, answer, t = split_doc(tok, data, i)
        spans, doc = data.answers(i), data.meta["docs"][i]
        assert len(t) == 400 and len(spans) == (3 if task == "niah-multivalue" else 1)
        assert [s for _, _, s in spans] == doc["supporting"]
        for a, b, s in spans:         # each value is written in the needle at its source
            assert tok.decode(t[a:b].tolist()).strip() in tok.decode(t[s:a].tolist()).split(".")[0]
        assert check_answer(task, before, answer)
        value = tok.decode(t[spans[0][0]:spans[0][1]].tolist()).strip()
        bad = before.replace(f"{value}.", f"{int(value) + 1}.", 1)
        assert bad != before and not check_answer(task, bad, answer), "the checker must be able to fail"


def test_depth_grid_and_range(tmp_path, kjv_books):
    prepare_task("babilong", [300, 600], 12, BOOKS, str(tmp_path / "g"), TaskOptions(options={"haystack": [str(kjv_books)], "depth": "0,0.5,1", "qa": 1}))
    docs = json.loads((tmp_path / "g" / "meta.json").read_text())["docs"]
    for i, d in enumerate(docs):
        assert d["tokens"] == (300, 600)[i % 2]
        assert abs(d["depth"] - (0, 0.5, 1)[(i // 2) % 3]) < 0.2, (i, d["depth"])
    assert [d["depth"] for d in docs[:2]] == [0.0, 0.0] and [d["depth"] for d in docs[4:6]] == [1.0, 1.0]
    prepare_task("niah-multivalue", 600, 10, BOOKS, str(tmp_path / "r"), TaskOptions(options={"haystack": [str(kjv_books)], "depth": "0.25:0.5", "needles": 2}))
    for d in json.loads((tmp_path / "r" / "meta.json").read_text())["docs"]:
        assert 0.15 <= d["depth"] <= 0.6


def test_place_picks_the_nearest_sentence_boundary():
    passage = [[0] * 10, [0] * 30, [0] * 60]                 # boundaries at shares 0, .1, .4, 1
    assert haystack.place(passage, [0.0, 0.12, 0.3, 0.7, 0.71, 1.0]) == [0, 1, 2, 2, 3, 3]


def test_sentences_respect_boundaries_and_reserved_words():
    text = "It was late.  The rain fell on\nthe roof! Mary went to the garden. Is it so? Yes.\n\nThe hall is north of the den."
    assert haystack.sentences(text) == ["It was late.", "The rain fell on the roof!", "Is it so?"]


def test_deterministic_and_up_to_date(tmp_path, kjv_books, capsys):
    opts = {"haystack": [str(kjv_books)], "qa": 2}
    prepare_task("babilong", 300, 6, BOOKS, str(tmp_path / "a"), TaskOptions(seed=7, options=opts))
    prepare_task("babilong", 300, 6, BOOKS, str(tmp_path / "b"), TaskOptions(seed=7, options=opts))
    for name in ("meta.json", "tokens-00000.bin"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b or name == "meta.json" and json.loads(a)["docs"] == json.loads(b)["docs"]
    capsys.readouterr()
    prepare_task("babilong", 300, 6, BOOKS, str(tmp_path / "a"), TaskOptions(seed=7, options=opts))
    out = capsys.readouterr()
    assert "up to date" in out.err + out.out


def test_prepared_directory_as_haystack(tmp_path, kjv_books):
    from elastic_cli.data.prepare import PrepareOptions, prepare

    prepare([str(kjv_books)], BOOKS, str(tmp_path / "books"), PrepareOptions(workers=1))
    tok = Tokenizer.load(BOOKS)
    prepare_task("babilong", 300, 6, BOOKS, str(tmp_path / "b"), TaskOptions(options={"haystack": [str(tmp_path / "books")]}))
    data = PreparedData(tmp_path / "b")
    for i in range(len(data)):
        before, answer, _ = split_doc(tok, data, i)
        assert check_answer("babilong", before, answer)




def test_bad_haystack_one_line_error_and_no_output(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.dat").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "numbers.txt").write_text("1 2 3\n4 5 6\n" * 200)
    cases = {"missing": (tmp_path / "nope", "no such file"), "empty folder": (tmp_path / "empty", "no text files"),
             "empty file": (tmp_path / "empty.txt", "empty file"), "binary": (tmp_path / "bin", "no text files"),
             "binary file": (tmp_path / "bin" / "x.dat", "binary"),
             "no prose": (tmp_path / "numbers.txt", "no usable sentences")}
    for name, (hay, message) in cases.items():
        out = tmp_path / "out"
        code, stdout, err = run_cli(capsys, "prepare", "--task", "babilong", "--haystack", hay, "--length", 300,
                                    "--count", 4, "--tokenizer", BOOKS, "--out", out)
        assert code == 3, (name, err)
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert not out.exists() and not list(tmp_path.glob("out.*")), name


def test_small_haystack_and_usage_errors(tmp_path, capsys, kjv_books):
    (tmp_path / "short.txt").write_text("The cat sat on the mat. The dog lay by the door. It rained all day.")
    code, _, err = run_cli(capsys, "prepare", "--task", "babilong", "--haystack", tmp_path / "short.txt",
                           "--length", 2000, "--count", 3, "--tokenizer", BOOKS, "--out", tmp_path / "o")
    assert code == 3 and "too few" in err and not (tmp_path / "o").exists()
    for args, message in [(["--task", "babilong"], "needs --haystack"),
                          (["--task", "babilong", "--haystack", kjv_books, "--depth", "0.5:0.2"], "--depth"),
                          (["--task", "babilong", "--haystack", kjv_books, "--pairs", 3], "only apply to --task mqar"),
                          (["--task", "recall", "--haystack", kjv_books], "only apply to --task"),
                          (["--task", "mqar", "--depth", "0:1"], "only apply to --task"),
                          (["--task", "niah-multikey", "--haystack", kjv_books, "--qa", 2], "--qa only applies"),
                          (["--task", "babilong", "--haystack", kjv_books, "--needles", 2], "--needles only applies"),
                          (["--task", "babilong", "--haystack", kjv_books, "--length", "300,x"], "--length")]:
        if "--length" not in args:
            args = [*args, "--length", 300]
        code, _, err = run_cli(capsys, "prepare", *args, "--count", 3, "--tokenizer", BOOKS, "--out", tmp_path / "u")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "u").exists()


@pytest.mark.parametrize("task", ["babilong", "niah-multivalue"])
def test_lm_eval_answer_rows_are_right_answers(tmp_path, kjv_books, task):
    """`elastic lm-eval --data DIR --tasks elastic_answer` rows: one per answer span, context + answer
    checkable (multi-value: the earlier values are in the context, teacher-forced)."""
    from elastic_cli.interop.lm_eval_tasks import task_rows

    tok = Tokenizer.load(BOOKS)
    prepare_task(task, 400, 10, BOOKS, str(tmp_path / "d"), TaskOptions(val_frac=0.5, test_frac=0.0, options={"haystack": [str(kjv_books)], "needles": 3} if task == "niah-multivalue"
                 else {"haystack": [str(kjv_books)], "qa": 2}))
    data = PreparedData(tmp_path / "d")
    docs, rows, _ = task_rows(data, "val", tok)
    per_doc = 3 if task == "niah-multivalue" else 1
    assert len(rows) == per_doc * len(docs) > 0
    for k in range(0, len(rows), per_doc):
        group = rows[k:k + per_doc]
        before = group[0]["context"]
        answer = (group[-1]["context"] + group[-1]["answer"])[len(before):]       # " v1, v2, v3"
        assert all(r["context"].startswith(before) for r in group) and check_answer(task, before, answer)


def test_book_sentences_that_read_as_facts_are_left_out():
    text = "Eve took the apple there. Adam went to the garden. The serpent was more subtil than any beast."
    assert haystack.sentences(text) == ["The serpent was more subtil than any beast."]


@pytest.mark.parametrize("task", ["babilong", "niah-multikey", "niah-multivalue", "passkey"])
def test_question_position_does_not_tell_the_answer(tmp_path, kjv_books, task):
    """Answers have 1-5 tokens; the question must end at the same offset in every document of a
    length (a memoryless model once read the answer's length off the question's place in its segment)."""
    prepare_task(task, [300, 333], 40, BOOKS, str(tmp_path / "q"), TaskOptions(options={"haystack": [str(kjv_books)]}))
    data = PreparedData(tmp_path / "q")
    starts = {(int(len(data.tokens(i))), data.answers(i)[0][0]) for i in range(len(data))}
    assert len(starts) == 2 and {n for n, _ in starts} == {300, 333}, starts
    if task == "babilong":
        tok = Tokenizer.load(BOOKS)
        assert len({tok.decode(data.tokens(i)[slice(*data.answers(i)[0][:2])].tolist()) for i in range(40)}) > 3
