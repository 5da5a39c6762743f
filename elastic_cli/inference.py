"""What `elastic eval` and `elastic generate` share: a checkpoint loaded for inference with
test-time memory options on its device, and the check that an output path can be written."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from elastic_cli import distributed
from elastic_cli.errors import DataError, UsageError


class Loaded(NamedTuple):
    cfg: Any  # RunConfig
    model: torch.nn.Module  # Decoder, eval mode, on `device`
    ckpt: Path
    device: torch.device


def memory_overrides(kind: str, schedule: str | None, samples: int | None) -> list[str]:
    """`key=value` overrides for --schedule/--samples; only Elastic Memory has a read schedule."""
    out = []
    if schedule is not None:
        out.append(f"memory.schedule={schedule}")
    if samples is not None:
        out.append(f"memory.samples={samples}")
    if out and kind != "elastic":
        raise UsageError(f"--schedule/--samples apply to memory.kind=elastic; this checkpoint has memory.kind={kind}")
    return out


def read_config(ckpt: str | Path) -> tuple[Path, Any]:
    """(checkpoint dir, its RunConfig) without loading weights; DataError (exit 3) when the path is
    missing or incomplete or its config is not one this version can build."""
    from elastic_cli import checkpoint
    from elastic_cli.config import load_config

    path = checkpoint.resolve(ckpt)
    try:
        return path, load_config(path / "config.yaml")
    except UsageError as e:
        raise DataError(f"checkpoint {path} has a config this version cannot use: {e}") from None


def load(ckpt: str | Path, schedule: str | None = None, samples: int | None = None) -> Loaded:
    """The model of a run or checkpoint directory, rebuilt with the test-time memory options."""
    from elastic_cli import checkpoint

    path, saved = read_config(ckpt)
    cfg, model, path = checkpoint.load_for_inference(path, memory_overrides(saved.memory.kind, schedule, samples))
    device = distributed.pick_device(cfg.run.device)
    return Loaded(cfg, model.to(device).eval(), path, device)


def check_writable(path: str | Path, flag: str) -> Path:
    """UsageError (exit 2) unless `path` can be created or replaced (checked before any work)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")
    return path


