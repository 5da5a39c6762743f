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


def _f(default: Any = ..., description: str = "", **bounds: Any) -> Any:
    """A field with its description (`elastic config show --explain` prints it)."""
    return Field(default, description=description, **bounds)


class ModelConfig(_Section):
    vocab_size: int = _f(..., "tokenizer pieces (must equal the tokenizer's and the data's)", gt=0)
    d_model: int = _f(..., "residual stream width", gt=0)
    n_layer: int = _f(..., "transformer blocks", gt=0)
    n_head: int = _f(..., "attention heads (d_model / n_head must be even)", gt=0)
    mlp_hidden: int = _f(..., "hidden width of each block's MLP", gt=0)
    segment_len: int = _f(..., "tokens per segment: the attention window; memory carries the rest", gt=0)
    rope_base: float = _f(10000.0, "RoPE base frequency", gt=0)
    tie_embeddings: bool = _f(True, "share the input embedding and the output projection")
    prev_embed: bool = _f(False, "add a second embedding of the previous token (a bigram input; model/decoder.py)")


class DataConfig(_Section):
    path: str = _f(..., "prepared data directory (elastic prepare --out)")
    tokenizer: Union[str, None] = _f(None, "SentencePiece .model; if set, its sha256 must match the data's meta.json")
    train_split: str = _f("train", "split trained on")
    val_split: str = _f("val", "split of the periodic validation (train.eval_every)")


class TrainConfig(_Section):
    global_batch: int = _f(..., "windows per optimizer step, all ranks together", gt=0)
    micro_batch: Union[int, Literal["auto"]] = _f(..., "windows per forward pass on one rank; auto: the "
                                                         "largest that fits the GPU (the whole share on a CPU)")
    segments: int = _f(..., "S: segments of model.segment_len tokens per window", gt=0)
    bptt_segments: int = _f(..., "detach memory (truncate gradients) every this many segments", gt=0)
    checkpoint_segments: bool = _f(False, "recompute each segment's activations in backward (torch.utils.checkpoint)")
    curriculum: list[tuple[int, int]] = _f([], "[from_step, segments] stages; before the first: train.segments")
    loss_on: Literal["all", "answers"] = _f("all", "answers: only the answer tokens of task data carry loss")
    steps: int = _f(..., "optimizer steps", gt=0)
    lr: float = _f(..., "peak learning rate (AdamW)", gt=0)
    min_lr: float = _f(0.0, "learning rate at the end of the cosine decay", ge=0)
    warmup: int = _f(0, "linear warmup steps", ge=0)
    weight_decay: float = _f(0.1, "AdamW weight decay (2-D weights only)", ge=0)
    betas: tuple[float, float] = _f((0.9, 0.95), "AdamW betas")
    grad_clip: float = _f(1.0, "global gradient-norm clip; 0 disables clipping", ge=0)
    aux_weight: float = _f(0.0, "weight of the memories' auxiliary loss (infinity's KL); 0: not computed", ge=0)
    seed: int = _f(0, "seed of the weights and the data order")
    dtype: Literal["auto", "fp32", "bf16"] = _f("auto", "precision: auto is bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = _f(False, "torch.compile the model")
    parallel: Literal["ddp", "fsdp"] = _f("ddp", "with several processes: ddp replicates the model on each; fsdp shards "
                                                 "parameters, gradients and AdamW moments over them (FSDP2; checkpoints "
                                                 "through torch.distributed.checkpoint). One process: no difference")
    log_every: int = _f(10, "steps between metric lines", gt=0)
    eval_every: int = _f(0, "steps between validations; 0: no periodic validation", ge=0)
    eval_batches: int = _f(4, "validation batches (training-style windows of the val split)", gt=0)
    save_every: int = _f(0, "steps between checkpoints; 0: at the end only", ge=0)
    keep_last: int = _f(3, "checkpoints kept", gt=0)

    @field_validator("micro_batch", mode="before")
    @classmethod
    def _micro_batch(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError(f"must be a positive number of windows or auto, got {value!r}")


class EvalConfig(_Section):
    split: str = _f("val", "split `elastic eval` scores")
    batch: int = _f(8, "documents read together", gt=0)
    max_batches: Union[int, None] = _f(None, "batches of documents scored; null: the whole split", gt=0)


class RunSection(_Section):
    dir: Union[str, None] = _f(None, "run directory; default runs/<recipe names>[--<changed keys>]")
    gpus: int = _f(1, "processes per node (on CPU: gloo processes)", gt=0)
    nodes: int = _f(1, "nodes (torchrun rendezvous)", gt=0)
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "where training runs (eval and generate choose with --device)")
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = _f(["jsonl"], "metric sinks (elastic_cli/train/loggers.py)")


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
    if t.micro_batch != "auto" and t.global_batch % t.micro_batch:
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
    if t.global_batch % ((1 if t.micro_batch == "auto" else t.micro_batch) * world):
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
