"""`rmt`: the Recurrent Memory Transformer (Bulatov, Kuratov, Burtsev 2022, arXiv 2207.06881, §3).

Axis legend: B batch, m memory tokens, D model width.

Segment s is read as [M_{s-1} ; tokens ; M_{s-1}]: the front copy is read memory (every token sees it),
the back copy is write memory (it sees the whole segment). The new memory M_s is the model's last
hidden state (after the final norm) at the back slots. M_0 is a learned (m, D) matrix. Gradients
flow through M across segments (truncation is training policy).

Plug-in (docs/internals.md): a decoder-level memory built on the generic memory-token slots. Put it
on the first layer only (`memory.layers: [0]`): it injects M at the model input and writes from
the decoder's `final` hidden states. On several layers each one adds its own carried M again.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from pydantic import Field
from torch import Tensor, nn

from .base import Memory, MemoryCost, Read, SegmentView
from .registry import register
from .options import MemoryOptions


class RMTOptions(MemoryOptions):
    tokens: int = Field(16, gt=0, description="memory tokens m read at the front and written at the back of a segment")


class RMTState(NamedTuple):
    m: Tensor  # (B, m, D) memory tokens written by the last segment
    t: Tensor  # (B,) long, segments written since the document start (0: use the learned M_0)


@register("rmt")
class RMTMemory(Memory):
    """Options: tokens (m). tokens=0 is the plain decoder."""

    Options = RMTOptions

    def __init__(self, n_head: int, head_dim: int, tokens: int = 10):
        super().__init__(n_head, head_dim)
        if tokens < 0:
            raise ValueError(f"RMTMemory: tokens must be >= 0, got {tokens}")
        self.tokens = tokens
        self.initial = nn.Parameter(torch.zeros(tokens, n_head * head_dim))  # (m, D) M_0

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}"

    def empty(self, batch: int, device: torch.device | str) -> RMTState:
        m = torch.zeros(batch, self.tokens, self.n_head * self.head_dim, device=device)  # (B, m, D)
        return RMTState(m, torch.zeros(batch, dtype=torch.long, device=device))

    def slot_counts(self) -> tuple[int, int]:
        return self.tokens, self.tokens

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost:
        """No products of its own: its 2m slot rows run through every layer (counted by flops.py)."""
        return MemoryCost(0, 0, 0)

    def memory(self, state: RMTState) -> Tensor:
        """M_{s-1} per row: the carried tokens, or M_0 at a document start. (B, m, D)"""
        started = (state.t > 0)[:, None, None]  # (B, 1, 1)
        return torch.where(started, state.m, self.initial[None].to(state.m.dtype))

    def inject(self, state: RMTState, batch: int) -> tuple[Tensor | None, Tensor | None]:
        if self.tokens == 0:
            return None, None
        mem = self.memory(state)  # (B, m, D)
        return mem, mem

    def read(self, state: RMTState, seg: SegmentView) -> Read:
        return Read()

    def write(self, state: RMTState, seg: SegmentView) -> RMTState:
        if self.tokens == 0:
            return RMTState(state.m, state.t + 1)
        return RMTState(seg.final.to(state.m.dtype), state.t + 1)

    def numel(self, state: RMTState) -> int:
        return self.tokens * self.n_head * self.head_dim
