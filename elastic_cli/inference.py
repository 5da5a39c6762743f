"""What `elastic eval` and `elastic generate` share: a checkpoint loaded for inference with
test-time memory options, its tokenizer, the device, and output files written atomically."""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch

from elastic_cli import distributed
from elastic_cli.data.tokenizer import file_sha256
from elastic_cli.errors import DataError, UsageError


class Loaded(NamedTuple):
    cfg: Any  # RunConfig
    model: torch.nn.Module  # Decoder, eval mode, on `device`
    ckpt: Path
    device: torch.device


def memory_overrides(kind: str, sampling: str | None, samples: int | None) -> list[str]:
    """`key=value` overrides for --sampling/--samples; only Elastic Memory has a sampling schedule."""
    out = []
    if sampling is not None:
        out.append(f"memory.sampling={sampling}")
    if samples is not None:
        out.append(f"memory.samples={samples}")
    if out and kind != "elastic":
        raise UsageError(f"--sampling/--samples apply to memory.kind=elastic; this checkpoint has memory.kind={kind}")
    return out


def read_config(ckpt: str | Path) -> tuple[Path, Any]:
    """(checkpoint dir, its RunConfig) without loading weights; DataError (exit 3) when the path is
    missing or incomplete or its config is not one this version can build."""
    from elastic_cli import checkpoint
    from elastic_cli.config import load_config

    path = checkpoint.resolve(ckpt)
    try:
        return path, load_config(path / "config.yaml")
    except UsageError as e:
        raise DataError(f"checkpoint {path} has a config this version cannot use: {e}") from None


def load(ckpt: str | Path, sampling: str | None = None, samples: int | None = None) -> Loaded:
    """The model of a run or checkpoint directory, rebuilt with the test-time memory options."""
    from elastic_cli import checkpoint

    path, saved = read_config(ckpt)
    cfg, model, path = checkpoint.load_for_inference(path, memory_overrides(saved.memory.kind, sampling, samples))
    device = distributed.pick_device(cfg.run.device)
    return Loaded(cfg, model.to(device).eval(), path, device)


def autocast(cfg: Any, device: torch.device):
    """A fresh context: bf16 autocast on CUDA unless the run says fp32 (memory states stay fp32)."""
    if device.type == "cuda" and cfg.train.dtype in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def model_tokenizer(cfg: Any) -> tuple[Path | None, str | None]:
    """(tokenizer file, sha256) the model was trained with: data.tokenizer of its config, else what
    the training data's meta.json records. Either may be None when the run does not say."""
    meta_path = Path(cfg.data.path) / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    if cfg.data.tokenizer is not None and Path(cfg.data.tokenizer).is_file():
        path = Path(cfg.data.tokenizer)
        return path, file_sha256(path.read_bytes())
    recorded = meta.get("tokenizer")
    path = Path(recorded) if isinstance(recorded, str) and Path(recorded).is_file() else None
    return path, meta.get("tokenizer_sha256") or (file_sha256(path.read_bytes()) if path else None)


def check_data_matches(cfg: Any, meta: dict, data_dir: Path) -> str | None:
    """DataError (exit 3) when the data was not made with the model's tokenizer; returns a warning
    text when the run records no tokenizer to compare with."""
    if meta.get("vocab_size") != cfg.model.vocab_size:
        raise DataError(f"{data_dir}/meta.json has vocab_size={meta.get('vocab_size')} but the model has "
                        f"model.vocab_size={cfg.model.vocab_size}: the data was made with another tokenizer")
    _, sha = model_tokenizer(cfg)
    if sha is None:
        return f"the run records no tokenizer; cannot check that {data_dir} was made with the model's tokenizer"
    if sha != meta.get("tokenizer_sha256"):
        raise DataError(f"{data_dir} was prepared with tokenizer sha256 {str(meta.get('tokenizer_sha256'))[:12]}, "
                        f"the model was trained with {sha[:12]}: prepare the data with the model's tokenizer")
    return None


def check_writable(path: str | Path, flag: str) -> Path:
    """UsageError (exit 2) unless `path` can be created or replaced (checked before any work)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")
    return path


