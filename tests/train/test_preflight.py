"""`elastic train` fails before step 1 on what would stop it later, and `--dry-run` rejects exactly
what the real run rejects (same message, same exit code); one run per run directory (lock)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from elastic_cli.runs import lock as runlock
from elastic_cli.cli import main
from tests.helpers import tiny_run


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["elastic", *map(str, args)])
    try:
        main()
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    raise AssertionError("main() must exit")


def both(monkeypatch, capsys, data, run_dir, *extra) -> tuple[int, str]:
    """The real run and --dry-run: same code, same one-line error; the real run never reaches step 1."""
    keys = [e for e in extra if isinstance(e, str) and "=" in e]
    flags = [e for e in extra if e not in keys]
    args = ["train", "recipes/tiny.yaml", *tiny_run.overrides(data, run_dir, "train.eval_every=2", *keys), *flags]
    real_code, real_err = cli(monkeypatch, capsys, *args)
    dry_code, dry_err = cli(monkeypatch, capsys, *args, "--dry-run")
    assert (dry_code, dry_err) == (real_code, real_err)
    assert real_err.startswith("error: ") and real_err.count("\n") == 1 and "step 1/" not in real_err
    assert not (Path(run_dir) / "metrics.jsonl").exists()
    return real_code, real_err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_only_machine_fails_but_its_dry_run_plans_it(tiny_corpus, tmp_path, monkeypatch, capsys):
    """The real run needs the GPUs; --dry-run on a login node without any plans the job: every other
    check, the device row saying none is visible here, and the launch command on one line."""
    args = ["train", "recipes/tiny.yaml", *tiny_run.overrides(tiny_corpus, tmp_path / "run", "run.device=cuda")]
    code, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and err == "error: run.device=cuda but no CUDA device is visible\n"
    monkeypatch.setattr(sys, "argv", ["elastic", *map(str, args), "--gpus", "2", "--dry-run"])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    assert e.value.code == 0, err
    assert "cuda x 2 per node (none visible on this machine" in out
    (launch,) = [line for line in out.splitlines() if line.startswith("launch: ")]
    assert "-m elastic_cli.train.torchrun --nproc-per-node 2 --nnodes 1" in launch
    assert launch.endswith("--resume never") and "-m elastic_cli train" in launch
    assert not (tmp_path / "run").exists()
    code, err = cli(monkeypatch, capsys, *args, "--gpus", "2", "--dry-run", "train.micro_batch=3")
    assert code == 2 and "train.micro_batch=3" in err  # the other checks still run


def test_non_empty_run_dir_without_overwrite(tiny_corpus, tmp_path, monkeypatch, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    code, err = both(monkeypatch, capsys, tiny_corpus, tmp_path / "run")
    assert code == 2 and "is not empty: pass --resume auto" in err


def test_missing_resume_path(tiny_corpus, tmp_path, monkeypatch, capsys):
    code, err = both(monkeypatch, capsys, tiny_corpus, tmp_path / "run", "--resume", tmp_path / "gone")
    assert code == 3 and f"{tmp_path / 'gone'} does not exist" in err


def test_empty_validation_split_with_eval_every(tiny_corpus, tmp_path, monkeypatch, capsys):
    code, err = both(monkeypatch, capsys, tiny_corpus, tmp_path / "run", "data.val_split=test")
    assert code == 3 and "split 'test'" in err and "train.eval_every=2" in err and "--val-frac" in err
    assert not (tmp_path / "run").exists()
    args = ["train", "recipes/tiny.yaml", *tiny_run.overrides(tiny_corpus, tmp_path / "ok", "data.val_split=test",
                                                             "train.eval_every=0", "train.steps=2"), "--dry-run"]
    assert cli(monkeypatch, capsys, *args)[0] == 0  # no evaluation asked: fine


def test_empty_training_split(tiny_corpus, tmp_path, monkeypatch, capsys):
    code, err = both(monkeypatch, capsys, tiny_corpus, tmp_path / "run", "data.train_split=test", "train.eval_every=0")
    assert code == 3 and "split 'test'" in err and "has no documents" in err


def test_run_dir_that_cannot_be_written(tiny_corpus, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a directory")
    code, err = both(monkeypatch, capsys, tiny_corpus, tmp_path / "file" / "run")
    assert code == 2 and "is not a writable directory" in err


def test_write_only_parameters_that_cannot_learn(tiny_corpus, tmp_path, monkeypatch, capsys):
    code, err = both(monkeypatch, capsys, tiny_corpus, tmp_path / "run", "memory.kind=armt", "train.bptt_segments=1")
    assert code == 2 and "memory.kind=armt" in err and "at least 2" in err


def test_second_train_on_the_same_run_dir_refuses_at_once(tiny_corpus, tmp_path, monkeypatch, capsys):
    lock = runlock.RunLock(tmp_path / "run").acquire()  # a running `elastic train`
    try:
        t0 = time.monotonic()
        code, err = both(monkeypatch, capsys, tiny_corpus, tmp_path / "run", "--resume", "auto")
        assert code == 2 and "is in use by pid" in err and time.monotonic() - t0 < 30
    finally:
        lock.release()
    args = ["train", "recipes/tiny.yaml", *tiny_run.overrides(tiny_corpus, tmp_path / "run", "train.steps=2")]
    assert cli(monkeypatch, capsys, *args)[0] == 0  # the lock file alone is not "a non-empty run dir"


def test_a_killed_run_leaves_no_stuck_lock(tmp_path):
    code = f"from elastic_cli.runs import lock; lock.RunLock({str(tmp_path / 'run')!r}).acquire(); print('held', flush=True); input()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=tiny_run.env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="in use"):
        runlock.RunLock(tmp_path / "run").acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    runlock.RunLock(tmp_path / "run").acquire().release()  # the kernel released it with the process
