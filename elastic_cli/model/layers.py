"""Building blocks: RMSNorm, SwiGLU MLP, rotary position embedding (RoPE).

Axis legend: B batch, l tokens, D model width, F MLP hidden width, H heads, d head width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


_FUSED_RMS = getattr(torch.ops.aten, "_fused_rms_norm", None)  # torch >= 2.8: what F.rms_norm runs on CPU/CUDA


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Zhang & Sennrich 2019, eq. 4): torch's fused kernel (one launch, fp32
    accumulation) when x and the weight share a dtype (fp32 training, a bf16 model); else in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if _FUSED_RMS is not None and x.dtype == self.weight.dtype:
            return _FUSED_RMS(x, self.weight.shape, self.weight, self.eps)[0]
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


def fuse_on_load(module: nn.Module, fused: str, parts: tuple[str, ...]) -> None:
    """Let `module` load state dicts written when `fused` was separate linears `parts` (their weights
    stacked on the output axis, in this order): checkpoints from before the fused projections load."""

    def hook(state_dict, prefix, *_):
        names = [f"{prefix}{p}.weight" for p in parts]
        if all(n in state_dict for n in names) and f"{prefix}{fused}.weight" not in state_dict:
            state_dict[f"{prefix}{fused}.weight"] = torch.cat([state_dict.pop(n) for n in names], dim=0)

    module._register_load_state_dict_pre_hook(hook)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x) (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6); w1 and w3 are
    one fused projection `w13` (rows [w1 ; w3]): one GEMM for both."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.w13 = nn.Linear(d_model, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)
        fuse_on_load(self, "w13", ("w1", "w3"))

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)  # (B, l, F) each, views
        return self.w2(F.silu(gate) * up)  # (B, l, D)


class Rotary(nn.Module):
    """RoPE (Su et al. 2021, eq. 34) in the rotate-half layout: channel i pairs with i + d/2.

    Positions are counted inside a segment (0..l-1); memory keys and their logits get none.
    cos/sin for positions < `max_pos` are tables (non-persistent buffers), beyond it computed per call.
    rotate_half(x) * sin is written flip(x) * sin_signed, with x viewed as (2, d/2) halves and
    sin_signed = [-sin ; sin]: three kernels instead of five.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, max_pos: int = 0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"Rotary: head_dim must be even, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (d/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        cos, sin = self.tables(torch.arange(max_pos, dtype=torch.float32))
        self.register_buffer("cos", cos, persistent=False)  # (max_pos, d)
        self.register_buffer("sin", sin, persistent=False)  # (max_pos, d), signed: [-sin ; sin]

    def tables(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """cos and signed sin at positions pos (P,) float32 -> (P, d) each."""
        angle = pos[:, None] * self.inv_freq[None, :].to(pos.device)  # (P, d/2)
        return torch.cat([angle.cos(), angle.cos()], dim=-1), torch.cat([-angle.sin(), angle.sin()], dim=-1)

    def forward(self, x: Tensor, start: int = 0, dim: int = -2) -> Tensor:
        """x with positions start..start+l-1 along `dim` (default -2: (B, H, l, d)) -> rotated, same shape."""
        l = x.shape[dim]
        if start + l <= self.cos.shape[0]:
            cos, sin = self.cos[start:start + l], self.sin[start:start + l]  # (l, d) views
        else:
            cos, sin = self.tables(torch.arange(start, start + l, device=x.device, dtype=torch.float32))
        trail = x.dim() - 1 - (dim % x.dim())  # axes after the position axis, the last (d) included
        shape = (l,) + (1,) * (trail - 1) + (x.shape[-1],)
        cos, sin = cos.view(shape), sin.view(shape)  # broadcast over the axes between positions and d
        half = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)  # (..., d): [x2, x1]
        return torch.addcmul(x * cos, half, sin).to(x.dtype)  # x cos + [-x2, x1] sin, in fp32
