"""Causal self-attention over one segment, joined with a memory's extra keys in ONE softmax.

Axis legend: B batch, H heads, n queries (this chunk), S = start + n local keys (the segment so
far), M memory entries, d head width, D model width.

Logits (docs/memory.md, "Attention"):
  memory  q_i · k_mem_j / sqrt(d)            un-rotated query, un-rotated memory key, masked by valid
  local   rope(q_i) · rope(k_j) / sqrt(d)    causal: key j visible to query i iff j <= start + i
softmax over [memory ; local], output = P @ [v_mem ; v].
With `read.pos` (memories with positions, e.g. Transformer-XL's cache at -M..-1) the memory logit
is instead rope(q_i) · rope_at(k_mem_j, pos_j) / sqrt(d): relative distance start + i - pos_j.
`attend_reference` spells this out; `attend` is the fused fast path (local attention in the
SDPA/flash kernel, memory logits beside it, merged by log-sum-exp), tested equal in value and gradient.
A per-head memory output (`read.heads`, e.g. Memorizing Transformer's kNN attention) is mixed with
the local output before `wo`: gate * heads + (1 - gate) * local.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory.base import Read
from .layers import Rotary
from .merge import merged_attention


def causal_mask(n: int, start: int, device: torch.device) -> Tensor:
    """(n, start + n) bool: query i (position start + i) sees key j iff j <= start + i."""
    i = torch.arange(n, device=device)[:, None]  # (n, 1)
    j = torch.arange(start + n, device=device)[None, :]  # (1, S)
    return j <= start + i  # (n, S)


def rope_at(rotary: Rotary, x: Tensor, pos: Tensor) -> Tensor:
    """RoPE at arbitrary (possibly negative) positions: x (B, H, M, d), pos (M,) -> (B, H, M, d).

    Same rotation as `Rotary.forward` (which covers contiguous positions start..start+l-1).
    """
    angle = pos.to(torch.float32)[:, None] * rotary.inv_freq[None, :]  # (M, d/2)
    cos = torch.cat([angle.cos(), angle.cos()], dim=-1)  # (M, d)
    sin = torch.cat([angle.sin(), angle.sin()], dim=-1)  # (M, d)
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, M, d/2) each
    return (x.float() * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def attend_reference(q: Tensor, k: Tensor, v: Tensor, read: Read, rotary: Rotary, start: int) -> Tensor:
    """Explicit logits and softmax. q: (B, H, n, d); k, v: (B, H, S, d) -> (B, H, n, d)."""
    n, d = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    q_rot, k_rot = rotary(q, start).float(), rotary(k, 0).float()
    local = q_rot @ k_rot.transpose(-1, -2) * scale  # (B, H, n, S)
    local = local.masked_fill(~causal_mask(n, start, q.device), float("-inf"))
    values = v.float()  # (B, H, S, d)
    if read.k is not None:
        if read.pos is None:
            mem = q.float() @ read.k.float().transpose(-1, -2) * scale  # (B, H, n, M)
        else:
            mem = q_rot @ rope_at(rotary, read.k.float(), read.pos).transpose(-1, -2) * scale  # (B, H, n, M)
        if read.valid is not None:
            mem = mem.masked_fill(~read.valid[:, None, None, :], float("-inf"))
        local = torch.cat([mem, local], dim=-1)  # (B, H, n, M + S)
        values = torch.cat([read.v.float(), values], dim=2)  # (B, H, M + S, d)
    return (local.softmax(dim=-1) @ values).to(q.dtype)  # (B, H, n, d)


def nothing_valid(read: Read) -> bool:
    """True when no memory key is valid in any row (e.g. an empty memory at a document start), so the
    joint softmax is the local one. Only asked on the CPU, where reading the mask costs no device sync."""
    return read.valid is not None and read.valid.device.type == "cpu" and not read.valid.numpy().any()


def attend(q: Tensor, k: Tensor, v: Tensor, read: Read, rotary: Rotary, start: int) -> Tensor:
    """Fast path of `attend_reference` (same arguments and result).

    Without memory keys: SDPA (`is_causal` at a segment start, flash-eligible). With them, the local
    attention and the memory keys (with their own queries) run as separate fused-kernel parts merged
    exactly by their log-sum-exp (`merge.merged_attention`). The local QK product keeps its width d and
    the kernel its causal flag, so memory costs what its M extra keys cost.
    """
    n = q.shape[-2]
    q_rot, k_rot = rotary(q, start), rotary(k, 0)
    if read.k is None or nothing_valid(read):
        if start == 0:
            return F.scaled_dot_product_attention(q_rot, k_rot, v, is_causal=True)
        mask = None if n == 1 else causal_mask(n, start, q.device)  # one query sees every key
        return F.scaled_dot_product_attention(q_rot, k_rot, v, attn_mask=mask)
    if read.pos is None:
        q_mem, k_mem = q, read.k  # un-rotated query against the un-rotated memory keys
    else:
        q_mem, k_mem = q_rot, rope_at(rotary, read.k.float(), read.pos)  # (B, H, M, d) rotated at its positions
    valid = read.valid
    if valid is not None and valid.device.type == "cpu" and valid.numpy().all():
        valid = None  # every key valid: no mask (free to know on the CPU)
    return merged_attention(q_rot, k_rot, v, q_mem, k_mem, read.v, valid, start)


class Attention(nn.Module):
    """Projections and the attention call; memory reading/writing is the block's business."""

    def __init__(self, d_model: int, n_head: int, rope_base: float = 10000.0):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"Attention: d_model {d_model} is not divisible by n_head {n_head}")
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wk = nn.Linear(d_model, d_model, bias=False)
        self.wv = nn.Linear(d_model, d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)
        self.rotary = Rotary(self.head_dim, rope_base)
        self.reference = False  # True: use the explicit softmax path (tests, debugging)

    def split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, n, d)

    def project(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h: (B, n, D) -> q, k, v (B, H, n, d), before RoPE."""
        return self.split(self.wq(h)), self.split(self.wk(h)), self.split(self.wv(h))

    def output(self, q: Tensor, k: Tensor, v: Tensor, read: Read, start: int) -> Tensor:
        """Attend and project back: (B, H, n, d) queries -> (B, n, D)."""
        fn = attend_reference if self.reference else attend
        y = fn(q, k, v, read, self.rotary, start)  # (B, H, n, d)
        if read.heads is not None:
            y = y + read.gate.to(y.dtype) * (read.heads.to(y.dtype) - y)  # gate*heads + (1-gate)*local
        y = y.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)  # (B, n, D)
        return self.wo(y)
