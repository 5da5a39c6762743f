"""Processes: the launcher (`--gpus N` -> torchrun) and the worker side (process group, DDP,
collectives). With fsdp.py (train.parallel=fsdp: FSDP2 and DCP checkpoints), the only module that
imports torch.distributed.

A process started by torchrun (or by srun with RANK/WORLD_SIZE/LOCAL_RANK exported) is a worker.
Otherwise `elastic train --gpus N` re-executes itself under `python -m elastic_cli.train.torchrun` (torchrun, quiet about failed workers)
with a c10d rendezvous on localhost:0 (a free port, so two jobs on one node never collide).
"""
from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from elastic_cli.errors import UsageError

_device = torch.device("cpu")


# ---------------------------------------------------------------------------------- worker side

def is_worker() -> bool:
    """True in a process started by torchrun or srun (RANK and WORLD_SIZE set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def init(device: torch.device) -> None:
    """Join the process group of a torchrun/srun worker (gloo on CPU, nccl on CUDA); no-op alone."""
    global _device
    _device = device
    if not is_worker() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, find_unused: bool = False) -> nn.Module:
    """DistributedDataParallel when there is more than one process; the model itself otherwise.
    DDP averages gradients over ranks, so the loss of each rank is scaled by world() (train.py).
    `find_unused`: some parameters may get no gradient in the backward that reduces (memory-write
    parameters when the last truncation chunk holds one segment); DDP then reduces what the
    accumulation left in their .grad instead of waiting for them forever."""
    if world() == 1:
        return model
    ids = [_device.index] if _device.type == "cuda" else None
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    buffers = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused, **buffers)


def no_sync(model: nn.Module, skip: bool):
    """Context that suppresses DDP's gradient all-reduce when `skip` (accumulation) is True."""
    from contextlib import nullcontext

    if skip and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum numbers over ranks (float64). One process: the numbers themselves (no device round trip,
    which would cost a host sync)."""
    if world() == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_min(value: int) -> int:
    """The smallest value over ranks (e.g. the micro-batch every rank can fit)."""
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_reduce_max(value: int) -> int:
    """The largest value over ranks (used so that every rank agrees to stop on a signal)."""
    t = torch.tensor([value], dtype=torch.int64, device=_device)
    if world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_object(obj: Any) -> list[Any]:
    if world() == 1:
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value on every rank."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world() > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------- launcher

def needs_launch(gpus: int, nodes: int) -> bool:
    return not is_worker() and gpus * nodes > 1


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[007-010,12],cpu1' -> 'gpu007'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise UsageError(f"cannot read SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def launch_command(gpus: int, nodes: int, rdzv_endpoint: str | None, worker_argv: list[str]) -> list[str]:
    """The exact torchrun command line that runs `python -m elastic_cli <worker_argv>` N x M times."""
    cmd = [sys.executable, "-m", "elastic_cli.train.torchrun", "--nproc-per-node", str(gpus), "--nnodes", str(nodes),
           "--rdzv-backend", "c10d", "--max-restarts", "0"]
    if nodes == 1:
        cmd += ["--rdzv-endpoint", rdzv_endpoint or "localhost:0"]
    else:
        if rdzv_endpoint is None and "SLURM_JOB_NODELIST" in os.environ:
            rdzv_endpoint = first_slurm_host(os.environ["SLURM_JOB_NODELIST"]) + ":29500"
        if rdzv_endpoint is None:
            raise UsageError("--nodes > 1 needs --rdzv-endpoint HOST:PORT (derived automatically under SLURM)")
        cmd += ["--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", os.environ.get("SLURM_JOB_ID", "elastic")]
    return cmd + ["-m", "elastic_cli", *worker_argv]


EXIT_DIR_ENV = "ELASTIC_EXIT_DIR"  # where launched workers leave their exit code (rank-<RANK>)


def record_exit(code: int) -> None:
    """In a launched worker: leave this process's exit code for the launcher (no-op elsewhere)."""
    folder = os.environ.get(EXIT_DIR_ENV)
    if folder and is_worker() and Path(folder).is_dir():
        (Path(folder) / f"rank-{os.environ['RANK']}").write_text(f"{code}\n")


def job_exit_code(rc: int, codes: dict[int, int], interrupted: bool, preempted: bool) -> int:
    """The launcher's exit code from torchrun's `rc` and the workers' recorded codes (by rank):
    0; 130 when interrupted; 75 when preempted after a complete save; else the code of the lowest
    rank that recorded a documented one (2, 3, 4); else 1 (a worker crashed)."""
    if rc == 0:
        return 0
    if interrupted or rc in (-signal.SIGINT, 128 + signal.SIGINT) or 130 in codes.values():
        return 130
    if preempted or 75 in codes.values():
        return 75
    documented = [codes[r] for r in sorted(codes) if codes[r] not in (0, 1)]
    return documented[0] if documented else 1


def launch(cmd: list[str], preempted_marker: Path, cpu: bool, env: dict[str, str] | None = None) -> int:
    """Run torchrun and map its outcome to an exit code (`job_exit_code`). SIGTERM/SIGUSR1 sent to
    this process are relayed to torchrun as SIGTERM, which torchrun forwards to every worker (they
    finish the step, save, and exit 75). `env`: more variables for the workers (the run plan's file)."""
    with tempfile.TemporaryDirectory(prefix="elastic-exit-") as folder:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{EXIT_DIR_ENV: folder}, **(env or {}))
        env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")  # time workers get to save after a signal
        if cpu:
            per = max(1, (os.cpu_count() or 1) // max(1, int(cmd[cmd.index("--nproc-per-node") + 1])))
            env.setdefault("OMP_NUM_THREADS", str(per))
        started = time.time()
        proc = subprocess.Popen(cmd, env=env)
        relay = lambda signum, frame: proc.send_signal(signal.SIGTERM)  # noqa: E731
        old = {s: signal.signal(s, relay) for s in (signal.SIGTERM, signal.SIGUSR1)}
        interrupted = False
        try:
            while True:
                try:
                    rc = proc.wait()
                    break
                except KeyboardInterrupt:  # the terminal sent SIGINT to torchrun and the workers too
                    interrupted = True
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        codes = {int(p.name.split("-")[1]): int(p.read_text()) for p in Path(folder).glob("rank-*")}
    preempted = preempted_marker.exists() and preempted_marker.stat().st_mtime >= started
    return job_exit_code(rc, codes, interrupted, preempted)
