"""`elastic train` before any step: describe (--dry-run), launch N x M workers through torchrun,
or train in this process."""
from __future__ import annotations

from pathlib import Path

import torch

from elastic_cli import console, distributed, preflight
from elastic_cli.build import describe
from elastic_cli.config import RunConfig
from elastic_cli.errors import UsageError


def run(cfg: RunConfig, worker_argv: list[str], resume: str, overwrite: bool, dry_run: bool,
        rdzv_endpoint: str | None) -> int:
    """`elastic train`: describe (--dry-run), launch N x M workers through torchrun, or train here.
    Returns the exit code (0, or 75/130/1 from a launched job)."""
    gpus, nodes = cfg.run.gpus, cfg.run.nodes
    launching = distributed.needs_launch(gpus, nodes)
    cmd = distributed.launch_command(gpus, nodes, rdzv_endpoint, worker_argv) if launching else None
    if dry_run:
        data = preflight.check_run(cfg, resume, overwrite, gpus * nodes)
        sizes = describe(cfg, gpus * nodes)
        rows = [[k, f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"] for k, v in sizes.items()]
        rows.append(["data", f"{cfg.data.path}: {len(data.documents(cfg.data.train_split))} train documents, "
                             f"{data.meta['n_tokens']:,} tokens"])
        rows.append(["launch", " ".join(cmd) if cmd else "this process (no torchrun)"])
        console.table(f"elastic train --dry-run ({cfg.run.dir})", ["item", "value"], rows)
        return 0
    if launching:
        device = distributed.pick_device(cfg.run.device)
        if device.type == "cuda" and gpus > torch.cuda.device_count():
            raise UsageError(f"--gpus {gpus} but only {torch.cuda.device_count()} CUDA devices are visible")
        preflight.check_run(cfg, resume, overwrite, gpus * nodes)
        console.info("launching: " + " ".join(cmd))
        return distributed.launch(cmd, Path(cfg.run.dir) / "state" / "PREEMPTED", cpu=device.type == "cpu")
    from elastic_cli.train import train

    train(cfg, resume, overwrite, ("elastic", *worker_argv))
    return 0
