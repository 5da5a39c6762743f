"""Launcher command lines, and 2 gloo processes (through the real CLI and torchrun) against one."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from elastic_cli.runs import inference
from elastic_cli.train import distributed
from elastic_cli.build import build_model
from elastic_cli.config import load_config
from elastic_cli.errors import UsageError
from elastic_cli.model.init import init_weights
from elastic_cli.train.loop import train
from tests.helpers import tiny_run


@pytest.mark.parametrize("nodelist, host", [("gpu[007-010,12]", "gpu007"), ("node3", "node3"),
                                            ("a[1,4],b2", "a1"), ("x-y[09-11]", "x-y09")])
def test_first_slurm_host(nodelist, host):
    assert distributed.first_slurm_host(nodelist) == host


def test_single_node_launch_uses_a_free_local_port(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    cmd = distributed.launch_command(4, 1, None, ["train", "r.yaml", "--resume", "never"])
    assert cmd[:3] == [sys.executable, "-m", "elastic_cli.train.torchrun"]
    text = " ".join(cmd)
    assert "--nproc-per-node 4 --nnodes 1 --rdzv-backend c10d" in text
    assert "--rdzv-endpoint localhost:0" in text
    assert text.endswith("-m elastic_cli train r.yaml --resume never")


def test_multi_node_needs_an_endpoint_or_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    with pytest.raises(UsageError, match="--rdzv-endpoint"):
        distributed.launch_command(8, 2, None, ["train"])
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[100-101]")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    text = " ".join(distributed.launch_command(8, 2, None, ["train"]))
    assert "--nnodes 2 --rdzv-backend c10d" in text and "--rdzv-endpoint gpu100:29500 --rdzv-id 4242" in text
    assert "--rdzv-endpoint head:1234" in " ".join(distributed.launch_command(8, 2, "head:1234", ["train"]))


def test_a_torchrun_worker_never_launches(monkeypatch):
    assert distributed.needs_launch(2, 1)
    assert not distributed.needs_launch(1, 1)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not distributed.needs_launch(2, 1)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tiny_corpus, tmp_path):
    """Same global batch (4 windows): 1 process x 2 micro-batches vs 2 processes x 1 micro-batch,
    through `elastic train --gpus 2` (torchrun, DDP, gloo). Losses and weights agree to float rounding."""
    runs = {1: tmp_path / "gpus1", 2: tmp_path / "gpus2"}
    train(load_config("recipes/tiny.yaml", tiny_run.overrides(tiny_corpus, runs[1], "train.steps=3")))
    args = [sys.executable, "-m", "elastic_cli", "train", "recipes/tiny.yaml",
            *tiny_run.overrides(tiny_corpus, runs[2], "train.steps=3"), "--gpus", "2"]
    proc = subprocess.run(args, cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching: " in proc.stderr and "--nproc-per-node 2" in proc.stderr
    assert json.loads((runs[2] / "env.json").read_text())["world"] == 2
    one, two = (tiny_run.metrics(runs[g]) for g in (1, 2))
    torch.testing.assert_close([m["loss"] for m in two], [m["loss"] for m in one], rtol=1e-5, atol=0)
    assert [m["tokens"] for m in two] == [m["tokens"] for m in one]
    a = inference.load_checkpoint(runs[1]).model.state_dict()
    b = inference.load_checkpoint(runs[2]).model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    cfg = inference.load_checkpoint(runs[1]).cfg
    fresh = build_model(cfg)
    init_weights(fresh, cfg.train.seed)
    assert not torch.allclose(fresh.state_dict()["embed.weight"], a["embed.weight"], rtol=1e-4, atol=1e-6)  # it trained
