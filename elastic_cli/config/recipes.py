"""YAML recipes with `base:` inheritance and `key=value` overrides -> a validated, frozen RunConfig.

The only module that knows YAML. Every mistake becomes a `UsageError` (exit 2) naming the dotted
path, the file that set it and, for unknown keys or names, a "did you mean". Precedence: field
defaults < base chain (first base lowest) < recipe < overlays < overrides. Maps merge, lists
replace. A layer (a file, or all the overrides together) that sets memory.kind to another kind
drops the previous kind's options (memory.layers is kept); one that sets caching's memory.base to
another kind drops the previous base's options.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from elastic_cli.errors import UsageError
from elastic_cli.memory import options as memory_options

from .explain import RENAMED, explain
from .schema import RunConfig, check, to_dict
from elastic_cli import console

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
    changed = changed_keys(layer, tree)
    _merge_layer(tree, layer, origin, OVERRIDE)
    run = tree.setdefault("run", {})
    if isinstance(run, dict) and run.get("dir") is None:
        run["dir"] = default_run_dir(paths, changed)
    _fit_warmup(tree, origin)
    return _validated(tree, origin, str(paths[-1]))


def with_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...], source: str) -> RunConfig:
    """`cfg` (a loaded config, e.g. a checkpoint's) with `key=value` overrides applied, validated as
    `load_config` validates them; errors name `source` for the keys the overrides did not set. No file
    is read: a config loaded once serves every variant of it."""
    tree, origin, layer = to_dict(cfg), {}, {}
    for item in overrides:
        _apply_override(layer, item, tree)
    _merge_layer(tree, layer, origin, OVERRIDE)
    return _validated(tree, origin, source)


def _validated(tree: dict, origin: dict[str, str], recipe: str) -> RunConfig:
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as e:
        messages = {}
        for err in e.errors():
            messages.setdefault(".".join(str(p) for p in err["loc"][:2]), explain(err, origin, recipe, tree))
        raise UsageError("; ".join(messages.values())) from None
    check(cfg, lambda key: origin.get(key, recipe))
    return cfg


# Keys that do not make another configuration: where and how a run executes and reports, and what
# `elastic eval` reads. Overriding them keeps the run directory (and --resume may change them).
SAME_RUN_KEYS = ("run.", "eval.", "train.log_every", "train.eval_every", "train.eval_batches", "train.save_every",
                 "train.keep_last", "train.parallel")
RUN_DIR_CHARS = 80  # longer derived names keep this many characters and a hash of the rest


def changed_keys(layer: dict, tree: dict) -> dict[str, Any]:
    """The overrides (as dotted key -> value) that change the recipes' configuration, sorted by key;
    keys that do not make another configuration (SAME_RUN_KEYS) are left out."""
    out: dict[str, Any] = {}

    def walk(node: dict, below: Any, prefix: str) -> None:
        for key, value in node.items():
            dotted, old = prefix + key, below.get(key) if isinstance(below, dict) else None
            if isinstance(value, dict):
                walk(value, old, dotted + ".")
            elif not _same_value(value, old) and not dotted.startswith(SAME_RUN_KEYS) \
                    and not (dotted + ".").startswith(SAME_RUN_KEYS):
                out[dotted] = value
    walk(layer, tree, "")
    return dict(sorted(out.items()))


def _same_value(new: Any, old: Any) -> bool:
    """An override equal to the recipe's value; '3e-3' (a YAML 1.1 string) equals 0.003."""
    if isinstance(new, str) and isinstance(old, (int, float)) and not isinstance(old, bool):
        try:
            return float(new) == old
        except ValueError:
            return False
    return new == old


def default_run_dir(paths: list[Path], changed: dict[str, Any]) -> str:
    """runs/<recipe stems joined by '-'>, plus `--key-value` for every override that changes the
    configuration, so runs of different configurations never share a directory:
    `tiny.yaml memory.kind=none train.lr=1e-3` -> runs/tiny--memory.kind-none--train.lr-0.001."""
    import hashlib
    import re

    name = "-".join(p.stem for p in paths)
    for key, value in changed.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        name += f"--{key}-" + re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")
    if len(name) > RUN_DIR_CHARS:
        name = name[:RUN_DIR_CHARS].rstrip("-_.") + "--" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return "runs/" + name


def _fit_warmup(tree: dict, origin: dict[str, str]) -> None:
    """`train.steps=N` given alone on the command line with a recipe's warmup longer than N: the warmup
    becomes N (a smoke test of a long recipe should not need two overrides). A warmup set on the
    command line too is checked as it is."""
    train = tree.get("train")
    if not isinstance(train, dict) or origin.get("train.steps") != OVERRIDE or origin.get("train.warmup") == OVERRIDE:
        return
    steps, warmup = train.get("steps"), train.get("warmup")
    if isinstance(steps, int) and isinstance(warmup, int) and 0 < steps < warmup:

        train["warmup"] = steps
        console.warn(f"train.warmup={warmup} ({origin.get('train.warmup', 'the recipe')}) exceeds train.steps={steps} "
                     f"given on the command line: warming up over all {steps} steps")


def split_args(args: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Command-line words -> (recipe files, key=value overrides)."""
    return [a for a in args if "=" not in a], [a for a in args if "=" in a]


def dump_yaml(cfg: RunConfig, explain: bool = False) -> str:
    """The config as YAML (it loads back to the same RunConfig); `explain` adds each key's
    description as a comment on its line."""
    data = to_dict(cfg)
    if not explain:
        return yaml.safe_dump(data, sort_keys=False)
    lines = []
    for section, values in data.items():
        model = getattr(cfg, section)
        lines.append(f"{section}:")
        for line in yaml.safe_dump(values, sort_keys=False).splitlines():
            key = line.split(":", 1)[0]
            field = type(model).model_fields.get(key) if not line.startswith((" ", "-")) else None
            text = (field.description or COMMON_MEMORY_KEYS.get(key)) if field is not None else None
            lines.append(f"  {line}" + (f"  # {text}" if text else ""))
    return "\n".join(lines) + "\n"


COMMON_MEMORY_KEYS = {"kind": "memory kind (elastic list kinds shows each with its options)",
                      "layers": "layers with memory: all, middle (n_layer // 2) or a list of indices"}


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
