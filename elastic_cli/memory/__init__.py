"""Memories behind one contract (base.py); importing this package fills `base.REGISTRY`."""
from . import elastic, melodi, memorizing, none, xl  # noqa: F401  (registration)
from .base import REGISTRY, Memory, Read, SegmentView, detach_state

__all__ = ["REGISTRY", "Memory", "Read", "SegmentView", "detach_state"]
