"""One optimizer step per memory kind with `train.train_step`, in one process or as rank r of a
gloo group (tests/train/test_ddp_every_kind.py runs `torchrun --module tests.helpers.ddp_kinds`):
segments=3, bptt_segments=2 leaves a one-segment last chunk."""
from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from elastic_cli import console
from elastic_cli.build import build_model
from elastic_cli.config import load_config
from elastic_cli.data.loader import PreparedData, SegmentLoader, Windows
from elastic_cli.memory import REGISTRY
from elastic_cli.model.init import init_weights
from elastic_cli.train import distributed, preflight
from elastic_cli.train.step import train_step
from elastic_cli.train.optim import build_optimizer
from tests.helpers import tiny_run

SETTING = ["train.segments=3", "train.bptt_segments=2", "train.global_batch=4"]


def config(kind: str, data: Path, micro_batch: int):
    return load_config(["recipes/tiny.yaml", f"recipes/memory/{kind}.yaml"],
                       tiny_run.overrides(data, data.parent / "unused", f"memory.kind={kind}", *SETTING, f"train.micro_batch={micro_batch}"))


def steps(kind: str, data: Path, micro_batch: int, n: int = 2) -> dict[str, torch.Tensor]:
    """Weights after n train_step calls (this rank's rows; DDP-wrapped when world > 1)."""
    cfg = config(kind, data, micro_batch)
    torch.manual_seed(0)
    model = build_model(cfg)
    init_weights(model, 0)
    opt = build_optimizer(model, cfg.train.lr, cfg.train.betas, cfg.train.weight_decay, torch.device("cpu"))
    loader = SegmentLoader(PreparedData(data), "train", Windows(cfg.train.global_batch, cfg.train.segments,
                           cfg.model.segment_len), 0, distributed.rank(), distributed.world())
    net = distributed.wrap(model, find_unused=bool(preflight.write_only_parameters(cfg)))
    for _ in range(n):
        train_step(cfg, model, opt, loader.next_batch(), nullcontext(), torch.device("cpu"), net)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_like_one_process(saved: Path, data: Path) -> None:
    """Every kind's weights saved by a 2-process job (saved/<kind>.pt) equal `steps` in one process, up
    to float32 rounding (a DDP or FSDP error is O(lr) = 3e-3): the reduction order's roundoff in a
    near-zero gradient entry moves a weight ~1e-6 at an Adam step (ARMT's zero-initialised W_v; one
    weight of memorizing's, whose kNN search sums in another order in a gloo worker, was 3.8e-6 off).
    The write-only parameters must have learned in both."""
    for kind in sorted(REGISTRY):
        two = torch.load(Path(saved) / f"{kind}.pt", weights_only=True)
        one = steps(kind, data, micro_batch=2)
        cfg = config(kind, data, 2)
        fresh = build_model(cfg)
        init_weights(fresh, 0)
        for name in preflight.write_only_parameters(cfg):
            assert not torch.equal(one[name], fresh.state_dict()[name]), (kind, name)
            assert not torch.equal(two[name], fresh.state_dict()[name]), (kind, name)
        assert two.keys() == one.keys()
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{kind} {name}: {m}")


def main(data: str, out: str) -> None:
    """Rank RANK of WORLD_SIZE (env://): every kind, weights saved as out/<kind>.pt by rank 0."""
    distributed.init(torch.device("cpu"))
    try:
        for kind in sorted(REGISTRY):
            weights = steps(kind, Path(data), micro_batch=1)
            if console.is_rank0():
                torch.save(weights, Path(out) / f"{kind}.pt")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:3])
