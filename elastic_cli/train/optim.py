"""AdamW with weight decay by rule, and the learning-rate schedule as a pure function."""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices (>= 2-D: linear and embedding weights) decay; norms, biases and every 1-D
    tensor do not (nanoGPT `configure_optimizers`). Tied weights appear once."""
    decay, no_decay = _split(model)
    return [{"params": [p for _, p in decay], "weight_decay": weight_decay},
            {"params": [p for _, p in no_decay], "weight_decay": 0.0}]


def parameter_names(model: nn.Module) -> list[str]:
    """The parameters' names in the order of the optimizer's groups (`optimizer.state_dict()`
    numbers them so): how an optimizer.pt is read into an optimizer over a sharded model."""
    decay, no_decay = _split(model)
    return [name for name, _ in decay + no_decay]


def _split(model: nn.Module) -> tuple[list, list]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # named_parameters() already skips shared (tied) tensors
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append((name, p))
    return decay, no_decay


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
                    device: torch.device) -> torch.optim.AdamW:
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), fused=fused)


def lr_at(step: int, lr: float, min_lr: float, warmup: int, steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup to `lr` over `warmup` steps
    (step w gets lr*(w+1)/warmup), then half a cosine from `lr` down to `min_lr` at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = steps - 1 - warmup
    progress = min(1.0, (step - warmup) / span) if span > 0 else 0.0
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


def segments_at(step: int, curriculum, segments: int) -> int:
    """Segments per training window at optimizer step `step` (0-based): the last curriculum stage
    (from_step, n) with from_step <= step, or `segments` before the first stage / without one
    (RMT/ARMT train on few segments first, then more)."""
    n = segments
    for start, stage in curriculum:
        if start <= step:
            n = stage
    return n
