"""Pydantic validation errors -> one line each, naming the dotted key, the file that set it and,
for unknown keys or names, a difflib "did you mean" (or the memory kinds that take the key)."""
from __future__ import annotations

import difflib
import typing
from typing import Any, Literal

from pydantic import BaseModel

from elastic_cli.memory import MemoryOptions
from elastic_cli.memory import options as memory_options

from .schema import RunConfig

RENAMED = {"memory.sampling": "memory.schedule"}  # old key -> new key (old checkpoints are migrated)


def explain(err: dict, origin: dict[str, str], recipe: str, tree: dict) -> str:
    loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function")))]
    dotted = ".".join(loc)
    below = [src for key, src in origin.items() if key.startswith(dotted + ".")]
    where = origin.get(dotted) or (below[0] if below else None) or origin.get(".".join(loc[:-1])) or recipe
    if err["type"] == "extra_forbidden":
        parent = ".".join(loc[:-1]) + "." if len(loc) > 1 else ""
        names = [parent + name for name in section_at(loc[:-1], tree).model_fields]
        if dotted in RENAMED:
            return f"unknown key {dotted} in {where}: it is now {RENAMED[dotted]}"
        return f"unknown key {dotted} in {where}{_owners(loc, tree) or did_you_mean(dotted, names)}"
    if err["type"] == "missing":
        return f"missing key {dotted} (not set in {recipe} or its base recipes)"
    given = err.get("input")
    if err["type"] == "literal_error":
        choices = choices_at(loc, tree)
        hint = did_you_mean(str(given), choices)
        return f"{dotted}={given!r} in {where}: choose one of {', '.join(choices)}{hint}"
    return f"{dotted}={given!r} in {where}: {err['msg'].lower()}"


def did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _owners(loc: list[str], tree: dict) -> str:
    """For an unknown memory key: the kinds that take it (the chosen kind takes other keys)."""
    if len(loc) != 2 or loc[0] != "memory":
        return ""
    kinds = [k for k, cls in memory_options.registry().items() if loc[1] in cls.Options.model_fields]
    kind = (tree.get("memory") or {}).get("kind", memory_options.DEFAULT_KIND)
    return f" (an option of memory.kind={'|'.join(kinds)}, not {kind})" if kinds else ""


def section_at(loc: list[str], tree: dict) -> type[BaseModel]:
    """The model that validates the section at loc (a memory section: its kind's options)."""
    cls: type[BaseModel] = RunConfig
    node: Any = tree
    for part in loc:
        field = cls.model_fields.get(part)
        node = node.get(part, {}) if isinstance(node, dict) else {}
        if field is None:
            break
        if field.annotation is MemoryOptions or typing.get_origin(field.annotation) is typing.Annotated:
            cls = memory_options.resolve(node)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            cls = field.annotation
        else:
            break
    return cls


def choices_at(loc: list[str], tree: dict) -> list[str]:
    field = section_at(loc[:-1], tree).model_fields.get(loc[-1])
    found: list[str] = []

    def walk(tp: Any) -> None:
        if typing.get_origin(tp) is Literal:
            found.extend(str(a) for a in typing.get_args(tp))
        for arg in typing.get_args(tp):
            if typing.get_origin(tp) is not Literal:
                walk(arg)

    if field is not None:
        walk(field.annotation)
    return found
