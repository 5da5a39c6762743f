"""`elastic prepare`: round trip, meta, split, idempotence, atomicity, and every bad input through the CLI."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from elastic_cli.data import sources, store
from elastic_cli.data.loader import PreparedData
from elastic_cli.data.tokenizer import FILE_SEP, Tokenizer
from tests.helpers.cli_run import run_cli

ROOT = Path(__file__).resolve().parents[2]
CODE = str(ROOT / "tokenizers" / "code-8k.model")
BOOKS = str(ROOT / "tokenizers" / "books-8k.model")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(monkeypatch, capsys, *args):
    """`elastic ARGS` in this process (as the console script runs it): (exit code, stderr)."""
    code, _, err = run_cli(capsys, *args)
    return code, err


def make_corpus(root: Path) -> Path:
    books = root / "books"
    books.mkdir(parents=True)
    (books / "a.txt").write_text("In the beginning.\n\n  Indented  twice.\r\nTabs\there 12345 ünï ✓\n")
    (books / "b.txt").write_text("Second book, one line without newline")
    (books / "sub").mkdir()
    (books / "sub" / "c.md").write_text("# Title\n\nSome *markdown*.\n" * 20)
    (books / "img.bin").write_bytes(b"\x89PNG\x00\x00\x01binary")
    (books / "bad.txt").write_bytes(b"caf\xe9 latin-1 bytes\n")
    return books


def make_repos(root: Path) -> Path:
    repos = root / "repos"
    for name, files in {"alpha": {"z.py": "def z():\n    return 1\n", "pkg/a.py": "import os\n\n\nclass A:\n\tpass\n",
                                  "README": "alpha\n", ".git/HEAD": "ref\n", "__pycache__/a.pyc": "x",
                                  "build/out.txt": "skip me\n", "logo.png": "\x00\x01"},
                        "beta": {"main.c": "int main(void) { return 0; }\n"}}.items():
        for rel, text in files.items():
            p = repos / name / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    return repos


def decoded(data: PreparedData, tok: Tokenizer) -> dict[str, str]:
    out = {}
    for i in range(len(data)):
        t = data.tokens(i)
        assert t[0] == tok.bos_id and t[-1] == tok.eos_id
        out[data.name(i)] = tok.decode(t[1:-1])
    return out


def test_folder_gz_round_trip_and_meta(tmp_path, monkeypatch, capsys):
    books = make_corpus(tmp_path)
    gz = tmp_path / "extra.txt.gz"
    gz.write_bytes(gzip.compress("Compressed text.\n".encode()))
    code, err = cli(monkeypatch, capsys, "prepare", books, gz, "--tokenizer", BOOKS, "--out", tmp_path / "out",
                    "--workers", "2", "--val-frac", "0.3", "--test-frac", "0.3")
    assert code == 0, err
    assert "skipped 1 binary file" in err and f"{books / 'bad.txt'}: replaced 1 undecodable byte (not utf-8)" in err
    tok = Tokenizer.load(BOOKS)
    data = PreparedData(tmp_path / "out")
    text = decoded(data, tok)
    expect = {"books/a.txt": (books / "a.txt").read_bytes().decode(), "books/b.txt": (books / "b.txt").read_text(),
              "books/sub/c.md": (books / "sub" / "c.md").read_text(), "books/bad.txt": "caf\ufffd latin-1 bytes\n",
              "extra.txt.gz": "Compressed text.\n"}
    assert text == expect
    meta = data.meta
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 8000 and meta["tokenizer_sha256"] == tok.sha256
    assert meta["n_tokens"] == sum(d["tokens"] for d in meta["docs"]) == os.path.getsize(tmp_path / "out" / "tokens-00000.bin") // 2
    for d in meta["docs"]:
        assert d["bytes"] == len(expect[d["name"]].encode("utf-8"))
        assert d["split"] == store.split_of(d["name"], 0.3, 0.3)
    assert {s["path"] for s in meta["sources"]} >= {str(books / "a.txt"), str(gz)}
    assert np.array_equal(np.load(tmp_path / "out" / "docs.npy")[:, 1], [d["tokens"] for d in meta["docs"]])


def test_one_encoding_policy_latin1_utf16_and_strict(tmp_path, monkeypatch, capsys):
    """--encoding reads a Latin-1 book as Latin-1; a UTF-16 file with a byte-order mark is text, not
    binary; --strict refuses undecodable bytes (exit 3, the file and offset named, nothing written);
    the default replaces them and says how many, per file (as `generate --file` does: textio.py)."""
    books = tmp_path / "books"
    books.mkdir()
    (books / "latin.txt").write_bytes("Caf\u00e9 cr\u00e8me, na\u00efve.\n".encode("latin-1") * 3)
    (books / "wide.txt").write_bytes("Wide text \u2713 here.\n".encode("utf-16"))  # a BOM, then NUL-rich bytes
    (books / "plain.txt").write_text("Plain.\n")  # three documents: no tail is held out of one
    tok = Tokenizer.load(BOOKS)
    code, err = cli(monkeypatch, capsys, "prepare", books, "--tokenizer", BOOKS, "--out", tmp_path / "u")
    assert code == 0, err
    assert f"{books / 'latin.txt'}: replaced 9 undecodable bytes (not utf-8)" in err and "binary" not in err
    data = PreparedData(tmp_path / "u")
    assert decoded(data, tok) == {"books/latin.txt": "Caf\ufffd cr\ufffdme, na\ufffdve.\n" * 3,
                                  "books/wide.txt": "Wide text \u2713 here.\n", "books/plain.txt": "Plain.\n"}
    assert data.meta["stats"]["replaced_bytes"] == 9 and "encoding" not in data.meta["settings"]
    code, err = cli(monkeypatch, capsys, "prepare", books, "--tokenizer", BOOKS, "--out", tmp_path / "l",
                    "--encoding", "latin-1")
    assert code == 0 and "undecodable" not in err, err
    data = PreparedData(tmp_path / "l")
    assert decoded(data, tok)["books/latin.txt"] == "Caf\u00e9 cr\u00e8me, na\u00efve.\n" * 3
    assert data.meta["settings"]["encoding"] == "iso8859-1"  # another encoding: another fingerprint
    code, err = cli(monkeypatch, capsys, "prepare", books, "--tokenizer", BOOKS, "--out", tmp_path / "s", "--strict")
    assert code == 3 and f"{books / 'latin.txt'} is not utf-8 text (undecodable byte at offset 3)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()
    code, err = cli(monkeypatch, capsys, "prepare", books, "--tokenizer", BOOKS, "--out", tmp_path / "x",
                    "--encoding", "no-such-codec")
    assert code == 2 and "--encoding no-such-codec: unknown encoding" in err


def test_split_is_deterministic_and_follows_fractions():
    names = [f"doc-{i}" for i in range(4000)]
    splits = [store.split_of(n, 0.1, 0.2) for n in names]
    assert splits == [store.split_of(n, 0.1, 0.2) for n in names]
    assert abs(splits.count("val") / 4000 - 0.1) < 0.02 and abs(splits.count("test") / 4000 - 0.2) < 0.025
    assert all(store.split_of(n, 0.0, 0.0) == "train" for n in names[:100])


def test_repos_documents_have_sorted_files_behind_headers(tmp_path, monkeypatch, capsys):
    repos = make_repos(tmp_path)
    code, err = cli(monkeypatch, capsys, "prepare", repos, "--repos", "--tokenizer", CODE, "--out", tmp_path / "out",
                    "--workers", "1", "--val-frac", "0", "--test-frac", "0")  # two documents: no tails held out
    assert code == 0, err
    text = decoded(PreparedData(tmp_path / "out"), Tokenizer.load(CODE))
    assert text == {
        "repos/alpha": f"{FILE_SEP}README\nalpha\n{FILE_SEP}pkg/a.py\nimport os\n\n\nclass A:\n\tpass\n"
                       f"{FILE_SEP}z.py\ndef z():\n    return 1\n",
        "repos/beta": f"{FILE_SEP}main.c\nint main(void) {{ return 0; }}\n"}
    tok = Tokenizer.load(CODE)
    assert list(PreparedData(tmp_path / "out").tokens(1)[:2]) == [tok.bos_id, tok.file_sep_id]


def test_rerun_is_a_no_op_and_changed_input_needs_force(tmp_path, monkeypatch, capsys):
    books = make_corpus(tmp_path)
    args = ["prepare", books, "--tokenizer", BOOKS, "--out", tmp_path / "out", "--workers", "1"]
    assert cli(monkeypatch, capsys, *args)[0] == 0
    before = (tmp_path / "out" / "meta.json").stat().st_mtime_ns
    code, err = cli(monkeypatch, capsys, *args)
    assert code == 0 and "nothing to do" in err
    assert (tmp_path / "out" / "meta.json").stat().st_mtime_ns == before
    (books / "b.txt").write_text("Changed.")
    code, err = cli(monkeypatch, capsys, *args)
    assert code == 3 and "--force" in err and str(tmp_path / "out") in err
    code, err = cli(monkeypatch, capsys, *args, "--min-tokens", "2")
    assert code == 3
    assert cli(monkeypatch, capsys, *args, "--force")[0] == 0
    assert "Changed." in decoded(PreparedData(tmp_path / "out"), Tokenizer.load(BOOKS)).values()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == ["out"]


@pytest.mark.slow
def test_kill_9_never_leaves_a_complete_looking_directory(tmp_path):
    corpus = tmp_path / "big"
    corpus.mkdir()
    line = "".join(chr(0x41 + i % 26) + ("\n" if i % 61 == 60 else " ") for i in range(4000))
    for i in range(40):
        (corpus / f"{i:03d}.txt").write_text(line * 10)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "elastic_cli", "prepare", str(corpus), "--tokenizer", BOOKS, "--out", str(out),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not list(tmp_path.glob("out.tmp-*")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():                      # the rename had already happened: then it is complete
        PreparedData(out)
    else:
        with pytest.raises(Exception, match="no meta.json"):
            PreparedData(out)
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(PreparedData(out)) == 40 and not list(tmp_path.glob("out.tmp-*"))


def test_bad_inputs_exit_with_one_line(tmp_path, monkeypatch, capsys):
    books = make_corpus(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "x.bin").write_bytes(b"\x00\x01")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "ok.txt").write_text("fine\n")
    os.symlink(tmp_path / "loop", tmp_path / "loop" / "back")
    os.symlink("self", tmp_path / "self")
    (tmp_path / "fake.model").write_text("not a model")
    (tmp_path / "short.txt").write_text("hi")
    out = tmp_path / "out"
    cases = [  # args, exit code, words in the message
        ([tmp_path / "missing.txt", "--tokenizer", BOOKS], 3, ["no such file", "missing.txt"]),
        ([tmp_path / "empty.txt", "--tokenizer", BOOKS], 3, ["empty file", "empty.txt"]),
        ([tmp_path / "nothing", "--tokenizer", BOOKS], 3, ["no text files in", "nothing"]),
        ([tmp_path / "nothing" / "x.bin", "--tokenizer", BOOKS], 3, ["no text documents", "1 binary", "x.bin"]),
        ([tmp_path / "loop", "--tokenizer", BOOKS], 3, ["symlink loop", "back"]),
        ([tmp_path / "self", "--tokenizer", BOOKS], 3, ["symlink loop", "self"]),
        ([books, "--tokenizer", tmp_path / "nope.model"], 3, ["tokenizer not found", "nope.model"]),
        ([books, "--tokenizer", tmp_path / "fake.model"], 3, ["not a sentencepiece model", "fake.model"]),
        ([tmp_path / "short.txt", "--tokenizer", BOOKS, "--min-tokens", "5"], 3, ["shorter than --min-tokens 5", "1 dropped"]),
    ]
    for args, want, words in cases:
        code, err = cli(monkeypatch, capsys, "prepare", *args, "--out", out, "--workers", "1")
        lines = err.strip().splitlines()
        assert code == want and lines[-1].startswith("error: "), (args, err)
        assert all(w in lines[-1] for w in words), (words, err)
        assert "Traceback" not in err and not out.exists() and not list(tmp_path.glob("out.tmp-*"))
    code, err = cli(monkeypatch, capsys, "prepare", books, "--tokenizer", BOOKS, "--out", books / "inside")
    assert code == 2 and "inside the source" in err and not (books / "inside").exists()


def test_dtype_uint16_too_small_for_vocab(tmp_path, monkeypatch, capsys):
    with pytest.raises(Exception, match="uint16 cannot hold a vocabulary of 70000"):
        store.choose_dtype(70000, "uint16")
    assert store.choose_dtype(70000, "auto") == "uint32" and store.choose_dtype(65536, "auto") == "uint16"

    class Big:
        vocab_size, sha256, path = 70000, "0" * 64, Path(BOOKS)
    monkeypatch.setattr("elastic_cli.data.tokenizer.Tokenizer.load", classmethod(lambda cls, p: Big()))
    make_corpus(tmp_path)
    code, err = cli(monkeypatch, capsys, "prepare", tmp_path / "books", "--tokenizer", BOOKS, "--out", tmp_path / "o",
                    "--dtype", "uint16")
    assert code == 2 and "uint16 cannot hold a vocabulary of 70000" in err and not (tmp_path / "o").exists()


def test_unreadable_file_is_named(tmp_path, monkeypatch, capsys):
    books = make_corpus(tmp_path)
    real_open = open

    def guarded(path, *a, **k):
        if str(path).endswith("b.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)
    monkeypatch.setattr("builtins.open", guarded)
    code, err = cli(monkeypatch, capsys, "prepare", books, "--tokenizer", BOOKS, "--out", tmp_path / "out", "--workers", "1")
    assert code == 3 and f"cannot read {books / 'b.txt'}: permission denied" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "elastic_cli", "prepare", str(tmp_path / "nope"), "--tokenizer", BOOKS,
                           "--out", str(tmp_path / "o")], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 3 and proc.stderr.strip() == f"error: no such file or directory: {tmp_path / 'nope'}"


def test_stdlib_corpus_lists_packages_and_skips_tests():
    col = sources.collect([], corpus="python-stdlib")
    names = {d.name for d in col.docs}
    assert {"python-stdlib/json", "python-stdlib/os.py", "python-stdlib/asyncio"} <= names
    assert not any(n.endswith(("/test", "/site-packages")) for n in names)
    assert not any("/test/" in p or "site-packages" in p or "__pycache__" in p for d in col.docs for p in d.paths)
    json_doc = next(d for d in col.docs if d.name == "python-stdlib/json")
    assert list(json_doc.headers) == sorted(json_doc.headers) and json_doc.headers[0] == "json/__init__.py"
    assert json.dumps(col.files[0])  # sources are JSON-serialisable
