"""The one strict config tree: YAML recipes with `base:` inheritance and `key=value` overrides.

The only module that knows YAML. `load_config(recipe, overrides)` returns a validated, frozen
`RunConfig`; every mistake becomes a `UsageError` (exit 2) naming the dotted path, the file that
set it and, for unknown keys or names, a difflib "did you mean". Precedence: field defaults <
base chain (first base lowest) < recipe < overrides. Maps merge, lists replace.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from elastic_cli.errors import UsageError

OVERRIDE = "command line"
MEMORY_OPTIONS: dict[str, tuple[str, ...]] = {  # memory.* fields passed to REGISTRY[kind](n_head, head_dim, ...)
    "none": (),
    "elastic": ("order", "samples", "sampling", "power"),
    "xl": ("cache",),
    "memorizing": ("store", "topk"),
    "melodi": ("short_tokens", "summary_tokens", "long_tokens", "long_store"),  # + window, long_layer (build.py)
    "rmt": ("tokens",),
    "armt": ("tokens", "key_dim", "nu", "denom"),
    "infinity": ("basis", "tau", "ridge", "resample", "sticky"),
    "caching": ("base", "aggregate", "max_caches", "top_k"),  # + the options of its base kind
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    vocab_size: int = Field(gt=0)
    d_model: int = Field(gt=0)
    n_layer: int = Field(gt=0)
    n_head: int = Field(gt=0)
    mlp_hidden: int = Field(gt=0)
    segment_len: int = Field(gt=0)
    rope_base: float = Field(10000.0, gt=0)
    tie_embeddings: bool = True


class MemoryConfig(_Section):
    """One memory kind on `layers`; each kind reads only its own fields (MEMORY_OPTIONS)."""

    kind: Literal["none", "elastic", "xl", "memorizing", "melodi", "rmt", "armt", "infinity", "caching"] = "elastic"
    layers: Union[Literal["all", "middle"], list[int]] = "all"  # "middle": layer n_layer // 2 only
    order: int = Field(64, gt=0)  # elastic: LegS order N
    samples: int = Field(64, gt=0)  # elastic: samples M read by attention
    sampling: Literal["uniform", "exponential", "gauss", "power"] = "uniform"  # elastic: schedule
    power: float = Field(2.0, gt=0)  # elastic: strength of the `power` schedule
    cache: int = Field(64, ge=0)  # xl: cached tokens per layer
    store: int = Field(768, gt=0)  # memorizing: FIFO (key, value) entries
    topk: int = Field(32, gt=0)  # memorizing: neighbours per query
    short_tokens: int = Field(32, gt=0)  # melodi: short-term memory tokens per layer
    summary_tokens: int = Field(16, ge=0)  # melodi: summary tokens per layer
    long_layer: Union[int, Literal["middle"], None] = None  # melodi: the layer with the long-term FIFO (None: none)
    long_tokens: int = Field(16, ge=0)  # melodi: long-term tokens added per segment
    long_store: int = Field(192, ge=0)  # melodi: long-term FIFO capacity
    tokens: int = Field(16, gt=0)  # rmt, armt: memory tokens per segment
    key_dim: int = Field(64, gt=0)  # armt: DPFP key width
    nu: int = Field(3, gt=0)  # armt: DPFP rolls (features 2 * nu * key_dim)
    denom: bool = True  # armt: normalise reads by z
    basis: int = Field(64, gt=0)  # infinity: RBF basis functions
    tau: float = Field(0.5, gt=0, lt=1)  # infinity: share of [0, 1] given to the old signal
    ridge: float = Field(0.5, ge=0)  # infinity: ridge penalty
    resample: int = Field(256, gt=0)  # infinity: points resampled from the old signal
    sticky: bool = False  # infinity: resample where the last segment attended
    base: Literal["elastic", "armt", "infinity"] = "armt"  # caching: the memory whose states are cached
    aggregate: Literal["residual", "gated", "sparse", "soup"] = "gated"  # caching: how cached reads mix
    max_caches: int = Field(8, gt=0)  # caching: snapshots kept (FIFO)
    top_k: int = Field(2, gt=0)  # caching: snapshots read by `sparse`

    def options(self) -> dict[str, Any]:
        """Config-level keyword arguments of REGISTRY[kind](n_head, head_dim, **options)."""
        names = MEMORY_OPTIONS[self.kind] + (MEMORY_OPTIONS[self.base] if self.kind == "caching" else ())
        return {name: getattr(self, name) for name in names}


MEMORY_KINDS = typing.get_args(MemoryConfig.model_fields["kind"].annotation)  # == memory.REGISTRY (tested)


class DataConfig(_Section):
    path: str
    tokenizer: Union[str, None] = None  # if set, its sha256 must match the data's meta.json
    train_split: str = "train"
    val_split: str = "val"


class TrainConfig(_Section):
    global_batch: int = Field(gt=0)  # windows per optimizer step, all ranks together
    micro_batch: int = Field(gt=0)  # windows per forward pass on one rank
    segments: int = Field(gt=0)  # S: segments of model.segment_len tokens per window
    bptt_segments: int = Field(gt=0)  # detach memory every this many segments
    checkpoint_segments: bool = False  # recompute each segment's activations in backward (torch.utils.checkpoint)
    curriculum: list[tuple[int, int]] = []  # (from step, segments per window) stages; before the first: segments
    loss_on: Literal["all", "answers"] = "all"  # answers: only the answer tokens of task data carry loss
    steps: int = Field(gt=0)
    lr: float = Field(gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup: int = Field(0, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    aux_weight: float = Field(0.0, ge=0)  # weight of the memories' auxiliary loss (infinity's KL); 0: not computed
    seed: int = 0
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(0, ge=0)  # 0: no periodic validation
    eval_batches: int = Field(4, gt=0)
    save_every: int = Field(0, ge=0)  # 0: save at the end only
    keep_last: int = Field(3, gt=0)


class EvalConfig(_Section):
    split: str = "val"
    batch: int = Field(8, gt=0)
    max_batches: Union[int, None] = Field(None, gt=0)  # None: the whole split


class RunSection(_Section):
    dir: Union[str, None] = None  # None: runs/<recipe file stem>
    gpus: int = Field(1, gt=0)  # processes per node (on CPU: gloo processes)
    nodes: int = Field(1, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = ["jsonl"]  # metric sinks (elastic_cli/loggers.py)


class RunConfig(_Section):
    model: ModelConfig
    memory: MemoryConfig = MemoryConfig()
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig = EvalConfig()
    run: RunSection = RunSection()


# ---------------------------------------------------------------------------------- loading

def load_config(recipes: str | Path | list, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve recipe files (each with its base chain; later files are overlays) and `key=value`
    overrides into a validated RunConfig. run.dir defaults to runs/<recipe stems joined by '-'>."""
    paths = [Path(r) for r in (recipes if isinstance(recipes, (list, tuple)) else [recipes])]
    if not paths:
        raise UsageError("no recipe given (a .yaml file)")
    origin: dict[str, str] = {}
    tree: dict = {}
    for path in paths:
        _merge(tree, _load_tree(path, origin, ()), {}, "", "")
    for item in overrides:
        _apply_override(tree, item, origin)
    run = tree.setdefault("run", {})
    if isinstance(run, dict) and run.get("dir") is None:
        run["dir"] = "runs/" + "-".join(p.stem for p in paths)
    recipe = str(paths[-1])
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as e:
        messages = {}
        for err in e.errors():
            messages.setdefault(".".join(str(p) for p in err["loc"][:2]), _explain(err, origin, recipe))
        raise UsageError("; ".join(messages.values())) from None
    _check(cfg, lambda key: origin.get(key, recipe))
    return cfg


def split_args(args: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Command-line words -> (recipe files, key=value overrides)."""
    return [a for a in args if "=" not in a], [a for a in args if "=" in a]


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
        _merge(tree, _load_tree(path.parent / base, origin, chain + (real,)), {}, "", "")
    _merge(tree, data, origin, "", str(path))
    return tree


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


def _apply_override(tree: dict, item: str, origin: dict[str, str]) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"override {item!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise UsageError(f"override {item!r}: the value is not valid YAML") from None
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section")
    _merge(node, {parts[-1]: value}, origin, ".".join(parts[:-1]) + "." if len(parts) > 1 else "", OVERRIDE)


# ---------------------------------------------------------------------------------- errors

def _explain(err: dict, origin: dict[str, str], recipe: str) -> str:
    loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function")))]
    dotted = ".".join(loc)
    below = [src for key, src in origin.items() if key.startswith(dotted + ".")]
    where = origin.get(dotted) or (below[0] if below else None) or origin.get(".".join(loc[:-1])) or recipe
    if err["type"] == "extra_forbidden":
        parent = ".".join(loc[:-1]) + "." if len(loc) > 1 else ""
        names = [parent + name for name in _section_at(loc[:-1]).model_fields]
        return f"unknown key {dotted} in {where}{_did_you_mean(dotted, names)}"
    if err["type"] == "missing":
        return f"missing key {dotted} (not set in {recipe} or its base recipes)"
    given = err.get("input")
    if err["type"] == "literal_error":
        choices = _choices_at(loc)
        hint = _did_you_mean(str(given), choices)
        return f"{dotted}={given!r} in {where}: choose one of {', '.join(choices)}{hint}"
    return f"{dotted}={given!r} in {where}: {err['msg'].lower()}"


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _section_at(loc: list[str]) -> type[BaseModel]:
    cls: type[BaseModel] = RunConfig
    for part in loc:
        field = cls.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        cls = field.annotation
    return cls


def _choices_at(loc: list[str]) -> list[str]:
    field = _section_at(loc[:-1]).model_fields.get(loc[-1])
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


# ---------------------------------------------------------------------------------- checks

def _check(cfg: RunConfig, where: Any) -> None:
    """Cross-field checks that need more than one value."""
    m, t = cfg.model, cfg.train
    if m.d_model % m.n_head or (m.d_model // m.n_head) % 2:
        raise UsageError(f"model.d_model={m.d_model} must be n_head={m.n_head} times an even head width ({where('model.d_model')})")
    if t.global_batch % t.micro_batch:
        raise UsageError(f"train.global_batch={t.global_batch} is not a multiple of train.micro_batch={t.micro_batch} ({where('train.global_batch')})")
    if t.bptt_segments > t.segments:
        raise UsageError(f"train.bptt_segments={t.bptt_segments} exceeds train.segments={t.segments} ({where('train.bptt_segments')})")
    stages = [st for st, _ in t.curriculum]
    if stages != sorted(set(stages)) or any(not 0 <= st < t.steps for st in stages) or \
            any(not 1 <= n <= t.segments for _, n in t.curriculum):
        raise UsageError(f"train.curriculum={[list(c) for c in t.curriculum]}: need [step, segments] pairs with increasing "
                         f"steps in [0, train.steps) and segments in [1, train.segments={t.segments}] "
                         f"({where('train.curriculum')})")
    if t.warmup > t.steps:
        raise UsageError(f"train.warmup={t.warmup} exceeds train.steps={t.steps} ({where('train.warmup')})")
    if t.min_lr > t.lr:
        raise UsageError(f"train.min_lr={t.min_lr} exceeds train.lr={t.lr} ({where('train.min_lr')})")
    layers = cfg.memory.layers
    if not isinstance(layers, str):
        bad = [i for i in layers if not 0 <= i < m.n_layer]
        if bad or len(set(layers)) != len(layers):
            raise UsageError(f"memory.layers={layers}: need distinct layer indices in [0, {m.n_layer}) ({where('memory.layers')})")
    mem = cfg.memory
    if mem.kind == "melodi" and mem.long_layer is not None:
        if long_layer(cfg) not in memory_layers(cfg):
            raise UsageError(f"memory.long_layer={mem.long_layer} is not one of the memory layers {memory_layers(cfg)} "
                             f"({where('memory.long_layer')})")
        if not 1 <= mem.long_tokens <= mem.long_store:
            raise UsageError(f"memory.long_tokens={mem.long_tokens} must be in [1, memory.long_store={mem.long_store}] "
                             f"({where('memory.long_tokens')})")
    if mem.kind == "memorizing" and mem.topk > mem.store:
        raise UsageError(f"memory.topk={mem.topk} exceeds memory.store={mem.store} ({where('memory.topk')})")


def check_world(cfg: RunConfig, world: int) -> None:
    """Launch-time check: every rank runs a whole number of micro-batches per step."""
    t = cfg.train
    if t.global_batch % (t.micro_batch * world):
        raise UsageError(f"train.global_batch={t.global_batch} is not a multiple of train.micro_batch={t.micro_batch} "
                         f"x {world} processes")


def check_data(cfg: RunConfig, vocab_size: int, tokenizer_sha256: str | None, data_path: str) -> None:
    """Train-time check that model, data and tokenizer agree (DataError, exit 3)."""
    from elastic_cli.data.tokenizer import file_sha256
    from elastic_cli.errors import DataError

    if cfg.model.vocab_size != vocab_size:
        raise DataError(f"model.vocab_size={cfg.model.vocab_size} but {data_path}/meta.json has vocab_size={vocab_size}")
    if cfg.data.tokenizer is not None:
        path = Path(cfg.data.tokenizer)
        if not path.is_file():
            raise DataError(f"data.tokenizer: no such file {path}")
        sha = file_sha256(path.read_bytes())
        if sha != tokenizer_sha256:
            raise DataError(f"data.tokenizer {path} (sha256 {sha[:12]}) is not the tokenizer {data_path} was prepared with "
                            f"(sha256 {str(tokenizer_sha256)[:12]})")


# ---------------------------------------------------------------------------------- output

def memory_layers(cfg: RunConfig) -> list[int]:
    """The memory layers' indices: "all", "middle" (n_layer // 2, so one overlay fits any depth) or a list."""
    layers, n = cfg.memory.layers, cfg.model.n_layer
    return {"all": list(range(n)), "middle": [n // 2]}[layers] if isinstance(layers, str) else sorted(layers)


def long_layer(cfg: RunConfig) -> int | None:
    """melodi's long-term layer index ("middle" resolves to n_layer // 2)."""
    value = cfg.memory.long_layer
    return cfg.model.n_layer // 2 if value == "middle" else value


def to_dict(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json")


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def diff(old: RunConfig, new: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(to_dict(old)), flat(to_dict(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
