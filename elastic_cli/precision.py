"""The one precision policy (train, eval, generate, bench): `train.dtype` and the device decide.

auto: bf16 autocast on CUDA, fp32 elsewhere; bf16: bf16 autocast on any device; fp32: none.
Memory states stay fp32 whatever the policy (each memory disables autocast where it updates them).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch


def uses_bf16(device_type: str, dtype: str) -> bool:
    return dtype == "bf16" or (dtype == "auto" and device_type == "cuda")


def autocast(device: torch.device, dtype: str):
    """A fresh context manager for one forward (pass train.dtype)."""
    if uses_bf16(device.type, dtype):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
