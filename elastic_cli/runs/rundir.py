"""A run directory (docs/internals.md, "Runs and checkpoints"): what --resume/--overwrite may do with
it, the run files a fresh start removes, the files every run writes, the preemption marker.

    runs/<name>/config.yaml command.txt env.json train.log metrics.jsonl
    runs/<name>/checkpoints/                checkpoint.py
    runs/<name>/state/PREEMPTED             stopped by a signal after a complete save
"""
from __future__ import annotations

import json
import os
import platform
import socket
import sys
from pathlib import Path

import torch

from elastic_cli import __version__, console
from elastic_cli.atomic import remove_tree, write_atomic
from elastic_cli.code_version import code_version
from elastic_cli.errors import DataError, UsageError
from elastic_cli.runs import lock as runlock
from elastic_cli.runs.checkpoint import complete_checkpoints, newest_verified, resolve

RESUME_WORDS = ("yes", "y", "true", "1", "on", "latest", "last", "newest", "resume")  # meant: --resume auto
RUN_FILES = ("config.yaml", "command.txt", "env.json", "train.log", "metrics.jsonl", "checkpoints", "state",
             "tensorboard", "wandb")  # the last two: run.loggers (loggers.py)


def check_run_dir(run_dir: Path, resume: str, overwrite: bool) -> tuple[Path | None, tuple[str, ...]]:
    """Check the run directory against --resume/--overwrite without changing it: (the checkpoint to
    resume from, the run files a fresh start removes).

    never: an empty (or --overwrite'n) directory; auto: the newest checkpoint that verifies, or a
    fresh start; PATH: that checkpoint (or a run directory's newest)."""
    run_dir = Path(run_dir)
    used = run_dir.is_dir() and any(p.name != runlock.NAME for p in run_dir.iterdir())
    if resume == "never":
        if used and not overwrite:
            raise UsageError(f"run directory {run_dir} is not empty: pass --resume auto to continue it "
                             f"or --overwrite to start over")
        return None, RUN_FILES if used else ()
    if resume == "auto":
        found = newest_verified(run_dir)
        if found is not None:
            return found, ()
        if used and not (run_dir / "config.yaml").is_file() and not overwrite:
            raise UsageError(f"{run_dir} is not empty and is not a run directory; choose another run.dir")
        return None, ("metrics.jsonl", "train.log", "state", "tensorboard", "wandb")  # a run that never saved: start over
    if not Path(resume).exists():
        if resume.lower() in RESUME_WORDS:
            raise UsageError(f"--resume {resume}: did you mean --resume auto? (--resume takes auto, never or the "
                             f"path of a run or checkpoint directory)")
        raise DataError(f"--resume {resume}: {resume} does not exist (--resume takes auto, never or the path of a "
                        f"run or checkpoint directory)")
    return resolve(resume), ()


def removal(run_dir: Path, names: tuple[str, ...]) -> str | None:
    """What removing `names` from a run directory deletes, in words (None: nothing there)."""
    run_dir = Path(run_dir)
    found = [n for n in names if (run_dir / n).exists()]
    if not found:
        return None
    saved = complete_checkpoints(run_dir)
    parts = [f"checkpoints/ ({len(saved)} complete, newest {saved[-1].name})" if n == "checkpoints" and saved
             else n + "/" * (run_dir / n).is_dir() for n in found]
    return f"{run_dir}: " + ", ".join(parts)


def remove_run_files(run_dir: Path, names: tuple[str, ...], say: bool) -> None:
    """Remove the run files of a fresh start (`check_run_dir` named them), saying what when `say` (--overwrite)."""
    deleted = removal(run_dir, names) if say else None
    if deleted:
        console.info(f"--overwrite: deleting {deleted}")
    for name in names:
        target = Path(run_dir) / name
        remove_tree(target) if target.is_dir() else target.unlink(missing_ok=True)


def write_run_files(run_dir: Path, config_yaml: str, argv: list[str], world: int) -> None:
    """config.yaml, command.txt and env.json of a run (rank 0)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", config_yaml.encode())
    write_atomic(run_dir / "command.txt", (" ".join(argv) + "\n").encode())
    env = {"elastic": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "cuda": torch.version.cuda, "platform": platform.platform(), "host": socket.gethostname(),
           "world": world, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
           "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], **code_version()}
    write_atomic(run_dir / "env.json", json.dumps(env, indent=1).encode())


def mark_preempted(run_dir: Path, step: int) -> Path:
    marker = Path(run_dir) / "state" / "PREEMPTED"
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(marker, f"step {step}\n".encode())
    return marker
