"""Signals on a real `elastic train` process: SIGTERM -> complete checkpoint, PREEMPTED, exit 75,
and `--resume auto` continues; Ctrl-C -> exit 130 and nothing half-written is ever loaded."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elastic_cli.runs import checkpoint
from elastic_cli.runs import inference
from tests.helpers import tiny_run


def start(run_dir: Path, data: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "elastic_cli", "train", "recipes/tiny.yaml",
            *tiny_run.overrides(data, run_dir, "train.warmup=0", "train.save_every=0", *extra)]
    return subprocess.Popen(args, cwd=tiny_run.ROOT, env=tiny_run.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=tiny_run.as_from_a_terminal)


def wait_for_steps(proc: subprocess.Popen, run_dir: Path, n: int) -> None:
    deadline = time.monotonic() + 60
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_saves_a_complete_checkpoint_and_exits_75(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, tiny_corpus, "train.steps=100000")
    wait_for_steps(proc, run_dir, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "Traceback" not in err and "--resume auto" in err
    assert (run_dir / "state" / "PREEMPTED").is_file()
    ckpt = checkpoint.resolve(run_dir)
    state = json.loads((ckpt / "train_state.json").read_text())
    logged = [m["step"] for m in tiny_run.metrics(run_dir)]
    assert state["step"] == logged[-1] >= 2  # the step in flight was finished, logged and saved
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == ckpt.name
    cfg, model, _ = inference.load_checkpoint(run_dir)
    assert cfg.train.steps == 100000 and not model.training

    done = subprocess.run([sys.executable, "-m", "elastic_cli", "train", "recipes/tiny.yaml",
                           *tiny_run.overrides(tiny_corpus, run_dir, "train.warmup=0",
                                               f"train.steps={state['step'] + 1}"),
                           "--resume", "auto"], cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [m["step"] for m in tiny_run.metrics(run_dir)] == logged + [state["step"] + 1]


@pytest.mark.slow
def test_ctrl_c_exits_130_and_leaves_only_complete_checkpoints(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, tiny_corpus, "train.steps=100000", "train.save_every=1")
    wait_for_steps(proc, run_dir, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    for ckpt in checkpoint.complete_checkpoints(run_dir):
        inference.load_checkpoint(ckpt)  # every checkpoint that counts as complete loads
    assert not (run_dir / "state" / "PREEMPTED").exists()
