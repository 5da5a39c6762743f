"""Rank RANK of 2 gloo processes under `train.parallel=fsdp` (test_fsdp.py), two jobs in one launch:

- kinds: two `train_step` calls per memory kind on the sharded model (segments=3, bptt_segments=2:
  a one-segment last chunk), the whole weights saved as OUT/<kind>.pt by rank 0;
- checkpoints: each checkpoint under OUT/sources (written by one process, with optimizer.pt or with
  dcp/) resumed through the training loop's own functions (`loop._model`, `loop._resume`) into a
  sharded model (fsdp) and into a replicated one (ddp); rank 0 saves the whole weights and optimizer
  state (by parameter name) as OUT/loaded-<source>-<mode>.pt, and the sharded one is saved again by
  `loop._save` (2 processes' shards) into OUT/<source>-fsdp.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from tests.helpers import ddp_kinds  # noqa: E402
from elastic_cli import console  # noqa: E402
from elastic_cli.build import build_model  # noqa: E402
from elastic_cli.config import load_config  # noqa: E402
from elastic_cli.data.loader import PreparedData, SegmentLoader, Windows  # noqa: E402
from elastic_cli.memory import REGISTRY  # noqa: E402
from elastic_cli.model.init import init_weights  # noqa: E402
from elastic_cli.runs import checkpoint  # noqa: E402
from elastic_cli.train import distributed, fsdp, loop  # noqa: E402
from elastic_cli.train.optim import build_optimizer  # noqa: E402
from elastic_cli.train.preflight import RunPlan  # noqa: E402
from elastic_cli.train.step import train_step  # noqa: E402

CPU = torch.device("cpu")


def kinds(data: Path, out: Path) -> None:
    for kind in sorted(REGISTRY):
        cfg = ddp_kinds.config(kind, data, 1)
        torch.manual_seed(0)
        model = build_model(cfg)
        init_weights(model, 0)
        fsdp.shard(model, CPU, bf16=False)
        opt = build_optimizer(model, cfg.train.lr, cfg.train.betas, cfg.train.weight_decay, CPU)
        loader = SegmentLoader(PreparedData(data), "train", Windows(cfg.train.global_batch, cfg.train.segments,
                               cfg.model.segment_len), 0, distributed.rank(), distributed.world())
        for _ in range(2):
            train_step(cfg, model, opt, loader.next_batch(), nullcontext(), CPU, model)
        weights = fsdp.full_weights(model)
        if console.is_rank0():
            torch.save(weights, out / f"{kind}.pt")


def whole_state(model, opt) -> dict:
    """Every rank (collective when sharded): weights and optimizer state by name, on rank 0's host."""
    optim = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"model": fsdp.full_weights(model), "optim": optim}


def checkpoints(out: Path) -> None:
    for source in ("ddp", "dcp1"):
        ckpt = checkpoint.resolve(out / "sources" / source)
        for mode in ("fsdp", "ddp"):
            cfg = load_config(ckpt / "config.yaml", [f"train.parallel={mode}", f"run.dir={out / f'{source}-{mode}'}"])
            plan = RunPlan(cfg, 2, PreparedData(cfg.data.path), ckpt, (), (), None)
            sharded = mode == "fsdp"
            model = loop._model(cfg, ckpt, CPU, sharded, bf16=False)
            opt = build_optimizer(model, cfg.train.lr, cfg.train.betas, cfg.train.weight_decay, CPU)
            loader = SegmentLoader(plan.data, "train", Windows(cfg.train.global_batch, cfg.train.segments, cfg.model.segment_len),
                                   cfg.train.seed, distributed.rank(), distributed.world())
            step, tokens = loop._resume(plan, model, opt, loader, CPU, sharded)
            state = whole_state(model, opt)
            if console.is_rank0():
                torch.save({**state, "step": step, "tokens": tokens, "sharded": fsdp.is_sharded(model)},
                           out / f"loaded-{source}-{mode}.pt")
            if sharded:
                loop._save(plan, step, tokens, model, opt, loader)


def main(data: str, out: str) -> None:
    distributed.init(CPU)
    try:
        kinds(Path(data), Path(out))
        checkpoints(Path(out))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:3])
