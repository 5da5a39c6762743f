"""Every memory kind trains under DDP (2 gloo processes) with a one-segment last truncation chunk
(segments=3, bptt_segments=2), equal to one process; parameters used only by the memory write
(armt wk/wv/wbeta, melodi mixing) learn; settings where they cannot are refused before training."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import ddp_kinds
import tiny_run
from elastic_cli import preflight
from elastic_cli.build import build_model
from elastic_cli.config import load_config
from elastic_cli.errors import UsageError
from elastic_cli.memory import REGISTRY
from elastic_cli.model.init import init_weights


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_run.prepare(tmp_path_factory.mktemp("data"))


def test_two_gloo_processes_train_every_kind_like_one(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "localhost:0", str(tiny_run.ROOT / "tests" / "ddp_kinds.py"), str(data), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for kind in sorted(REGISTRY):
        two = torch.load(tmp_path / f"{kind}.pt", weights_only=True)
        one = ddp_kinds.steps(kind, data, micro_batch=2)
        cfg = ddp_kinds.config(kind, data, 2)
        fresh = build_model(cfg)
        init_weights(fresh, 0)
        for name in preflight.write_only_parameters(cfg):  # they learned, in both
            assert not torch.equal(one[name], fresh.state_dict()[name]), (kind, name)
        for name in one:  # atol 5e-6 (a DDP error is O(lr) = 3e-3): a zero-initialised weight (ARMT's W_v)
            #               moves lr g / (|g| + eps) at its first Adam step, which turns the reduction order's
            #               roundoff in a near-zero gradient entry into ~1e-6
            torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=5e-6, msg=f"{kind} {name}")


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_write_only_probe_matches_the_full_model(kind, data):
    """The narrow probe names exactly the parameters the real model leaves without gradient in one segment."""
    cfg = ddp_kinds.config(kind, data, 2)
    model = build_model(cfg)
    init_weights(model, 0)
    tokens = torch.arange(cfg.model.segment_len).view(1, -1) * 7 % cfg.model.vocab_size
    logits, _ = model(tokens, model.empty_states(1, "cpu"))
    logits.float().square().mean().backward()
    missing = sorted(n for n, p in model.named_parameters() if p.grad is None)
    assert preflight.write_only_parameters(cfg) == missing
    assert bool(missing) == (kind in ("armt", "caching", "melodi"))


@pytest.mark.parametrize("setting", [["train.bptt_segments=1"], ["train.segments=1", "train.bptt_segments=1"]])
def test_a_truncation_that_starves_write_parameters_is_refused(data, setting):
    cfg = load_config(["recipes/tiny.yaml", "recipes/memory/armt.yaml"],
                      tiny_run.overrides(data, data, "memory.kind=armt", *setting))
    with pytest.raises(UsageError, match="only through the next segment's read.*at least 2"):
        preflight.check_truncation(cfg)
    for kind in ("none", "elastic", "xl"):  # nothing to starve: allowed
        ok = load_config(["recipes/tiny.yaml", f"recipes/memory/{kind}.yaml"],
                         tiny_run.overrides(data, data, f"memory.kind={kind}", *setting))
        assert preflight.check_truncation(ok) == []
