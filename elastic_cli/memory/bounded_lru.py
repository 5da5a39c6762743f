"""A least-recently-used cache of tensor tuples with a bound that does not grow with use: at most
`max_entries` entries of at most `max_entry_bytes` of storage each (larger values are not kept).
Used for Elastic Memory's (R, W) banks on the CPU (`hippo.BANKS`)."""
from __future__ import annotations

from collections import OrderedDict

from torch import Tensor


class BoundedLRU:
    def __init__(self, max_entries: int, max_entry_bytes: int):
        self.max_entries, self.max_entry_bytes, self.bytes = max_entries, max_entry_bytes, 0
        self.entries: OrderedDict[tuple, tuple[Tensor, ...]] = OrderedDict()

    def get(self, key: tuple) -> tuple[Tensor, ...] | None:
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found

    def put(self, key: tuple, value: tuple[Tensor, ...]) -> None:
        size = sum(x.untyped_storage().nbytes() for x in value)
        if key in self.entries or size > self.max_entry_bytes:
            return
        while len(self.entries) >= self.max_entries:
            self.bytes -= sum(x.untyped_storage().nbytes() for x in self.entries.popitem(last=False)[1])
        self.entries[key] = value
        self.bytes += size

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0
