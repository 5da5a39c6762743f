"""YAML recipes with `base:` inheritance and `key=value` overrides -> a validated, frozen RunConfig.

The only module that knows YAML. Every mistake becomes a `UsageError` (exit 2) naming the dotted
path, the file that set it and, for unknown keys or names, a "did you mean". Precedence: field
defaults < base chain (first base lowest) < recipe < overlays < overrides. Maps merge, lists
replace. A layer (a file, or all the overrides together) that sets memory.kind to another kind
drops the previous kind's options (memory.layers is kept); one that sets caching's memory.base to
another kind drops the previous base's options.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from elastic_cli.errors import UsageError
from elastic_cli.memory import options as memory_options

from .explain import RENAMED, explain
from .schema import RunConfig, check, to_dict

OVERRIDE = "command line"
# The memory section saved by versions before each kind declared its options: every field of every
# kind, flat. Such a config.yaml (of an old checkpoint) keeps the chosen kind's fields on loading.
LEGACY_MEMORY_OPTIONS: dict[str, tuple[str, ...]] = {
    "none": (), "elastic": ("order", "samples", "sampling", "power"), "xl": ("cache",),
    "memorizing": ("store", "topk"), "melodi": ("short_tokens", "summary_tokens", "long_layer", "long_tokens", "long_store"),
    "rmt": ("tokens",), "armt": ("tokens", "key_dim", "nu", "denom"),
    "infinity": ("basis", "tau", "ridge", "resample", "sticky"), "caching": ("base", "aggregate", "max_caches", "top_k"),
}


def load_config(recipes: str | Path | list, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve recipe files (each with its base chain; later files are overlays) and `key=value`
    overrides into a validated RunConfig. run.dir defaults to runs/<recipe stems joined by '-'>."""
    paths = [Path(r) for r in (recipes if isinstance(recipes, (list, tuple)) else [recipes])]
    if not paths:
        raise UsageError("no recipe given (a .yaml file)")
    origin: dict[str, str] = {}
    tree: dict = {}
    for path in paths:
        _merge_layer(tree, _load_tree(path, origin, ()), {}, "")
    layer: dict = {}
    for item in overrides:
        _apply_override(layer, item, tree)
    _merge_layer(tree, layer, origin, OVERRIDE)
    run = tree.setdefault("run", {})
    if isinstance(run, dict) and run.get("dir") is None:
        run["dir"] = "runs/" + "-".join(p.stem for p in paths)
    recipe = str(paths[-1])
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as e:
        messages = {}
        for err in e.errors():
            messages.setdefault(".".join(str(p) for p in err["loc"][:2]), explain(err, origin, recipe, tree))
        raise UsageError("; ".join(messages.values())) from None
    check(cfg, lambda key: origin.get(key, recipe))
    return cfg


def split_args(args: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Command-line words -> (recipe files, key=value overrides)."""
    return [a for a in args if "=" not in a], [a for a in args if "=" in a]


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _load_tree(path: Path, origin: dict[str, str], chain: tuple[Path, ...]) -> dict:
    real = path.resolve()
    if real in chain:
        raise UsageError(f"{path}: base: cycle through {' -> '.join(str(p) for p in chain + (real,))}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read recipe {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    bases = data.pop("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise UsageError(f"{path}: base: must be a path or a list of paths")
    tree: dict = {}
    for base in bases:
        _merge_layer(tree, _load_tree(path.parent / base, origin, chain + (real,)), {}, "")
    _merge_layer(tree, migrate_legacy(data), origin, str(path))
    return tree


def migrate_legacy(data: dict) -> dict:
    """A config.yaml saved before kinds declared their options (its memory section holds every
    kind's fields) -> the chosen kind's fields, renamed keys renamed. Anything else: unchanged."""
    memory = data.get("memory")
    legacy = {name for names in LEGACY_MEMORY_OPTIONS.values() for name in names}
    if not isinstance(memory, dict) or not legacy <= set(memory):
        return data
    kind = memory.get("kind", memory_options.DEFAULT_KIND)
    keep = LEGACY_MEMORY_OPTIONS.get(kind, ())
    if kind == "caching":
        keep += LEGACY_MEMORY_OPTIONS.get(memory.get("base"), ())
    migrated = {"kind": kind, "layers": memory.get("layers", "all")}
    migrated.update({RENAMED.get(f"memory.{k}", f"memory.{k}")[len("memory."):]: memory[k] for k in keep})
    return {**data, "memory": migrated}


def _merge_layer(dst: dict, src: dict, origin: dict[str, str], source: str) -> None:
    """Merge one layer; when it switches memory.kind (or caching's base), the options of the old
    kind are dropped first (memory/options.carry_over)."""
    new, old = src.get("memory"), dst.get("memory")
    if isinstance(new, dict) and isinstance(old, dict):
        kept = memory_options.carry_over(old, new)
        for key in set(old) - set(kept):
            for dotted in [k for k in origin if k == f"memory.{key}" or k.startswith(f"memory.{key}.")]:
                del origin[dotted]
        dst["memory"] = dict(kept)
    _merge(dst, src, origin, "", source)


def _merge(dst: dict, src: dict, origin: dict[str, str], prefix: str, source: str) -> None:
    """Deep-merge src into dst (maps merge, everything else replaces); record where leaves came from."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            if not isinstance(dst.get(key), dict):
                dst[key] = {}
                _forget(origin, dotted, source)
            _merge(dst[key], value, origin, dotted + ".", source)
        else:
            dst[key] = value
            _forget(origin, dotted, source)


def _forget(origin: dict[str, str], dotted: str, source: str) -> None:
    """`dotted` is now set by `source` as a whole: drop what was recorded below it."""
    if source:
        for k in [k for k in origin if k.startswith(dotted + ".")]:
            del origin[k]
        origin[dotted] = source


def _apply_override(layer: dict, item: str, tree: dict) -> None:
    """Add `section.key=value` to the overrides' layer (origins are recorded when it is merged)."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"override {item!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise UsageError(f"override {item!r}: the value is not valid YAML") from None
    node, below = layer, tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        below = below.get(part) if isinstance(below, dict) else None
        if not isinstance(node, dict) or not isinstance(below, (dict, type(None))):
            raise UsageError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section")
    _merge(node, {parts[-1]: value}, {}, "", "")
