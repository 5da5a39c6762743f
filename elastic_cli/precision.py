"""The one precision policy (train, eval, generate, bench): `train.dtype` and the device decide.

auto: bf16 autocast on CUDA, fp32 elsewhere; bf16: bf16 autocast on any device; fp32: none.
Memory states stay fp32 whatever the policy (each memory runs its updates in `fp32_region`).
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from elastic_cli.errors import UsageError


def uses_bf16(device_type: str, dtype: str) -> bool:
    return dtype == "bf16" or (dtype == "auto" and device_type == "cuda")


def autocast(device: torch.device, dtype: str):
    """A fresh context manager for one forward (pass train.dtype)."""
    if uses_bf16(device.type, dtype):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


_NO_REGION = nullcontext()  # stateless and re-entrant: one shared instance


def fp32_region(device_type: str):
    """Autocast disabled, for memory math that must stay in fp32. Entering `torch.autocast` costs a
    few microseconds; where autocast is off already (every fp32 run), or the device has no autocast
    (`meta`, on which the accelerator path is traced), this is a null context."""
    if device_type not in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return _NO_REGION
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else _NO_REGION


def pick_device(kind: str) -> torch.device:
    """run.device auto|cpu|cuda -> the device of this process (cuda:LOCAL_RANK under torchrun)."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("run.device=cuda but no CUDA device is visible")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
