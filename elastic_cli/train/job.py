"""`elastic train` before any step: describe (--dry-run), launch N x M workers through torchrun,
or train in this process."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from elastic_cli import console, precision
from elastic_cli.build import describe
from elastic_cli.config import RunConfig
from elastic_cli.errors import UsageError
from elastic_cli.runs import rundir
from elastic_cli.train import distributed, preflight
from elastic_cli.train.loop import train


@dataclass(frozen=True)
class TrainOptions:
    """Everything `elastic train` takes (the CLI builds it)."""

    cfg: RunConfig  # recipes and overrides, resolved
    resume: str = "never"  # auto | never | PATH
    overwrite: bool = False  # start over in a run directory of the same configuration
    dry_run: bool = False  # check and describe, then exit
    rdzv_endpoint: str | None = None  # torchrun rendezvous for --nodes > 1
    argv: tuple[str, ...] = ()  # the worker's command line: `elastic <argv>` under torchrun, command.txt


def run(opts: TrainOptions) -> int:
    """`elastic train`: describe (--dry-run), launch N x M workers through torchrun, or train here.
    The run plan (every check before step 1) is made once here and handed on. Returns the exit code
    (0, or 75/130/1 from a launched job)."""
    cfg = opts.cfg
    gpus, nodes = cfg.run.gpus, cfg.run.nodes
    launching = distributed.needs_launch(gpus, nodes)
    cmd = distributed.launch_command(gpus, nodes, opts.rdzv_endpoint, list(opts.argv)) if launching else None
    if opts.dry_run:
        describe_plan(preflight.plan(cfg, opts.resume, opts.overwrite, gpus * nodes, hardware=False), gpus, cmd)
        return 0
    if distributed.is_worker():  # launched: the launcher's plan, or rank 0 makes one for all ranks
        train(cfg, argv=("elastic", *opts.argv), plan=worker_plan(opts))
        return 0
    if launching:
        device = precision.pick_device(cfg.run.device)
        if device.type == "cuda" and gpus > torch.cuda.device_count():
            raise UsageError(f"--gpus {gpus} but only {torch.cuda.device_count()} CUDA devices are visible")
        made = preflight.plan(cfg, opts.resume, opts.overwrite, gpus * nodes)
        console.info(f"run directory: {cfg.run.dir}")
        console.info("launching: " + " ".join(cmd))
        with tempfile.TemporaryDirectory(prefix="elastic-plan-") as folder:
            plan_file = Path(folder) / "plan.json"
            plan_file.write_text(made.to_json())
            return distributed.launch(cmd, Path(cfg.run.dir) / "state" / "PREEMPTED", cpu=device.type == "cpu",
                                      env={preflight.PLAN_ENV: str(plan_file)})
    train(cfg, argv=("elastic", *opts.argv), plan=preflight.plan(cfg, opts.resume, opts.overwrite, 1))
    return 0


def worker_plan(opts: TrainOptions) -> Callable[[int], preflight.RunPlan]:
    """For a launched worker: the plan its launcher wrote (PLAN_ENV), else (srun, another node's
    launcher, another config) one made by rank 0 for the job's `world` processes."""
    def make(world: int) -> preflight.RunPlan:
        path = os.environ.get(preflight.PLAN_ENV)
        given = preflight.RunPlan.from_json(Path(path).read_text(), opts.cfg) if path and Path(path).is_file() else None
        return given if given is not None and given.world == world else preflight.plan(
            opts.cfg, opts.resume, opts.overwrite, world)

    return make


def describe_plan(plan: preflight.RunPlan, gpus: int, cmd: list[str] | None) -> None:
    """The dry run's table: sizes, per-process parameter, gradient and optimizer memory (ddp or fsdp),
    memory estimate, data, device, where it starts; then the launch line."""
    cfg = plan.cfg
    sizes = describe(cfg, plan.world)
    rows = [[k, human_bytes(v) if k.endswith("_memory_per_process") else f"{v:,.2f}" if isinstance(v, float)
             else f"{v:,}" if isinstance(v, int) else str(v)] for k, v in sizes.items()]
    rows.append(["data", f"{cfg.data.path}: {len(plan.data.documents(cfg.data.train_split))} train documents, "
                         f"{plan.data.meta['n_tokens']:,} tokens"])
    rows.append(["device", _planned_device(cfg.run.device, gpus)])
    deleted = rundir.removal(Path(cfg.run.dir), plan.remove) if plan.remove and cfg.run.dir else None
    rows.append(["start", f"resume {plan.start}" if plan.start else "fresh" + (f" (--overwrite deletes {deleted})" if deleted else "")])
    console.table(f"elastic train --dry-run ({cfg.run.dir})", ["item", "value"], rows)
    console.out("launch: " + (" ".join(cmd) if cmd else "this process (no torchrun)"))  # one line, to copy


def human_bytes(n: int) -> str:
    """1,234,567 -> '1.18 MiB'."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} B"


def _planned_device(kind: str, gpus: int) -> str:
    """The device row of a dry run: what the job will use, and whether this machine has it (planning
    a GPU job from a login node without GPUs is normal: the job checks again when it starts)."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "cpu" or (kind == "auto" and not visible):
        where = "cpu" + (f" ({gpus} gloo processes per node)" if gpus > 1 else "")
        return where if kind == "cpu" else f"auto: {where} here (no CUDA device visible); a GPU node uses cuda"
    here = f"{visible} visible here" if visible else "none visible on this machine: checked again when the job starts"
    return f"cuda x {gpus} per node ({here})"
