"""A memory kind defined outside elastic_cli, in this one file: importing it registers `toy`.

State: an exponential moving average, per head, of the keys (before RoPE) and values the layer
has seen: m <- (1 - rate) m + rate x, token by token, so after a segment of l tokens
    m' = (1 - rate)^l m + Σ_i rate (1 - rate)^(l-1-i) x_i.
Read: the averages as one extra key/value in the attention softmax (from the second segment of a
document on), the value scaled by exp(gain_h), a learned per-head gain.

Axis legend: B batch, H heads, l segment tokens, d head width.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from pydantic import Field
from torch import Tensor, nn

from elastic_cli.memory import LayerContext, Memory, MemoryCost, MemoryOptions, OptionError, Read, SegmentView, register


class ToyOptions(MemoryOptions):
    rate: float = Field(0.5, gt=0, le=1, description="weight of each new token in the moving average")
    floor: float = Field(0.0, ge=0, description="an option only here to show a cross-field check")

    def check(self, ctx: LayerContext, prefix: str) -> None:
        if self.floor >= self.rate:
            raise OptionError("floor", f"{prefix}floor={self.floor} must be below {prefix}rate={self.rate}")


class ToyState(NamedTuple):
    k: Tensor  # (B, H, 1, d) fp32 average key
    v: Tensor  # (B, H, 1, d) fp32 average value
    t: Tensor  # (B,) long, tokens seen since the document start


@register("toy")
class ToyMemory(Memory):
    Options = ToyOptions
    cache_read = "keys"  # its read is keys/values from the state alone: `caching` may cache it

    def __init__(self, n_head: int, head_dim: int, rate: float = 0.5, floor: float = 0.0):
        super().__init__(n_head, head_dim)
        self.rate = float(rate)
        self.gain = nn.Parameter(torch.zeros(n_head, 1, 1))  # (H, 1, 1)

    def empty(self, batch: int, device: torch.device | str) -> ToyState:
        zeros = torch.zeros(batch, self.n_head, 1, self.head_dim, device=device)  # (B, H, 1, d)
        return ToyState(zeros, zeros.clone(), torch.zeros(batch, dtype=torch.long, device=device))

    def read(self, state: ToyState, seg: SegmentView) -> Read:
        v = state.v * self.gain.exp()  # (B, H, 1, d)
        return Read(k=state.k, v=v, valid=(state.t > 0)[:, None])  # valid (B, 1)

    def write(self, state: ToyState, seg: SegmentView) -> ToyState:
        with torch.autocast(device_type=state.k.device.type, enabled=False):
            l = seg.k.shape[2]
            age = torch.arange(l - 1, -1, -1, device=state.k.device, dtype=torch.float32)  # (l,) l-1..0
            w = (self.rate * (1 - self.rate) ** age)[None, None, :, None]  # (1, 1, l, 1)
            keep = (1 - self.rate) ** l
            k = keep * state.k + (w * seg.k.float()).sum(2, keepdim=True)  # (B, H, 1, d)
            v = keep * state.v + (w * seg.v.float()).sum(2, keepdim=True)  # (B, H, 1, d)
        return ToyState(k, v, state.t + l)

    def numel(self, state: ToyState) -> int:
        return 2 * self.n_head * self.head_dim

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost:
        return MemoryCost(1 if t > 0 else 0, 0, 0)  # one extra key; averaging is elementwise
