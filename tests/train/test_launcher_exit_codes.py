"""`elastic train --gpus 2` (torchrun, 2 gloo processes) exits with the code the workers meant:
0, 75 (SIGTERM: slurm requeues on it), 130 (Ctrl-C), 2, 3, 4 and 1, without torchrun's traceback.
Each launch costs ~15 s on 2 cores: by default 75 and 3 run (0 is test_distributed's); all of them
with ELASTIC_FULL_FAULTS=1."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elastic_cli.train import distributed
from tests.helpers import tiny_run

FAULTS = tiny_run.FAULTS
full_only = pytest.mark.skipif(not tiny_run.FULL_FAULTS, reason="ELASTIC_FULL_FAULTS=1 runs every launcher exit path")


def start(data: Path, run_dir: Path, *extra: str, fault: str | None = None) -> subprocess.Popen:
    env = tiny_run.env()
    env["PYTHONPATH"] = f"{FAULTS}{os.pathsep}{env['PYTHONPATH']}"
    if fault:
        env["ELASTIC_TEST_FAULT"] = fault
    args = [sys.executable, "-m", "elastic_cli", "train", "recipes/tiny.yaml",
            *tiny_run.overrides(data, run_dir, "train.warmup=0", *extra), "--gpus", "2"]
    return subprocess.Popen(args, cwd=tiny_run.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,  # own process group: Ctrl-C goes to all of it
                            preexec_fn=tiny_run.as_from_a_terminal)


def wait_for_step(proc: subprocess.Popen, run_dir: Path) -> None:
    deadline = time.monotonic() + 90
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("fault, code, message", [
    pytest.param(None, 0, None, marks=full_only), pytest.param("usage", 2, "error: injected usage error", marks=full_only),
    ("data", 3, "error: injected data error"), pytest.param("bug", 1, "RuntimeError: injected bug", marks=full_only)])
def test_worker_exit_code_is_the_launcher_exit_code(tiny_corpus, tmp_path, fault, code, message):
    proc = start(tiny_corpus, tmp_path / "run", "train.steps=2", fault=fault)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == code, err[-3000:]
    assert "ChildFailedError" not in err and "Root Cause" not in err and "FutureWarning" not in err
    if message:
        assert message in err
    else:
        assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "COMPLETE").is_file()


@pytest.mark.slow
@full_only
def test_nan_loss_in_workers_exits_4(tiny_corpus, tmp_path):
    proc = start(tiny_corpus, tmp_path / "run", "train.steps=20", "train.lr=1e12", "train.grad_clip=0",
                 "train.save_every=1")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 4, err[-3000:]
    assert "error: training diverged at step" in err and "micro-batch" in err


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 75), pytest.param(signal.SIGINT, 130, marks=full_only)])
def test_signals_through_the_launcher(tiny_corpus, tmp_path, sig, code):
    run_dir = tmp_path / "run"
    proc = start(tiny_corpus, run_dir, "train.steps=100000")
    wait_for_step(proc, run_dir)
    if sig == signal.SIGTERM:
        proc.send_signal(sig)  # slurm signals the launcher (srun's task), which relays to torchrun
    else:
        os.killpg(proc.pid, sig)  # a terminal's Ctrl-C reaches the whole foreground process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert (run_dir / "state" / "PREEMPTED").is_file() == (code == 75)


def test_job_exit_code_rules():
    assert distributed.job_exit_code(0, {}, False, False) == 0
    assert distributed.job_exit_code(1, {0: 3, 1: 3}, False, False) == 3
    assert distributed.job_exit_code(1, {1: 2}, False, False) == 2
    assert distributed.job_exit_code(1, {0: 75, 1: 75}, False, False) == 75
    assert distributed.job_exit_code(1, {}, False, True) == 75
    assert distributed.job_exit_code(1, {0: 3}, True, False) == 130
    assert distributed.job_exit_code(1, {}, False, False) == 1
    assert distributed.job_exit_code(-signal.SIGINT, {}, False, False) == 130
