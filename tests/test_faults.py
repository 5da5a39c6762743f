"""Faults a long run meets: kill -9 during `prepare` and during checkpoint saves, corrupted and
truncated checkpoint files, a full disk during a save, a NaN loss.

kill -9 trials: TRIALS each by default (a few seconds), >= 20 with ELASTIC_FULL_FAULTS=1. Every trial
prints one line (`pytest -s` shows them): the moment of the kill and what was found after it."""
from __future__ import annotations

import errno
import json
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from elastic_cli.runs import checkpoint
from elastic_cli.runs import inference
from elastic_cli.build import build_model
from elastic_cli.config import load_config
from elastic_cli.data.loader import PreparedData
from elastic_cli.errors import DataError
from elastic_cli.train.loop import train
from tests.helpers import tiny_run
from tests.helpers.cli_run import run_cli

TRIALS = 20 if tiny_run.FULL_FAULTS else 3
FAULTS = tiny_run.FAULTS


def kill_at(args: list[str], delay: float) -> tuple[float, int | None]:
    """Start a process, sleep `delay`, SIGKILL it (unless it ended); returns (seconds it ran, its
    exit code if it ended before the kill)."""
    proc = subprocess.Popen(args, cwd=tiny_run.ROOT, env=tiny_run.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    time.sleep(delay)
    ended = proc.poll()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return time.monotonic() - t0, ended


def corpus(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    for i in range(60):
        (src / f"m{i:02d}.py").write_text("".join(tiny_run.documents()) * (1 + i % 3))
    return src


@pytest.mark.slow
def test_kill_9_during_prepare_never_leaves_a_half_written_output(tmp_path):
    """Even trials start from nothing, odd ones rebuild (--force) over a complete output. After each
    kill, `out` is absent, the old complete output, or the new complete one: never partial."""
    import shutil

    src, out = corpus(tmp_path), tmp_path / "out"
    args = [sys.executable, "-m", "elastic_cli", "prepare", str(src), "--tokenizer", str(tiny_run.TOKENIZER),
            "--out", str(out), "--workers", "1"]
    t0 = time.monotonic()
    subprocess.run([*args[:-4], "--out", str(tmp_path / "reference"), "--workers", "1"], cwd=tiny_run.ROOT,
                   env=tiny_run.env(), check=True, capture_output=True)
    span = time.monotonic() - t0
    reference = json.loads((tmp_path / "reference" / "meta.json").read_text())
    rng, outcomes = random.Random(0), {}
    for trial in range(TRIALS):
        shutil.rmtree(out, ignore_errors=True)
        if trial % 2:
            shutil.copytree(tmp_path / "reference", out)
        before = out.stat().st_ino if out.exists() else None
        delay = rng.uniform(0.0, 1.5 * span)
        _, ended = kill_at(args + ["--force"] * (trial % 2), delay)
        if out.exists():  # whatever exists under the final name is whole and verifies
            assert json.loads((out / "meta.json").read_text())["shards"] == reference["shards"]
            assert len(PreparedData(out)) == reference["n_docs"]
        state = ("absent" if not out.exists() else "old output kept" if out.stat().st_ino == before
                 else "new output complete")
        state += ", process had ended" if ended is not None else ""
        outcomes[state] = outcomes.get(state, 0) + 1
        print(f"prepare kill -9 trial {trial} ({'rebuild' if trial % 2 else 'fresh'}): at {delay:.2f}s "
              f"(an uninterrupted run takes {span:.2f}s) -> {state}")
    print(f"prepare kill -9: {TRIALS} trials, {outcomes}")
    done = subprocess.run(args + ["--force"], cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "meta.json").read_text())["shards"] == reference["shards"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out.")]  # stale temporaries cleaned


def fork_and_kill(run: Path, step: int, delay: float) -> None:
    """Fork a process into save_loop.main, wait for its first complete save, let it save on for
    `delay` seconds and SIGKILL it (a forked child has torch imported: each trial is quick)."""
    import multiprocessing as mp

    import save_loop

    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=save_loop.main, args=(str(run), step, ready))
    proc.start()
    assert ready.wait(60), "the save loop did not start"
    time.sleep(delay)
    proc.kill()
    proc.join()


@pytest.mark.slow
def test_kill_9_during_checkpoint_saves_keeps_a_loadable_checkpoint(tmp_path):
    run, rng, outcomes = tmp_path / "run", random.Random(1), {}
    sys.path.insert(0, str(FAULTS))
    cfg = load_config("recipes/tiny.yaml", __import__("save_loop").OVERRIDES)
    step = 1
    for trial in range(TRIALS):
        delay = rng.uniform(0.0, 0.5)
        fork_and_kill(run, step, delay)
        ckpt = checkpoint.resolve(run)  # the newest complete checkpoint, and it verifies
        model = build_model(cfg)
        state = checkpoint.load(ckpt, model, None, torch.device("cpu"))
        assert model.embed.weight[0, 0].item() == state["step"] == checkpoint.saved_step(ckpt) >= step
        latest = (run / "checkpoints" / "latest").read_text().strip()
        assert (run / "checkpoints" / latest / "COMPLETE").is_file()
        torn = sorted(p.name for p in (run / "checkpoints").glob("*.tmp"))
        outcomes[f"partial .tmp left: {bool(torn)}"] = outcomes.get(f"partial .tmp left: {bool(torn)}", 0) + 1
        print(f"save kill -9 trial {trial}: at {delay:.2f}s -> resumes from {ckpt.name}, partial {torn or 'none'}")
        step = state["step"] + 1
    print(f"save kill -9: {TRIALS} trials, every one left a loadable newest checkpoint; {outcomes}")


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """A run with checkpoints at steps 2 and 4 (copied by every test that changes it)."""
    root = tmp_path_factory.mktemp("trained")
    args = tiny_run.overrides(tiny_corpus, root / "run", "train.steps=4", "train.save_every=2")
    train(load_config("recipes/tiny.yaml", args))
    return root / "run", args


@pytest.mark.parametrize("name, damage", [("model.safetensors", "truncate"), ("optimizer.pt", "truncate"),
                                          ("train_state.json", "corrupt"), ("model.safetensors", "corrupt")])
def test_damaged_checkpoint_file_is_named_and_auto_resume_falls_back(trained, tmp_path, capsys, name, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    bad = run / "checkpoints" / "step_00000004" / name
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2] if damage == "truncate" else blob[:-2] + bytes([blob[-2] ^ 1]) + blob[-1:])
    code, _, err = run_cli(capsys, "eval", "--ckpt", bad.parent)
    assert code == 3 and f"checkpoint file {bad} is truncated or corrupted" in err and err.count("\n") == 1
    args = [a.replace(str(trained[0]), str(run)) for a in trained[1]]
    code, _, err = run_cli(capsys, "train", "recipes/tiny.yaml", *args, "--resume", bad.parent)
    assert code == 3 and str(bad) in err
    code, _, err = run_cli(capsys, "train", "recipes/tiny.yaml", *args, "train.steps=5", "--resume", "auto")
    assert code == 0, err
    assert f"skipping step_00000004: checkpoint file {bad}" in err and "resumed from" in err and "step_00000002" in err
    assert [m["step"] for m in tiny_run.metrics(run)] == [1, 2, 3, 4, 5]


def test_disk_full_during_save_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    cfg = load_config(run / "checkpoints" / "step_00000004" / "config.yaml")
    model = build_model(cfg)
    checkpoint.load(run / "checkpoints" / "step_00000004", model, None, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters())

    def full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"\0" * 100)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(DataError, match="could not write checkpoint .*step_00000006: No space left on device; "
                                        "nothing was marked complete and the previous checkpoint .*step_00000004 is intact"):
        checkpoint.save(run, model, opt, {"step": 6}, "x: 1\n", keep_last=3)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000002", "step_00000004"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    checkpoint.verify(run / "checkpoints" / "step_00000004")


@pytest.mark.slow
def test_file_size_limit_during_a_real_save_exits_3(trained, tmp_path):
    """A real `elastic train` whose checkpoint files cannot be written (RLIMIT_FSIZE below the weights'
    size): one-line error, exit 3, nothing marked complete."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    args = [a.replace(str(trained[0]), str(tmp_path / "run")) for a in trained[1]]
    proc = subprocess.run([sys.executable, "-m", "elastic_cli", "train", "recipes/tiny.yaml", *args, "train.steps=1",
                           "train.warmup=0"], cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True,
                          preexec_fn=limit)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "error: could not write checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    assert "no earlier checkpoint exists" in proc.stderr
    assert not list((tmp_path / "run").rglob("COMPLETE")) and not list((tmp_path / "run").rglob("*.tmp"))


def test_nan_loss_stops_with_exit_4_and_keeps_the_last_good_checkpoint(trained, tmp_path, capsys):
    args = [a.replace(str(trained[0]), str(tmp_path / "run")) for a in trained[1]]
    code, _, err = run_cli(capsys, "train", "recipes/tiny.yaml", *args, "train.steps=20", "train.lr=1e12",
                           "train.grad_clip=0", "train.save_every=1", "train.warmup=0")
    assert code == 4, err
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert "training diverged at step 2: the loss is nan in rank 0 micro-batch 0 (rows 0..1" in line
    assert "the last good checkpoint" in line and "step_00000001 is kept" in line
    ckpt = checkpoint.resolve(tmp_path / "run")
    assert ckpt.name == "step_00000001"
    model = inference.load_checkpoint(ckpt).model
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
