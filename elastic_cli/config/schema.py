"""The one strict config tree: sections, cross-field checks, and the config as data (dict, hash, diff).

`memory` is tagged by `memory.kind`: its keys are validated by that kind's Options (declared next to
the kind's class, memory/options.py), so another kind's key is an error. Loading recipes is
recipes.py's job; turning validation errors into messages is explain.py's.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator

from elastic_cli.errors import UsageError
from elastic_cli.memory import LayerContext, MemoryOptions, OptionError
from elastic_cli.memory import options as memory_options


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
    prev_embed: bool = False  # add a second embedding of the previous token (a bigram input; model/decoder.py)


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
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # precision.py: auto is bf16 autocast on CUDA, fp32 on CPU
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
    memory: SerializeAsAny[MemoryOptions] = Field(default_factory=memory_options.default)
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig = EvalConfig()
    run: RunSection = RunSection()

    @field_validator("memory", mode="before")
    @classmethod
    def _memory_kind(cls, value: Any) -> Any:
        return memory_options.validate(value)  # the chosen kind's options (its own errors, its own keys)


def memory_kinds() -> tuple[str, ...]:
    """The values of memory.kind: every registered memory kind."""
    return tuple(memory_options.registry())


# ---------------------------------------------------------------------------------- checks

def check(cfg: RunConfig, where: Any) -> None:
    """Cross-field checks that need more than one value; where(dotted key) names the file that set it."""
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
    try:
        cfg.memory.check(layer_context(cfg, memory_layers(cfg)[0] if memory_layers(cfg) else 0), "memory.")
    except OptionError as e:
        raise UsageError(f"{e} ({where('memory.' + e.key)})") from None


def check_world(cfg: RunConfig, world: int) -> None:
    """Launch-time check: every rank runs a whole number of micro-batches per step."""
    t = cfg.train
    if t.global_batch % (t.micro_batch * world):
        raise UsageError(f"train.global_batch={t.global_batch} is not a multiple of train.micro_batch={t.micro_batch} "
                         f"x {world} processes")


# ---------------------------------------------------------------------------------- derived values

def memory_layers(cfg: RunConfig) -> list[int]:
    """The memory layers' indices: "all", "middle" (n_layer // 2, so one overlay fits any depth) or a list."""
    layers, n = cfg.memory.layers, cfg.model.n_layer
    return {"all": list(range(n)), "middle": [n // 2]}[layers] if isinstance(layers, str) else sorted(layers)


def layer_context(cfg: RunConfig, layer: int) -> LayerContext:
    return LayerContext(layer, tuple(memory_layers(cfg)), cfg.model.n_layer, cfg.model.segment_len)


def to_dict(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json")


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
