"""`melodi`: MELODI's short-term and long-term memory by token mixing (Chen et al., ICLR 2025, §3).

A segment of the toolkit is one MELODI context window (W = `window` = model.segment_len).
Summary tokens (paper §3.1): U = `summary_tokens` learned embeddings are appended after the W
tokens of every window at the bottom of the stack (back memory-token slots, injected by the lowest
memory layer) and run through every layer: they attend causally to the whole window (and to the
memory), so each carries a content-selected view of it upward; the window's tokens never see them.
Per memory layer, after window k the window's keys X_k and the summary tokens' keys U_k at this
layer (both before RoPE; values alike) are compressed along the TOKEN axis by learned linear maps
("token mixing"):

  short-term  z_k = A_z [z_{k-1} ; X_k ; U_k]     A_z: (S, S + W + U)   recurrent, S = `short_tokens`
  long-term   m_k = A_m [X_k ; U_k]               A_m: (L, W + U)       L = `long_tokens` new entries

Window k+1 reads z_k as extra keys/values in the same softmax as its local keys, at RoPE positions
-S..-1 just before the window (the paper's relative bias places them there too). On the one
long-term layer (`long_layer=True`) the m_k are appended to a FIFO of `long_store` entries (oldest
dropped first) which every query reads by a separate, position-free softmax, mixed with the
self-attention output by a learned gate (paper §3.2): out = α ⊙ cross + (1 - α) ⊙ self,
α = sigmoid(a), a: (H, d). The recurrence is differentiable (gradient truncation is training
policy), as in the paper within a segment.

Differences from the paper (the contract gives a memory one layer's keys/values):
- The paper re-mixes the summary tokens between layers ((W+U) -> U); here the residual stream
  carries them from layer to layer.
- Mixing acts on the layer's keys/values instead of its hidden states: by linearity of the K/V
  projections this equals projecting mixed hidden states, minus the paper's LayerNorms after
  mixing; it stores keys AND values (2x the paper's floats for the same token counts).
- Mixing inputs are the layer's inputs of the window and the summary tokens, not its outputs.
- Empty memories are masked out (the paper's zero-initialised memories take softmax mass).
- A window shorter than W (a document's last, partial segment) uses the first l window columns.

Axis legend: B batch, H heads, S/U/L/C short/summary/increment/long entries, l window tokens, d head width.
"""
from __future__ import annotations

import math
from typing import Literal, NamedTuple, Union

import torch
from pydantic import Field
from torch import Tensor, nn

from ..precision import fp32_region
from .base import Memory, MemoryCost, Read, SegmentView
from .registry import register
from .options import LayerContext, MemoryOptions, OptionError


class MelodiOptions(MemoryOptions):
    """The window W is model.segment_len; `long_layer` picks the one layer with the long-term FIFO."""

    short_tokens: int = Field(32, gt=0, description="short-term memory tokens S per layer (recurrent mixing)")
    summary_tokens: int = Field(16, ge=0, description="learned summary tokens U appended to every window; they "
                                                      "attend within it and are mixed into the memories")
    long_layer: Union[int, Literal["middle"], None] = Field(
        None, description="the layer holding the long-term FIFO (middle: n_layer // 2; null: none)")
    long_tokens: int = Field(16, ge=0, description="long-term entries L added per window")
    long_store: int = Field(192, ge=0, description="long-term FIFO capacity")

    def long_index(self, n_layer: int) -> int | None:
        return n_layer // 2 if self.long_layer == "middle" else self.long_layer

    def memory_kwargs(self, ctx: LayerContext) -> dict:
        return {**self.options(), "window": ctx.segment_len, "long_layer": ctx.layer == self.long_index(ctx.n_layer),
                "first": ctx.layer == min(ctx.layers)}

    def check(self, ctx: LayerContext, prefix: str) -> None:
        if self.long_layer is None:
            return
        if self.long_index(ctx.n_layer) not in ctx.layers:
            raise OptionError("long_layer", f"{prefix}long_layer={self.long_layer} is not one of the memory layers "
                                            f"{list(ctx.layers)}")
        if not 1 <= self.long_tokens <= self.long_store:
            raise OptionError("long_tokens", f"{prefix}long_tokens={self.long_tokens} must be in "
                                             f"[1, {prefix}long_store={self.long_store}]")


class MelodiState(NamedTuple):
    zk: Tensor  # (B, H, S, d) short-term memory keys
    zv: Tensor  # (B, H, S, d) short-term memory values
    lk: Tensor  # (B, H, C, d) long-term FIFO keys, oldest first (C = 0 off the long layer)
    lv: Tensor  # (B, H, C, d) long-term FIFO values
    t: Tensor  # (B,) long, tokens written since the document start
    n: Tensor  # (B,) long, valid long-term entries (the last n), capped at C


def mix(a: Tensor, x: Tensor) -> Tensor:
    """Token mixing: a (T_out, T_in) over the token axis of x (B, H, T_in, d) -> (B, H, T_out, d)."""
    return torch.einsum("ot,bhtd->bhod", a, x)


@register("melodi")
class MelodiMemory(Memory):
    """Short-term memory by token mixing of the window and its learned summary tokens; optional
    long-term FIFO with a gated read."""

    Options = MelodiOptions

    def __init__(self, n_head: int, head_dim: int, window: int, short_tokens: int, summary_tokens: int = 0,
                 long_layer: bool = False, long_tokens: int = 0, long_store: int = 0, first: bool = True):
        super().__init__(n_head, head_dim)
        for name, value, least in (("window", window, 1), ("short_tokens", short_tokens, 1),
                                   ("summary_tokens", summary_tokens, 0), ("long_tokens", long_tokens, 0),
                                   ("long_store", long_store, 0)):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"MelodiMemory: {name} must be an integer >= {least}, got {value!r}")
        if long_layer and not 1 <= long_tokens <= long_store:
            raise ValueError(f"MelodiMemory: the long-term layer needs 1 <= long_tokens <= long_store, "
                             f"got long_tokens={long_tokens}, long_store={long_store}")
        self.window, self.short, self.summary, self.first = window, short_tokens, summary_tokens, bool(first)
        self.long_layer = bool(long_layer)
        self.long_tokens, self.long_store = (long_tokens, long_store) if self.long_layer else (0, 0)
        self.mix_short = nn.Parameter(torch.zeros(short_tokens, short_tokens + window + summary_tokens))  # A_z
        if self.summary and self.first:  # the U learned tokens enter at the bottom of the stack
            self.summary_embed = nn.Parameter(torch.zeros(summary_tokens, n_head * head_dim))  # (U, D)
        if self.long_layer:
            self.mix_long = nn.Parameter(torch.zeros(long_tokens, window + summary_tokens))  # A_m
            self.long_gate = nn.Parameter(torch.zeros(n_head, head_dim))  # a, α = sigmoid(a)

    def extra_repr(self) -> str:
        return (f"window={self.window}, short_tokens={self.short}, summary_tokens={self.summary}, first={self.first}, "
                f"long_layer={self.long_layer}, long_tokens={self.long_tokens}, long_store={self.long_store}")

    def slot_counts(self) -> tuple[int, int]:
        return 0, self.summary

    def inject(self, state: MelodiState, batch: int) -> tuple[Tensor | None, Tensor | None]:
        if not (self.summary and self.first):
            return None, None
        return None, self.summary_embed[None].expand(batch, -1, -1)  # (B, U, D)

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost:
        """Read: S keys in the softmax; on the long layer q Kᵀ and probs @ V over C, 2 * 2 r C D for the
        r = l + U rows. Write (keys and values): A_z 2 S (S + l + U) D, on the long layer A_m 2 L (l + U) D."""
        d, u = self.n_head * self.head_dim, self.summary
        read = 4 * (l + u if rows is None else rows) * self.long_store * d if t > 0 else 0
        write = 2 * 2 * d * (self.short * (self.short + l + u) + self.long_tokens * (l + u))
        return MemoryCost(self.short if t > 0 else 0, read, write)

    def empty(self, batch: int, device: torch.device | str) -> MelodiState:
        def zeros(m: int) -> Tensor:
            return torch.zeros(batch, self.n_head, m, self.head_dim, device=device)  # (B, H, m, d)

        count = torch.zeros(batch, dtype=torch.long, device=device)
        return MelodiState(zeros(self.short), zeros(self.short), zeros(self.long_store), zeros(self.long_store),
                           count, count.clone())

    def read(self, state: MelodiState, seg: SegmentView) -> Read:
        valid = (state.t > 0)[:, None].expand(-1, self.short)  # (B, S)
        pos = torch.arange(-self.short, 0, device=state.t.device)  # (S,)
        if not self.long_layer:
            return Read(k=state.zk, v=state.zv, valid=valid, pos=pos)
        slot = torch.arange(self.long_store, device=state.n.device)  # (C,)
        live = slot[None, :] >= self.long_store - state.n[:, None]  # (B, C)
        logits = seg.q.float() @ state.lk.float().transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, n, C)
        logits = logits.masked_fill(~live[:, None, None, :], float("-inf"))
        logits = logits.masked_fill(~live.any(-1)[:, None, None, None], 0.0)  # empty rows: finite (gate is 0)
        cross = logits.softmax(dim=-1) @ state.lv.float()  # (B, H, n, d)
        gate = torch.sigmoid(self.long_gate.float())[None, :, None, :] * (state.n > 0).float()[:, None, None, None]
        return Read(k=state.zk, v=state.zv, valid=valid, pos=pos, heads=cross.to(seg.q.dtype), gate=gate)  # gate (B, H, 1, d)

    def write(self, state: MelodiState, seg: SegmentView) -> MelodiState:
        l, s, w = seg.k.shape[2], self.short, self.window
        if l > w:
            raise ValueError(f"MelodiMemory: a window of {l} tokens exceeds window={w}")
        with fp32_region(state.zk.device.type):
            xk, xv = seg.k.float(), seg.v.float()  # (B, H, l, d)
            zk = mix(self.mix_short[:, :s], state.zk) + mix(self.mix_short[:, s : s + l], xk)  # (B, H, S, d)
            zv = mix(self.mix_short[:, :s], state.zv) + mix(self.mix_short[:, s : s + l], xv)
            if self.summary:  # the summary tokens' keys/values at this layer, (B, H, U, d) each
                if seg.slot_kv is None:
                    raise ValueError("MelodiMemory: summary_tokens > 0 needs the summary slots' keys/values "
                                     "(SegmentView.slot_kv, which the decoder passes)")
                uk, uv = (seg.slot_kv[:, :, i].float().transpose(1, 2) for i in (0, 1))
                zk = zk + mix(self.mix_short[:, s + w :], uk)
                zv = zv + mix(self.mix_short[:, s + w :], uv)
            lk, lv, n = state.lk, state.lv, state.n
            if self.long_layer:
                mk, mv = mix(self.mix_long[:, :l], xk), mix(self.mix_long[:, :l], xv)  # (B, H, L, d)
                if self.summary:
                    mk, mv = mk + mix(self.mix_long[:, w:], uk), mv + mix(self.mix_long[:, w:], uv)
                lk = torch.cat([lk, mk], dim=2)[:, :, -self.long_store:]  # (B, H, C, d)
                lv = torch.cat([lv, mv], dim=2)[:, :, -self.long_store:]  # (B, H, C, d)
                n = (n + self.long_tokens).clamp(max=self.long_store)
        return MelodiState(zk, zv, lk, lv, state.t + l, n)

    def numel(self, state: MelodiState) -> int:
        return 2 * self.n_head * self.head_dim * (self.short + self.long_store)
