"""Building blocks: RMSNorm, SwiGLU MLP, rotary position embedding (RoPE).

Axis legend: B batch, l tokens, D model width, F MLP hidden width, H heads, d head width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Zhang & Sennrich 2019, eq. 4), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x) (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, l, D)


class Rotary(nn.Module):
    """RoPE (Su et al. 2021, eq. 34) in the rotate-half layout: channel i pairs with i + d/2.

    Positions are counted inside a segment (0..l-1); memory keys and their logits get none.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"Rotary: head_dim must be even, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (d/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """x: (B, H, l, d) at positions start..start+l-1 -> rotated (B, H, l, d)."""
        pos = torch.arange(start, start + x.shape[-2], device=x.device, dtype=torch.float32)  # (l,)
        angle = pos[:, None] * self.inv_freq[None, :]  # (l, d/2)
        cos = torch.cat([angle.cos(), angle.cos()], dim=-1)  # (l, d)
        sin = torch.cat([angle.sin(), angle.sin()], dim=-1)  # (l, d)
        x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, l, d/2) each
        rotated = torch.cat([-x2, x1], dim=-1)  # (B, H, l, d)
        return (x.float() * cos + rotated * sin).to(x.dtype)
