"""Memories behind one contract (base.py); importing this package fills `base.REGISTRY`.

A kind outside this package registers itself when its module is imported (`@register`); installed
packages can also name such modules under the entry-point group `elastic.memory`."""
from importlib.metadata import entry_points

from . import armt, caching, elastic, infinity, melodi, memorizing, none, rmt, xl  # noqa: F401  (registration)
from .base import REGISTRY, Memory, MemoryCost, Read, SegmentView, detach_state, register
from .options import LayerContext, MemoryOptions, OptionError

for _plugin in entry_points(group="elastic.memory"):
    _plugin.load()

__all__ = ["REGISTRY", "LayerContext", "Memory", "MemoryCost", "MemoryOptions", "OptionError", "Read",
           "SegmentView", "detach_state", "register"]
