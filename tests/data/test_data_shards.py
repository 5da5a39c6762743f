"""`prepare --shard I/N` + `prepare --merge`: the merged directory is byte-identical to a one-process
prepare (tokens, index, splits, meta.json); incomplete, foreign or corrupted parts are refused; the
SLURM array script does the same."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from elastic_cli.data.loader import PreparedData
from elastic_cli.data.merge import merge
from elastic_cli.data.prepare import part_range, PrepareOptions, prepare
from elastic_cli.errors import DataError
from tests.helpers.cli_run import run_cli

ROOT = Path(__file__).resolve().parents[2]
CODE = str(ROOT / "tokenizers" / "code-8k.model")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FILES = ("meta.json", "docs.npy", "tokens-00000.bin")


def checksums(path: Path) -> dict[str, str]:
    return {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in FILES}


def cli(monkeypatch, capsys, *args):
    """`elastic ARGS` in this process (as the console script runs it): (exit code, stderr)."""
    code, _, err = run_cli(capsys, *args)
    return code, err


def corpus(root: Path, n: int) -> Path:
    """n modules of different sizes (the longest 40 kB), one of them too short for --min-tokens 20."""
    src = root / "src"
    src.mkdir()
    for i in range(n):
        body = "".join(f"def f{i}_{j}(x):\n    return x * {j}  # ünï ✓\n" for j in range(1 + (i * 37) % 800))
        (src / f"m{i:02d}.py").write_text(body if i != 3 else "x = 1\n")
    return src


def test_part_ranges_are_consecutive_balanced_and_cover_every_document():
    sizes = [5, 1, 1, 1, 100, 1, 1, 30, 2, 2]
    for n in (1, 2, 3, 4, 7, 12):
        parts = [part_range(sizes, i, n) for i in range(n)]
        assert [j for r in parts for j in r] == list(range(len(sizes)))
    assert [list(part_range(sizes, i, 3)) for i in range(3)] == [[0, 1, 2, 3], [4], [5, 6, 7, 8, 9]]
    assert list(part_range([1, 1, 1, 1], 1, 2)) == [2, 3]
    assert [list(part_range([10], i, 3)) for i in range(3)] == [[], [0], []]


@pytest.mark.parametrize("n_docs, extra", [(12, ["--min-tokens", "20"]), (2, []), (12, ["--val-frac", "0.3"])])
def test_three_parts_merged_equal_one_process(tmp_path, monkeypatch, capsys, n_docs, extra):
    """12 documents (holdout moves documents, one dropped as too short), 2 documents (the longest one's
    tail is held out, at merge time), larger fractions: checksums of every file equal."""
    src = corpus(tmp_path, n_docs)
    common = [src, "--tokenizer", CODE, "--workers", "1", *extra]
    assert cli(monkeypatch, capsys, "prepare", *common, "--out", tmp_path / "one")[0] == 0
    for i in range(3):
        code, err = cli(monkeypatch, capsys, "prepare", *common, "--shard", f"{i}/3", "--out", tmp_path / f"p{i}")
        assert code == 0 and f"part {i}/3" in err, err
    parts = [tmp_path / f"p{i}" for i in (2, 0, 1)]  # any order
    code, err = cli(monkeypatch, capsys, "prepare", "--merge", *parts, "--out", tmp_path / "merged")
    assert code == 0 and "merged 3 parts" in err, err
    assert checksums(tmp_path / "merged") == checksums(tmp_path / "one")
    data = PreparedData(tmp_path / "merged")
    assert sum(len(data.documents(s)) for s in ("train", "val", "test")) == len(data) >= 3
    code, err = cli(monkeypatch, capsys, "prepare", "--merge", *parts, "--out", tmp_path / "merged")
    assert code == 0 and "nothing to do" in err
    code, err = cli(monkeypatch, capsys, "prepare", *common, "--shard", "1/3", "--out", tmp_path / "p1")
    assert code == 0 and "nothing to do" in err  # a finished part is not redone


@pytest.mark.slow
def test_workers_and_shards_change_nothing(tmp_path):
    src = corpus(tmp_path, 6)
    prepare([str(src)], CODE, str(tmp_path / "w1"), PrepareOptions(workers=1))
    prepare([str(src)], CODE, str(tmp_path / "w2"), PrepareOptions(workers=2))
    for i in range(2):
        prepare([str(src)], CODE, str(tmp_path / f"q{i}"), PrepareOptions(workers=2, shard=(i, 2)))
    merge([str(tmp_path / "q0"), str(tmp_path / "q1")], str(tmp_path / "m"))
    assert checksums(tmp_path / "w1") == checksums(tmp_path / "w2") == checksums(tmp_path / "m")


def test_bad_parts_are_refused_before_out_is_touched(tmp_path, monkeypatch, capsys):
    src = corpus(tmp_path, 8)
    for i in range(3):
        prepare([str(src)], CODE, str(tmp_path / f"p{i}"), PrepareOptions(workers=1, shard=(i, 3)))
    prepare([str(src)], CODE, str(tmp_path / "other"), PrepareOptions(workers=1, shard=(1, 2)))
    prepare([str(src)], CODE, str(tmp_path / "full"), PrepareOptions(workers=1))
    (tmp_path / "unfinished").mkdir()
    shutil.copytree(tmp_path / "p2", tmp_path / "bad")
    blob = bytearray((tmp_path / "bad" / "tokens-00000.bin").read_bytes())
    blob[10] ^= 1
    (tmp_path / "bad" / "tokens-00000.bin").write_bytes(bytes(blob))
    p = [tmp_path / f"p{i}" for i in range(3)]
    capsys.readouterr()
    cases = [([p[0], p[2]], "part(s) 1/3 missing"), ([p[0], p[1], p[1], p[2]], "part(s) 1/3 given twice"),
             ([p[0], p[1], tmp_path / "other"], "other sources, settings or --shard N"),
             ([p[0], p[1], tmp_path / "full"], "not a part of a sharded prepare"),
             ([p[0], p[1], tmp_path / "unfinished"], "not a finished part (no meta.json)"),
             ([p[0], p[1], tmp_path / "bad"], "does not match its sha256")]
    for parts, words in cases:
        code, err = cli(monkeypatch, capsys, "prepare", "--merge", *parts, "--out", tmp_path / "out")
        assert code == 3 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.*"))
    for args, words in [(["--shard", "3/3"], "0 <= I < N"), (["--shard", "x"], "I/N"),
                        (["--merge", p[0], "--corpus", "python-stdlib"], "--merge takes only")]:
        code, err = cli(monkeypatch, capsys, "prepare", *args, "--tokenizer", CODE, "--out", tmp_path / "out")
        assert code == 2 and words in err, err
    with pytest.raises(DataError, match=r"part 0/3 of a sharded prepare: join the parts"):
        PreparedData(p[0])


@pytest.mark.slow
def test_slurm_array_script_prepares_parts_and_merges(tmp_path):
    """scripts/slurm/prepare.sbatch run as tasks 0..2 of an array job (SLURM's variables set by hand,
    `elastic` through python -m), then in merge mode: the same files as one process."""
    src = corpus(tmp_path, 7)
    script = ROOT / "scripts" / "slurm" / "prepare.sbatch"
    env = {**ENV, "ELASTIC": f"{sys.executable} -m elastic_cli", "SLURM_ARRAY_TASK_COUNT": "3"}
    args = ["bash", str(script), str(tmp_path / "data"), str(src), "--tokenizer", CODE, "--workers", "1"]
    for i in range(3):
        done = subprocess.run(args, env={**env, "SLURM_ARRAY_TASK_ID": str(i)}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    done = subprocess.run(["bash", str(script), "--merge", str(tmp_path / "data"), "3"], env=ENV | {"ELASTIC": env["ELASTIC"]},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    prepare([str(src)], CODE, str(tmp_path / "one"), PrepareOptions(workers=1))
    assert checksums(tmp_path / "data") == checksums(tmp_path / "one")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("data")) == ["data", "data.parts"]
