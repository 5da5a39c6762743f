"""The memory kinds by name: `@register("name")` adds a class, `REGISTRY[name]` builds it (docs/internals.md)."""
from __future__ import annotations

from typing import Any

REGISTRY: dict[str, Any] = {}  # name -> Memory subclass (memory/base.py), filled as kinds' modules are imported


def register(name: str):
    """Class decorator: make a memory kind available as `memory.kind: name`."""

    def add(cls):
        REGISTRY[name] = cls
        return cls

    return add
