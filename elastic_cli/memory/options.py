"""What a memory kind declares besides its module: its `memory.*` options, and the config section
they form, tagged by `memory.kind` (docs/internals.md, "Adding a memory kind").

A kind subclasses `MemoryOptions` next to its Memory class (fields with defaults, bounds and a
`description`, the help text) and sets it as the class's `Options`. The config's `memory` section
is validated by `resolve(raw)`: the Options of REGISTRY[raw["kind"]], so a key the chosen kind does
not take is an error. Options stay plain values: modules are built from `memory_kwargs` (numbers),
never from an options object.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, NamedTuple, Union

from pydantic import BaseModel, ConfigDict, create_model

from .registry import REGISTRY

DEFAULT_KIND = "elastic"


class LayerContext(NamedTuple):
    """What a kind may need from the rest of the config to build the memory of one layer."""

    layer: int  # this memory's layer index
    layers: tuple[int, ...]  # every memory layer, sorted
    n_layer: int
    segment_len: int


class OptionError(ValueError):
    """A combination of options a kind rejects; `key` names the option to blame (without prefix)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class MemoryOptions(BaseModel):
    """`memory.kind`, `memory.layers` and, in a kind's subclass, that kind's options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = DEFAULT_KIND
    layers: Union[Literal["all", "middle"], list[int]] = "all"  # "middle": layer n_layer // 2 only

    @classmethod
    def for_raw(cls, raw: dict) -> type[MemoryOptions]:
        """The model that validates `raw` (a kind whose options depend on a value overrides this)."""
        return cls

    @classmethod
    def carry_over(cls, old: dict, new: dict) -> dict:
        """What of this kind's raw section `old` stays when a recipe layer `new` of the same kind is
        merged on top (a kind whose options depend on a value drops those of the old value)."""
        return old

    def options(self) -> dict[str, Any]:
        """The kind's own options (everything but kind and layers)."""
        return {name: getattr(self, name) for name in type(self).model_fields if name not in ("kind", "layers")}

    def memory_kwargs(self, ctx: LayerContext) -> dict[str, Any]:
        """Keyword arguments of the kind's Memory(n_head, head_dim, **kwargs) on layer ctx.layer."""
        return self.options()

    def check(self, ctx: LayerContext, prefix: str) -> None:
        """Cross-field checks (OptionError); keys in messages are written as f"{prefix}key"."""


def registry() -> dict[str, type]:
    return REGISTRY


def resolve(raw: Any, kinds: tuple[str, ...] | None = None) -> type[MemoryOptions]:
    """The options model for a raw memory section: its kind's (one of `kinds`, default: every
    registered kind); for an unknown kind a model whose only error is the kind's choices."""
    if not isinstance(raw, dict):
        return MemoryOptions
    reg = registry()
    kinds = tuple(reg) if kinds is None else kinds
    kind = raw.get("kind", DEFAULT_KIND)
    if kind in kinds:
        return reg[kind].Options.for_raw(raw)
    return _unknown_kind(kinds)


class _AnyOptions(MemoryOptions):
    model_config = ConfigDict(extra="ignore", frozen=True)  # only the kind is reported


@lru_cache(maxsize=None)
def _unknown_kind(kinds: tuple[str, ...]) -> type[MemoryOptions]:
    return create_model("UnknownKind", __base__=_AnyOptions, kind=(Literal[kinds], DEFAULT_KIND))  # type: ignore[valid-type]


def validate(raw: Any, kinds: tuple[str, ...] | None = None) -> Any:
    """A memory section (dict) -> its kind's options; anything else is returned unchanged."""
    if isinstance(raw, MemoryOptions) or not isinstance(raw, dict):
        return raw
    return resolve(raw, kinds).model_validate(raw)


def carry_over(old: dict, new: dict) -> dict:
    """What of a raw memory section stays under a recipe layer `new`: all of it, unless the layer
    switches memory.kind (then memory.layers only) or the kind says otherwise."""
    kind = old.get("kind", DEFAULT_KIND)
    if new.get("kind", kind) != kind:
        return {k: v for k, v in old.items() if k == "layers"}
    cls = registry().get(kind)
    return old if cls is None else cls.Options.carry_over(old, new)


def default() -> MemoryOptions:
    return validate({"kind": DEFAULT_KIND})
