"""Memories behind one contract (base.py); importing this package fills `registry.REGISTRY`.

A kind outside this package registers itself when its module is imported (`@register`); installed
packages can also name such modules under the entry-point group `elastic.memory`."""
from importlib.metadata import entry_points

from . import armt, caching, elastic, infinity, melodi, memorizing, none, rmt, xl  # noqa: F401  (registration)
from .base import Memory, MemoryCost, Read, SegmentView, detach_state
from .registry import REGISTRY, register
from .options import LayerContext, MemoryOptions, OptionError



def load_plugins(group: str = "elastic.memory") -> None:
    """Import the memory modules installed packages name under the entry-point group (each
    registers its kind on import)."""
    for plugin in entry_points(group=group):
        plugin.load()


load_plugins()

__all__ = ["REGISTRY", "LayerContext", "Memory", "MemoryCost", "MemoryOptions", "OptionError", "Read",
           "SegmentView", "detach_state", "load_plugins", "register"]
