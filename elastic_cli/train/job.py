"""`elastic train` before any step: describe (--dry-run), launch N x M workers through torchrun,
or train in this process."""
from __future__ import annotations

from pathlib import Path

import torch

from elastic_cli import console
from elastic_cli.runs import checkpoint
from elastic_cli.train import distributed
from elastic_cli.train import preflight
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
        data = preflight.check_run(cfg, resume, overwrite, gpus * nodes, hardware=False)
        sizes = describe(cfg, gpus * nodes)
        rows = [[k, f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"] for k, v in sizes.items()]
        rows.append(["data", f"{cfg.data.path}: {len(data.documents(cfg.data.train_split))} train documents, "
                             f"{data.meta['n_tokens']:,} tokens"])
        rows.append(["device", _planned_device(cfg.run.device, gpus)])
        start, remove = checkpoint.check_run_dir(Path(cfg.run.dir), resume, overwrite)
        deleted = checkpoint.removal(Path(cfg.run.dir), remove) if overwrite else None
        rows.append(["start", f"resume {start}" if start else "fresh" + (f" (--overwrite deletes {deleted})" if deleted else "")])
        console.table(f"elastic train --dry-run ({cfg.run.dir})", ["item", "value"], rows)
        console.out("launch: " + (" ".join(cmd) if cmd else "this process (no torchrun)"))  # one line, to copy
        return 0
    if launching:
        device = distributed.pick_device(cfg.run.device)
        if device.type == "cuda" and gpus > torch.cuda.device_count():
            raise UsageError(f"--gpus {gpus} but only {torch.cuda.device_count()} CUDA devices are visible")
        preflight.check_run(cfg, resume, overwrite, gpus * nodes)
        console.info(f"run directory: {cfg.run.dir}")
        console.info("launching: " + " ".join(cmd))
        return distributed.launch(cmd, Path(cfg.run.dir) / "state" / "PREEMPTED", cpu=device.type == "cpu")
    from elastic_cli.train.loop import train

    train(cfg, resume, overwrite, ("elastic", *worker_argv))
    return 0


def _planned_device(kind: str, gpus: int) -> str:
    """The device row of a dry run: what the job will use, and whether this machine has it (planning
    a GPU job from a login node without GPUs is normal: the job checks again when it starts)."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "cpu" or (kind == "auto" and not visible):
        where = "cpu" + (f" ({gpus} gloo processes per node)" if gpus > 1 else "")
        return where if kind == "cpu" else f"auto: {where} here (no CUDA device visible); a GPU node uses cuda"
    here = f"{visible} visible here" if visible else "none visible on this machine: checked again when the job starts"
    return f"cuda x {gpus} per node ({here})"
