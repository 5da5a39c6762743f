"""Every memory kind trains under DDP (2 gloo processes) with a one-segment last truncation chunk
(segments=3, bptt_segments=2), equal to one process; parameters used only by the memory write
(armt wk/wv/wbeta, melodi mixing) learn; settings where they cannot are refused before training."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from elastic_cli.train import preflight
from elastic_cli.build import build_model
from elastic_cli.config import load_config
from elastic_cli.errors import UsageError
from elastic_cli.memory import REGISTRY
from elastic_cli.model.init import init_weights
from tests.helpers import ddp_kinds, tiny_run


@pytest.mark.slow
def test_two_gloo_processes_train_every_kind_like_one(tiny_corpus, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "localhost:0", "--module", "tests.helpers.ddp_kinds", str(tiny_corpus), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp_kinds.assert_like_one_process(tmp_path, tiny_corpus)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_write_only_probe_matches_the_full_model(kind, tiny_corpus):
    """The narrow probe names exactly the parameters the real model leaves without gradient in one segment."""
    cfg = ddp_kinds.config(kind, tiny_corpus, 2)
    model = build_model(cfg)
    init_weights(model, 0)
    tokens = torch.arange(cfg.model.segment_len).view(1, -1) * 7 % cfg.model.vocab_size
    logits, _ = model(tokens, model.empty_states(1, "cpu"))
    logits.float().square().mean().backward()
    missing = sorted(n for n, p in model.named_parameters() if p.grad is None)
    assert preflight.write_only_parameters(cfg) == missing
    assert bool(missing) == (kind in ("armt", "caching", "melodi"))


@pytest.mark.parametrize("setting", [["train.bptt_segments=1"], ["train.segments=1", "train.bptt_segments=1"]])
def test_a_truncation_that_starves_write_parameters_is_refused(tiny_corpus, setting):
    cfg = load_config(["recipes/tiny.yaml", "recipes/memory/armt.yaml"],
                      tiny_run.overrides(tiny_corpus, tiny_corpus, "memory.kind=armt", *setting))
    with pytest.raises(UsageError, match="only through the next segment's read.*at least 2"):
        preflight.check_truncation(cfg)
    for kind in ("none", "elastic", "xl"):  # nothing to starve: allowed
        ok = load_config(["recipes/tiny.yaml", f"recipes/memory/{kind}.yaml"],
                         tiny_run.overrides(tiny_corpus, tiny_corpus, f"memory.kind={kind}", *setting))
        assert preflight.check_truncation(ok) == []
