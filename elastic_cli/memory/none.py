"""`none`: the baseline. Same code path as every memory, nothing remembered."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .base import Memory, MemoryCost, Read, SegmentView
from .registry import register
from .options import MemoryOptions


class NoneOptions(MemoryOptions):
    """No options."""


class NoState(NamedTuple):
    """No leaves: nothing is carried between segments."""


@register("none")
class NoMemory(Memory):
    """Reads nothing (no extra keys, no output), writes nothing, holds 0 floats."""

    Options = NoneOptions

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost:
        return MemoryCost(0, 0, 0)

    def empty(self, batch: int, device: torch.device | str) -> NoState:
        return NoState()

    def read(self, state: NoState, seg: SegmentView) -> Read:
        return Read()

    def write(self, state: NoState, seg: SegmentView) -> NoState:
        return state

    def numel(self, state: NoState) -> int:
        return 0
