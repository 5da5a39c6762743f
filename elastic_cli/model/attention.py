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
from .layers import Rotary, fuse_on_load
from .merge import MemoryKeys, _flash_cuda, merged_attention


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
        if read.rows is not None:
            mem = mem.masked_fill(~read.rows[:, None, None, None], float("-inf"))
        local = torch.cat([mem, local], dim=-1)  # (B, H, n, M + S)
        values = torch.cat([read.v.float(), values], dim=2)  # (B, H, M + S, d)
    return (local.softmax(dim=-1) @ values).to(q.dtype)  # (B, H, n, d)


def nothing_valid(read: Read) -> bool:
    """True when no memory key is valid in any row (e.g. an empty memory at a document start), so the
    joint softmax is the local one. Only asked where reading the masks costs no device sync (the CPU)."""
    for mask in (read.valid, read.rows):
        if mask is not None and mask.device.type == "cpu" and not mask.numpy().any():
            return True
    return False


def attend(q: Tensor, k: Tensor, v: Tensor, read: Read, rotary: Rotary, start: int) -> Tensor:
    """Fast path of `attend_reference` (same arguments and result): rotates, then `attend_rotated`."""
    return attend_rotated(q, rotary(q, start), rotary(k, 0), v, read, rotary, start)


def attend_rotated(q: Tensor, q_rot: Tensor, k_rot: Tensor, v: Tensor, read: Read, rotary: Rotary,
                   start: int) -> Tensor:
    """`attend` given the rotated queries (positions start..start+n-1) and the rotated keys (0..S-1),
    so a stream rotates each key once. q: (B, H, n, d) before RoPE (the memory logits' query).

    Without memory keys: the fused kernel (flash on CUDA for bf16 without a mask; SDPA elsewhere,
    `is_causal` at a segment start). With them, the local attention and the memory keys (with their
    own queries) run as separate fused-kernel parts merged exactly by their log-sum-exp
    (`merge.merged_attention`). The local QK product keeps its width d and the kernel its causal flag,
    so memory costs what its M extra keys cost.
    """
    n = q.shape[-2]
    if read.k is None or nothing_valid(read):
        if start == 0 or n == 1:  # one query sees every key: no mask
            if _flash_cuda(q_rot):
                return torch.ops.aten._scaled_dot_product_flash_attention(q_rot, k_rot, v, 0.0, start == 0)[0]
            return F.scaled_dot_product_attention(q_rot, k_rot, v, is_causal=start == 0)
        return F.scaled_dot_product_attention(q_rot, k_rot, v, attn_mask=causal_mask(n, start, q.device))
    if read.pos is None:
        q_mem, k_mem = q, read.k  # un-rotated query against the un-rotated memory keys
    else:
        q_mem, k_mem = q_rot, rope_at(rotary, read.k.float(), read.pos)  # (B, H, M, d) rotated at its positions
    valid, rows = read.valid, read.rows
    if valid is not None and valid.device.type == "cpu" and valid.numpy().all():
        valid = None  # every key valid: no mask (free to know on the CPU)
    if rows is not None and rows.device.type == "cpu" and rows.numpy().all():
        rows = None
    return merged_attention(q_rot, k_rot, v, start, MemoryKeys(q_mem, k_mem, read.v, valid, rows))


def attend_joint(q: Tensor, q_rot: Tensor, kj: Tensor, vj: Tensor) -> Tensor:
    """One query per row against [M memory keys ; S local keys] in ONE fused call (decoding).
    q, q_rot: (B, H, 1, d) before / after RoPE; kj: (B, H, M + S, 2d) with [0 | k_mem] for the memory
    and [rope(k) | 0] for the local keys; vj: (B, H, M + S, 2d), [v | 0] (flash takes one head width).
    [rope(q) | q] · kj is the memory logit q · k_mem on the first M keys and the local one
    rope(q) · rope(k) on the rest, scaled by 1/sqrt(d): the joint softmax of `attend_reference`, with
    no merge. -> (B, H, 1, d)."""
    d = q.shape[-1]
    wide = torch.cat([q_rot, q], dim=-1)  # (B, H, 1, 2d)
    if _flash_cuda(wide):
        out = torch.ops.aten._scaled_dot_product_flash_attention(wide, kj, vj, 0.0, False, False, scale=d ** -0.5)[0]
    else:
        out = F.scaled_dot_product_attention(wide, kj, vj, scale=d ** -0.5)
    return out[..., :d]  # (B, H, 1, d)


class Attention(nn.Module):
    """Projections and the attention call; memory reading/writing is the block's business. q, k and v
    come from one fused projection `wqkv` (rows [wq ; wk ; wv]), so a segment's keys and values lie
    side by side, as Elastic Memory's state does (`SegmentView.kv`)."""

    def __init__(self, d_model: int, n_head: int, rope_base: float = 10000.0, max_pos: int = 0):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"Attention: d_model {d_model} is not divisible by n_head {n_head}")
        self.n_head, self.head_dim = n_head, d_model // n_head
        self.wqkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)
        self.rotary = Rotary(self.head_dim, rope_base, max_pos)
        self.reference = False  # True: use the explicit softmax path (tests, debugging)
        fuse_on_load(self, "wqkv", ("wq", "wk", "wv"))

    def qkv(self, h: Tensor) -> Tensor:
        """h: (B, n, D) -> (B, n, 3, H, d): queries, keys, values before RoPE, one GEMM."""
        b, n, _ = h.shape
        return self.wqkv(h).view(b, n, 3, self.n_head, self.head_dim)

    def project(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h: (B, n, D) -> q, k, v (B, H, n, d), before RoPE (views of one projection)."""
        return tuple(x.transpose(1, 2) for x in self.qkv(h).unbind(2))

    def output(self, q: Tensor, k: Tensor, v: Tensor, read: Read, start: int,
               q_rot: Tensor | None = None, k_rot: Tensor | None = None) -> Tensor:
        """Attend and project back: (B, H, n, d) queries -> (B, n, D). q_rot / k_rot: the rotated
        queries and keys when the caller has them (else rotated here)."""
        if self.reference:
            y = attend_reference(q, k, v, read, self.rotary, start)  # (B, H, n, d)
        else:
            q_rot = self.rotary(q, start) if q_rot is None else q_rot
            k_rot = self.rotary(k, 0) if k_rot is None else k_rot
            y = attend_rotated(q, q_rot, k_rot, v, read, self.rotary, start)
        if read.heads is not None:
            y = y + read.gate.to(y.dtype) * (read.heads.to(y.dtype) - y)  # gate*heads + (1-gate)*local
        y = y.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)  # (B, n, D)
        return self.wo(y)

    def output_joint(self, q: Tensor, q_rot: Tensor, kj: Tensor, vj: Tensor) -> Tensor:
        """`output` for one decoded token per row whose memory keys sit in the joint cache (`attend_joint`)."""
        y = attend_joint(q, q_rot, kj, vj)  # (B, H, 1, d)
        return self.wo(y.transpose(1, 2).reshape(q.shape[0], 1, -1))  # (B, 1, D)
