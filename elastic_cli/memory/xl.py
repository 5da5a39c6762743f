"""`xl`: the Transformer-XL cache (Dai et al., ACL 2019, §3.2, eq. for h̃ = [SG(h_{τ-1}) ∘ h_τ]).

Each memory layer keeps the keys (before RoPE) and values of its last `cache` tokens, detached
(SG = stop-gradient), and joins them into the same softmax as the local keys. Positions: the cache
sits right before the segment, at RoPE positions -cache..-1 relative to the segment start
(`Read.pos`), so query i sees cached token j at the relative distance it had in the token stream.

Differences from the paper: the cache holds the layer's projected keys and values (2 x cache x H x d
floats) rather than the layer input h (cache x D) re-projected every segment, which is the same
function since the projections are linear and the cache is detached; positions come from RoPE at
offsets instead of the relative bias W_R R_{i-j} + u, v (no extra parameters).

Axis legend: B batch, H heads, C cache entries, l segment tokens, d head width.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from pydantic import Field
from torch import Tensor

from .base import Memory, MemoryCost, Read, SegmentView
from .registry import register
from .options import MemoryOptions


class XLOptions(MemoryOptions):
    cache: int = Field(64, ge=0, description="tokens whose keys/values each layer keeps (the paper: one segment)")
    grad: bool = Field(False, description="let gradients into the cache within a BPTT window (NOT the paper, "
                                          "which stops them: an ablation of the detached write)")


class XLState(NamedTuple):
    k: Tensor  # (B, H, C, d) keys before RoPE of the last C tokens, oldest first (right-aligned)
    v: Tensor  # (B, H, C, d) their values
    n: Tensor  # (B,) long, tokens cached so far (capped at C); the last n entries are valid


@register("xl")
class XLMemory(Memory):
    """A detached FIFO of the last `cache` keys/values, read at positions -cache..-1."""

    Options = XLOptions

    def __init__(self, n_head: int, head_dim: int, cache: int, grad: bool = False):
        super().__init__(n_head, head_dim)
        if not isinstance(cache, int) or cache < 0:
            raise ValueError(f"XLMemory: cache must be an integer >= 0, got {cache!r}")
        self.cache, self.grad = cache, bool(grad)

    def extra_repr(self) -> str:
        return f"cache={self.cache}, grad={self.grad}"

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost:
        """The cache joins the softmax (counted by the attention); writing is a copy."""
        return MemoryCost(self.cache if t > 0 else 0, 0, 0)

    def empty(self, batch: int, device: torch.device | str) -> XLState:
        zeros = torch.zeros(batch, self.n_head, self.cache, self.head_dim, device=device)  # (B, H, C, d)
        return XLState(zeros, zeros.clone(), torch.zeros(batch, dtype=torch.long, device=device))

    def read(self, state: XLState, seg: SegmentView) -> Read:
        if self.cache == 0:
            return Read()
        slot = torch.arange(self.cache, device=state.n.device)  # (C,)
        valid = slot[None, :] >= self.cache - state.n[:, None]  # (B, C)
        pos = slot - self.cache  # (C,) -C..-1
        return Read(k=state.k, v=state.v, valid=valid, pos=pos)

    def write(self, state: XLState, seg: SegmentView) -> XLState:
        if self.cache == 0:
            return state
        new_k, new_v = (seg.k, seg.v) if self.grad else (seg.k.detach(), seg.v.detach())  # SG unless grad
        k = torch.cat([state.k, new_k.to(state.k.dtype)], dim=2)[:, :, -self.cache:]  # (B, H, C, d)
        v = torch.cat([state.v, new_v.to(state.v.dtype)], dim=2)[:, :, -self.cache:]  # (B, H, C, d)
        return XLState(k, v, (state.n + seg.k.shape[2]).clamp(max=self.cache))

    def numel(self, state: XLState) -> int:
        return 2 * self.cache * self.n_head * self.head_dim
