"""What the commands that use a trained model share (eval, generate, lm-eval, export): a checkpoint
opened once (`checkpoint.open_checkpoint`) becomes a model variant with inference-time settings
(device, precision, test-time memory options) on its device, and its tokenizer."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from elastic_cli import precision
from elastic_cli.build import build_model
from elastic_cli.config import with_overrides
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import DataError, UsageError
from elastic_cli.runs import checkpoint
from elastic_cli.runs.checkpoint import Checkpoint

# key=value overrides that make sense for a trained model: anything else is fixed by its weights or
# is a training setting. memory.kind and memory.layers decide which weights exist.
INFERENCE_KEYS = ("memory.", "eval.", "run.device", "train.dtype")
FIXED_KEYS = ("memory.kind", "memory.layers")


class Settings(NamedTuple):
    """What an inference command takes from its command line besides the checkpoint."""

    overrides: tuple[str, ...] = ()  # key=value: the kind's memory options, eval.*, run.device, train.dtype
    device: str | None = None  # --device auto|cpu|cuda; default auto, whatever device trained the run
    dtype: str | None = None  # --dtype auto|fp32|bf16 (train.dtype: the precision policy, precision.py)
    tokenizer: str | None = None  # --tokenizer PATH; default the checkpoint's own copy


class Loaded(NamedTuple):
    """One variant of an opened checkpoint, ready to run."""

    cfg: Any  # RunConfig, with the inference settings applied
    model: torch.nn.Module  # Decoder, eval mode, on `device`
    device: torch.device


def memory_overrides(kind: str, schedule: str | None, samples: int | None) -> list[str]:
    """`key=value` overrides for --schedule/--samples; only Elastic Memory has a read schedule."""
    out = []
    if schedule is not None:
        out.append(f"memory.schedule={schedule}")
    if samples is not None:
        out.append(f"memory.samples={samples}")
    if out and kind != "elastic":
        raise UsageError(f"--schedule/--samples apply to memory.kind=elastic; this checkpoint has memory.kind={kind}")
    return out


def check_overrides(overrides: list[str] | tuple[str, ...]) -> None:
    """UsageError (exit 2) for a key=value a trained model cannot take."""
    for item in overrides:
        key = item.partition("=")[0]
        if key in FIXED_KEYS or key.startswith(tuple(k + "." for k in FIXED_KEYS)):
            raise UsageError(f"{item}: {key} is fixed by the checkpoint's weights (train another run to change it)")
        if not key.startswith(INFERENCE_KEYS):
            raise UsageError(f"{item}: {key} cannot be set for a trained model; key=value here takes the memory "
                             f"kind's options (e.g. memory.schedule=exponential), eval.*, run.device and train.dtype")


def overrides_for(kind: str, settings: Settings, schedule: str | None = None, samples: int | None = None) -> list[str]:
    """The overrides applied to a checkpoint's config: the user's key=value, then the flags. The
    device is --device, else a run.device=... given here, else auto: a run trained on CUDA loads on a
    CPU-only machine (run.device in config.yaml says where it trained, not where it may run)."""
    check_overrides(settings.overrides)
    out = [*settings.overrides, *memory_overrides(kind, schedule, samples)]
    if settings.device is not None:
        out.append(f"run.device={settings.device}")
    elif not any(o.startswith("run.device=") for o in settings.overrides):
        out.append("run.device=auto")
    if settings.dtype is not None:
        out.append(f"train.dtype={settings.dtype}")
    return out


def configure(ckpt: Checkpoint, settings: Settings, schedule: str | None = None, samples: int | None = None):
    """The checkpoint's RunConfig with the inference settings (and --schedule/--samples) applied;
    UsageError (exit 2) for a setting it cannot take."""
    overrides = overrides_for(ckpt.config.memory.kind, settings, schedule, samples)
    return with_overrides(ckpt.config, overrides, "the checkpoint's config.yaml")


def load(ckpt: Checkpoint, settings: Settings = Settings(), schedule: str | None = None,
         samples: int | None = None) -> Loaded:
    """One variant of an opened checkpoint: the model rebuilt with the inference settings, its
    weights from `ckpt.weights` (test-time memory options such as the read schedule change no
    weight), in eval mode on its device. DataError when the options change which weights exist."""
    cfg = configure(ckpt, settings, schedule, samples)
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt.weights, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise DataError(f"checkpoint {ckpt.path} does not fit the model built from its config and overrides: "
                        f"{first}") from None
    device = precision.pick_device(cfg.run.device)
    return Loaded(cfg, model.to(device).eval(), device)


def load_tokenizer(ckpt: Checkpoint, cfg: Any):
    """The checkpoint's tokenizer (`Checkpoint.tokenizer`, required here), checked against the model's
    vocabulary (DataError, exit 3)."""
    path = ckpt.require_tokenizer()
    tokenizer = Tokenizer.load(path)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise DataError(f"tokenizer {path} has {tokenizer.vocab_size} pieces, the model {cfg.model.vocab_size}")
    return tokenizer


def load_checkpoint(path: str | Path, settings: Settings = Settings()) -> Loaded:
    """Open a run or checkpoint directory and load its one variant (a caller with several variants
    opens it once with `open_checkpoint` and calls `load` for each)."""
    return load(checkpoint.open_checkpoint(path, settings.tokenizer), settings)
