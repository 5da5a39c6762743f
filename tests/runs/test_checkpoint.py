"""Checkpoints: layout, bitwise round trip, atomicity (a killed save is never loaded), rolling
keep_last, run-directory rules, RNG state, and loading for inference with overrides."""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from elastic_cli.runs import checkpoint
from elastic_cli.runs import rundir
from elastic_cli.runs import inference
from elastic_cli.build import build_model
from elastic_cli.config import dump_yaml, load_config
from elastic_cli.errors import DataError, UsageError
from elastic_cli.model.init import init_weights
from elastic_cli.train.optim import build_optimizer

TINY = ["model.d_model=32", "model.n_head=2", "model.mlp_hidden=64", "model.segment_len=8",
        "memory.order=4", "memory.samples=4", "model.tie_embeddings=false"]


def trained(seed: int = 0):
    """A tiny model and AdamW after one step, so the optimizer has state."""
    cfg = load_config("recipes/tiny.yaml", TINY)
    model = build_model(cfg)
    init_weights(model, seed)
    opt = build_optimizer(model, 1e-3, (0.9, 0.95), 0.1, torch.device("cpu"))
    tokens = torch.arange(16).view(2, 8) * 37 % cfg.model.vocab_size
    logits, _ = model(tokens, model.empty_states(2, "cpu"))
    logits.float().logsumexp(-1).mean().backward()
    opt.step()
    return cfg, model, opt


def save(run_dir: Path, step: int, cfg, model, opt, keep_last: int = 3) -> Path:
    return checkpoint.save(run_dir, model, opt, {"step": step, "tokens": 7 * step, "loader": {"window": step}},
                           dump_yaml(cfg), keep_last)


def test_layout_and_bitwise_round_trip(tmp_path):
    cfg, model, opt = trained()
    ckpt = save(tmp_path, 12, cfg, model, opt)
    assert ckpt == tmp_path / "checkpoints" / "step_00000012"
    assert sorted(p.name for p in ckpt.iterdir()) == ["COMPLETE", "config.yaml", "model.safetensors",
                                                       "optimizer.pt", "train_state.json"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000012\n"
    _, model2, opt2 = trained(seed=1)
    state = checkpoint.load(ckpt, model2, opt2, torch.device("cpu"))
    assert state == {"step": 12, "tokens": 84, "loader": {"window": 12}}
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(s1["state"][i][k], s2["state"][i][k])
    torch.load(ckpt / "optimizer.pt", weights_only=True)  # tensors and plain types only


def test_killed_save_is_never_the_resume_point(tmp_path, monkeypatch):
    cfg, model, opt = trained()
    good = save(tmp_path, 1, cfg, model, opt)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the weights, before the optimizer state

    monkeypatch.setattr(checkpoint.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2, cfg, model, opt)
    monkeypatch.undo()
    assert (tmp_path / "checkpoints" / "step_00000002.tmp" / "model.safetensors").is_file()
    assert checkpoint.resolve(tmp_path) == good
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == good.name
    assert prepare_run_dir(tmp_path, "auto", False) == good
    with pytest.raises(DataError, match="incomplete"):
        checkpoint.resolve(tmp_path / "checkpoints" / "step_00000002.tmp")

    torn = tmp_path / "checkpoints" / "step_00000005"  # e.g. a copy that stopped half-way
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"")
    assert checkpoint.resolve(tmp_path) == good
    with pytest.raises(DataError, match="incomplete"):
        checkpoint.resolve(torn)
    save(tmp_path, 3, cfg, model, opt)
    assert not (tmp_path / "checkpoints" / "step_00000002.tmp").exists()  # stale temporaries are cleaned


def test_keep_last_rolls(tmp_path):
    cfg, model, opt = trained()
    for step in range(1, 6):
        save(tmp_path, step, cfg, model, opt, keep_last=2)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]
    assert checkpoint.resolve(tmp_path).name == "step_00000005"


def test_ctrl_c_while_rolling_leaves_only_whole_checkpoints(tmp_path, monkeypatch):
    """Ctrl-C lands inside the delete of the oldest checkpoint (after its first file went): every
    checkpoint still counted complete loads, and the next save removes the half-deleted leftover."""
    cfg, model, opt = trained()
    for step in (1, 2):
        save(tmp_path, step, cfg, model, opt, keep_last=2)
    rmtree = checkpoint.shutil.rmtree

    def interrupted(path, *args, **kwargs):
        if not (Path(path) / "COMPLETE").is_file():  # the temporaries the save clears first
            return rmtree(path, *args, **kwargs)
        first = sorted(Path(path).iterdir())[0]
        first.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 3, cfg, model, opt, keep_last=2)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    ckpts = checkpoint.complete_checkpoints(tmp_path)
    assert [p.name for p in ckpts] == ["step_00000002", "step_00000003"]
    for ckpt in ckpts:
        checkpoint.verify(ckpt)
    assert (tmp_path / "checkpoints" / "step_00000001.del").is_dir()
    save(tmp_path, 4, cfg, model, opt, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000003", "step_00000004"]


def prepare_run_dir(run_dir, resume, overwrite):
    """What a run does to its directory before step 1: the plan's check, then a fresh start's removals."""
    start, remove = rundir.check_run_dir(run_dir, resume, overwrite)
    rundir.remove_run_files(run_dir, remove, say=overwrite)
    return start


def test_run_dir_rules(tmp_path):
    run = tmp_path / "run"
    assert prepare_run_dir(run, "never", False) is None  # missing: fine
    assert prepare_run_dir(run, "auto", False) is None  # nothing to resume: fresh
    rundir.write_run_files(run, "model: {}\n", ["elastic", "train", "r.yaml"], 1)
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(checkpoint.__file__).parent, capture_output=True, text=True)
    assert env["commit"] == (head.stdout.strip() if head.returncode == 0 else None)  # the code the run used
    assert (run / "command.txt").read_text() == "elastic train r.yaml\n"
    with pytest.raises(UsageError, match="not empty"):
        prepare_run_dir(run, "never", False)
    cfg, model, opt = trained()
    ckpt = save(run, 4, cfg, model, opt)
    (run / "notes.txt").write_text("mine")
    assert prepare_run_dir(run, "auto", False) == ckpt
    assert prepare_run_dir(tmp_path / "elsewhere", str(run), False) == ckpt
    assert prepare_run_dir(run, "never", True) is None
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # only run files are removed
    with pytest.raises(UsageError, match="not a run directory"):
        prepare_run_dir(run, "auto", False)
    with pytest.raises(DataError, match="nothing does not exist"):
        prepare_run_dir(run, str(tmp_path / "nothing"), False)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no complete checkpoint"):
        prepare_run_dir(run, str(tmp_path / "nothing"), False)


def test_rng_state_round_trips_through_json():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = json.loads(json.dumps(checkpoint.rng_state()))
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    checkpoint.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_an_opened_checkpoint_serves_every_test_time_variant(tmp_path):
    cfg, model, opt = trained()
    save(tmp_path, 1, cfg, model, opt)
    ck = checkpoint.open_checkpoint(tmp_path)
    assert ck.path.name == "step_00000001" and ck.step == 1 and ck.config == cfg
    cfg2, model2, _ = inference.load(ck, inference.Settings(("memory.schedule=exponential",)))
    assert cfg2.memory.schedule == "exponential" and not model2.training
    assert model2.blocks[0].memory.schedule == "exponential"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    tokens = torch.arange(8).view(1, 8)
    base = inference.load(ck).model
    with torch.no_grad():  # same weights; the schedule only changes what memory returns later
        s = base.empty_states(1, "cpu")
        _, s = base(tokens, s)
        a, _ = base(tokens, s)
        s = model2.empty_states(1, "cpu")
        _, s = model2(tokens, s)
        b, _ = model2(tokens, s)
    assert not torch.allclose(a, b)
    with pytest.raises(UsageError, match="cannot be set for a trained model"):
        inference.load(ck, inference.Settings(("model.mlp_hidden=32",)))
    missing = dict(list(ck.weights.items())[1:])
    with pytest.raises(DataError, match="does not fit the model"):
        inference.load(ck._replace(weights=missing))


def test_ctrl_c_inside_a_save_stays_an_interrupt(tmp_path, monkeypatch):
    """torch.save's writer can turn a KeyboardInterrupt into its own RuntimeError on the way out:
    that is still Ctrl-C (exit 130), not a write error, and nothing is left half-written."""
    cfg, model, opt = trained()
    good = save(tmp_path, 1, cfg, model, opt)

    def interrupted(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0")

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2, cfg, model, opt)
    assert checkpoint.resolve(tmp_path) == good and not list((tmp_path / "checkpoints").glob("*.tmp"))
