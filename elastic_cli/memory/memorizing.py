"""`memorizing`: the Memorizing Transformer's kNN memory (Wu, Rabe, Hutchins, Szegedy, ICLR 2022, §3).

The layer keeps an external FIFO store of its past (key, value) pairs, per head (capacity `store`).
Keys are L2-normalised when written; queries are L2-normalised when read. Each query retrieves,
per head, the top-k stored keys by dot product (exact top-k), attends over them with a separate
softmax (logit scale_h * q̂·k̂, scale_h = sqrt(d) exp(s_h)), and the result is mixed with the local
attention output by a learned per-head gate (paper eq. 2): out_h = g_h mem_h + (1 - g_h) local_h,
g_h = sigmoid(b_h), b initialised to 0 (g = 1/2). The store gets no gradient (stop-gradient);
which entries are retrieved is not differentiable, their logits are (with respect to q and s).
Cleared at document start (`reset`). Meant for one layer: `memory.layers: [n_layer // 2]`.

XL cache (`cache` > 0; paper §3 and Table 4's "XL cache" column): the layer's local attention also
sees the keys (before RoPE) and values of the last `cache` tokens, detached, at RoPE positions
-cache..-1 before the segment (as memory/xl.py); the gate mixes the kNN output with that local
output.

Differences from the paper: the layer's local attention keeps the model's RoPE attention (the
paper normalises q, k of the whole memory layer and uses T5 relative biases); the XL cache is on
the memory layer only; rows whose store is still empty use the local output only (gate 0).

Axis legend: B batch, H heads, S store entries, n queries of this chunk, d head width.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from .base import Memory, MemoryCost, Read, SegmentView
from .registry import register
from .options import LayerContext, MemoryOptions, OptionError


class MemorizingOptions(MemoryOptions):
    store: int = Field(768, gt=0, description="FIFO capacity: (key, value) entries kept per head")
    topk: int = Field(32, gt=0, description="neighbours each query retrieves per head (exact top-k)")
    cache: int = Field(0, ge=0, description="XL cache beside the store: the last tokens' keys/values in the "
                                            "local softmax (the paper's; 0: none)")

    def check(self, ctx: LayerContext, prefix: str) -> None:
        if self.topk > self.store:
            raise OptionError("topk", f"{prefix}topk={self.topk} exceeds {prefix}store={self.store}")


class StoreState(NamedTuple):
    k: Tensor  # (B, H, S, d) L2-normalised keys, oldest first (right-aligned), detached
    v: Tensor  # (B, H, S, d) values, detached
    n: Tensor  # (B,) long, entries written so far (capped at S); the last n are valid
    ck: Tensor  # (B, H, C, d) XL cache: keys before RoPE of the last C = cache tokens, oldest first, detached
    cv: Tensor  # (B, H, C, d) their values (C = 0 without a cache)
    t: Tensor  # (B,) long, tokens written since the document start


@register("memorizing")
class MemorizingMemory(Memory):
    """kNN attention over a FIFO store of past keys/values, gated with local attention."""

    Options = MemorizingOptions

    def __init__(self, n_head: int, head_dim: int, store: int, topk: int, cache: int = 0):
        super().__init__(n_head, head_dim)
        for name, value in (("store", store), ("topk", topk)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MemorizingMemory: {name} must be an integer >= 1, got {value!r}")
        if topk > store:
            raise ValueError(f"MemorizingMemory: topk {topk} exceeds the store size {store}")
        if not isinstance(cache, int) or cache < 0:
            raise ValueError(f"MemorizingMemory: cache must be an integer >= 0, got {cache!r}")
        self.store, self.topk, self.cache = store, topk, cache
        self.gate_bias = nn.Parameter(torch.zeros(n_head))  # b_h, g_h = sigmoid(b_h)
        self.log_scale = nn.Parameter(torch.zeros(n_head))  # s_h, logit scale sqrt(d) exp(s_h)

    def extra_repr(self) -> str:
        return f"store={self.store}, topk={self.topk}, cache={self.cache}"

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost:
        """Read: logits q̂ K̂ᵀ and probs @ V over the whole store, 2 * 2 l S D (a separate softmax); the
        XL cache joins the local softmax (counted by the attention)."""
        rows = l if rows is None else rows
        return MemoryCost(self.cache if t > 0 else 0, 4 * rows * self.store * self.n_head * self.head_dim if t > 0 else 0, 0)

    def empty(self, batch: int, device: torch.device | str) -> StoreState:
        zeros = torch.zeros(batch, self.n_head, self.store, self.head_dim, device=device)  # (B, H, S, d)
        cache = torch.zeros(batch, self.n_head, self.cache, self.head_dim, device=device)  # (B, H, C, d)
        count = torch.zeros(batch, dtype=torch.long, device=device)
        return StoreState(zeros, zeros.clone(), count, cache, cache.clone(), count.clone())

    def valid(self, state: StoreState) -> Tensor:
        """(B, S) bool: the last n entries of each row hold written pairs."""
        slot = torch.arange(self.store, device=state.n.device)  # (S,)
        return slot[None, :] >= self.store - state.n[:, None]  # (B, S)

    def read(self, state: StoreState, seg: SegmentView) -> Read:
        q = F.normalize(seg.q.float(), dim=-1)  # (B, H, n, d)
        scale = math.sqrt(self.head_dim) * self.log_scale.float().exp()[None, :, None, None]  # (1, H, 1, 1)
        logits = scale * (q @ state.k.transpose(-1, -2))  # (B, H, n, S)
        valid = self.valid(state)[:, None, None, :]  # (B, 1, 1, S)
        logits = logits.masked_fill(~valid, float("-inf"))
        with torch.no_grad():  # which entries: exact top-k per query and head (not differentiable)
            top = logits.topk(self.topk, dim=-1).indices  # (B, H, n, k)
            keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)  # (B, H, n, S)
        keep = keep & valid
        any_kept = keep.any(dim=-1, keepdim=True)  # (B, H, n, 1): False while the store is empty
        probs = logits.masked_fill(~keep, float("-inf")).masked_fill(~any_kept, 0.0).softmax(dim=-1)  # (B, H, n, S)
        heads = probs @ state.v  # (B, H, n, d)
        gate = torch.sigmoid(self.gate_bias.float())[None, :, None, None] * (state.n > 0).float()[:, None, None, None]
        if not self.cache:
            return Read(heads=heads.to(seg.q.dtype), gate=gate)  # gate (B, H, 1, 1)
        slot = torch.arange(self.cache, device=state.t.device)  # (C,)
        valid = slot[None, :] >= self.cache - state.t.clamp(max=self.cache)[:, None]  # (B, C)
        return Read(k=state.ck, v=state.cv, valid=valid, pos=slot - self.cache, heads=heads.to(seg.q.dtype), gate=gate)

    def write(self, state: StoreState, seg: SegmentView) -> StoreState:
        k = F.normalize(seg.k.detach().float(), dim=-1)  # (B, H, l, d)
        k = torch.cat([state.k, k], dim=2)[:, :, -self.store:]  # (B, H, S, d)
        v = torch.cat([state.v, seg.v.detach().float()], dim=2)[:, :, -self.store:]  # (B, H, S, d)
        ck, cv = state.ck, state.cv
        if self.cache:  # the XL cache: the last C tokens' keys before RoPE and values, stop-gradient
            ck = torch.cat([ck, seg.k.detach().to(ck.dtype)], dim=2)[:, :, -self.cache:]  # (B, H, C, d)
            cv = torch.cat([cv, seg.v.detach().to(cv.dtype)], dim=2)[:, :, -self.cache:]  # (B, H, C, d)
        l = seg.k.shape[2]
        return StoreState(k, v, (state.n + l).clamp(max=self.store), ck, cv, state.t + l)

    def numel(self, state: StoreState) -> int:
        return 2 * (self.store + self.cache) * self.n_head * self.head_dim
