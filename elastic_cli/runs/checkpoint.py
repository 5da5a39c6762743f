"""Atomic, checksummed checkpoints (docs/internals.md, "Runs and checkpoints"); the run directory
around them is rundir.py.

    runs/<name>/checkpoints/step_00000100/{model.safetensors, optimizer.pt, train_state.json, config.yaml, COMPLETE}
    runs/<name>/checkpoints/step_00000100/dcp/   train.parallel=fsdp: the model and optimizer through
                                                 torch.distributed.checkpoint (one file per rank), instead of optimizer.pt
    runs/<name>/checkpoints/latest          name of the newest complete checkpoint

A checkpoint is written into step_X.tmp/, COMPLETE last (it records the sha256 of every file), then
renamed; a directory without COMPLETE (or still named .tmp) is never loaded, and one whose files no
longer match their recorded sha256 is refused (exit 3, naming the file) or, for a run directory,
skipped for the newest checkpoint that verifies. Deleting one (keep_last, --overwrite) renames it
aside first, so an interrupted delete never leaves COMPLETE beside missing files. Weights are saved
from the unwrapped module (no `module.`/`_orig_mod.` prefixes), so DDP, compiled and plain runs
share one format. A checkpoint with a `dcp/` folder (train.parallel=fsdp, train/fsdp.py) is resumed
from it by any number of processes, sharded or not; its model.safetensors (gathered on rank 0) is
what eval, generate and export read, as for any other checkpoint.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from elastic_cli import console
from elastic_cli.atomic import remove_tree, write_atomic
from elastic_cli.build import build_model
from elastic_cli.config import load_config
from elastic_cli.data.compat import model_tokenizer
from elastic_cli.errors import DataError, UsageError

CKPT_FILES = ("model.safetensors", "optimizer.pt", "train_state.json", "config.yaml")
SHARDS = "dcp"  # a sharded checkpoint's folder: DCP files of the model and optimizer, written by every rank
TOKENIZER_FILE = "tokenizer.model"  # the run's tokenizer, copied (checkpoints saved before it carried one lack it)
OPTIONAL_FILES = (TOKENIZER_FILE,)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify(ckpt: Path) -> None:
    """DataError (exit 3) naming the first file of a checkpoint that is missing or whose sha256
    differs from the one COMPLETE recorded at save time (checkpoints from before checksums: presence only).
    It reads every file: callers verify a checkpoint once and pass the result on."""
    ckpt = Path(ckpt)
    _check_files(ckpt, ckpt / "COMPLETE")


def _check_files(ckpt: Path, marker: Path) -> None:
    text = marker.read_text(encoding="utf-8", errors="replace").strip()
    try:
        recorded = json.loads(text)["sha256"] if text else {n: None for n in CKPT_FILES}
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"checkpoint file {marker} is corrupted (not the JSON written at save time)") from None
    for name, sha in recorded.items():
        f = ckpt / name
        if not f.is_file():
            raise DataError(f"checkpoint file {f} is missing")
        if sha is not None and file_sha256(f) != sha:
            raise DataError(f"checkpoint file {f} is truncated or corrupted (its sha256 differs from the one "
                            f"recorded when it was saved)")


_STEP = re.compile(r"^step_(\d+)$")


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (incomplete and .tmp directories are skipped)."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.iterdir() if _STEP.match(p.name) and (p / "COMPLETE").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))


def resolve(path: str | Path) -> Path:
    """A run directory (its newest checkpoint that verifies) or a checkpoint directory (verified)
    -> checkpoint dir; DataError (exit 3) naming what is missing, incomplete or corrupted."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if (path / "COMPLETE").is_file() and (path / "model.safetensors").is_file():
        verify(path)
        return path
    if _STEP.match(path.name) or path.name.endswith(".tmp"):
        raise DataError(f"checkpoint {path} is incomplete (no COMPLETE file); it was not fully written")
    found = newest_verified(path)
    if found is None:
        raise DataError(f"no complete checkpoint in {path}")
    return found


def newest_verified(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run whose files match their recorded sha256; newer ones
    that do not are reported and skipped. None when the run has no complete checkpoint; DataError
    when it has some but none verifies."""
    found, reasons = complete_checkpoints(run_dir), []
    for ckpt in reversed(found):
        try:
            verify(ckpt)
        except DataError as e:
            reasons.append(str(e))
            console.warn(f"skipping {ckpt.name}: {e}")
            continue
        return ckpt
    if found:
        raise DataError(f"no checkpoint in {run_dir} verifies (newest: {reasons[0]}); "
                        f"start over with --overwrite")
    return None


def save(run_dir: Path, model: nn.Module | dict, optimizer: torch.optim.Optimizer | None, train_state: dict,
         config_yaml: str, keep_last: int, tokenizer: Path | None = None) -> Path:
    """Write checkpoints/step_X (X = train_state["step"]) atomically (rank 0 only), update `latest`, drop
    the oldest beyond keep_last.
    `model`: the module, or its state dict (a sharded model's, gathered on rank 0).
    `tokenizer` (the run's .model file) is copied in as tokenizer.model and checksummed with the rest,
    so the checkpoint is self-contained: it runs from any directory or machine.
    `optimizer` None: every rank has written the model and optimizer into step_X.tmp/dcp/ (`prepare_shards`,
    then train/fsdp.save); they are kept, checksummed with the rest, and no optimizer.pt is written.
    A write error (disk full, quota, read-only) -> DataError; nothing new is marked complete and the
    previous checkpoints are untouched."""
    root = Path(run_dir) / "checkpoints"
    final = root / step_name(train_state["step"])
    tmp = root / (final.name + ".tmp")
    try:
        _write_files(tmp, model, optimizer, train_state, config_yaml, tokenizer, shards=optimizer is None)
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save reports a failed write as RuntimeError
        raise save_failed(run_dir, train_state["step"], e) from None
    if final.exists():
        remove_tree(final)
    os.replace(tmp, final)
    write_atomic(root / "latest", (final.name + "\n").encode())
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        remove_tree(old)
    for stale in [*root.glob("step_*.tmp"), *root.glob("step_*.del")]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def prepare_shards(run_dir: Path, step: int) -> Path:
    """Rank 0, before every rank writes its shards: an empty step_X.tmp/; returns its dcp/ folder."""
    tmp = Path(run_dir) / "checkpoints" / (step_name(step) + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / SHARDS).mkdir(parents=True)
    except OSError as e:
        raise save_failed(run_dir, step, e) from None
    return tmp / SHARDS


def save_failed(run_dir: Path, step: int, e: BaseException) -> DataError | KeyboardInterrupt:
    """A write of checkpoint `step` failed (here or, sharded, on any rank): its .tmp directory removed,
    and the DataError to raise (KeyboardInterrupt when Ctrl-C is behind the error)."""
    final = Path(run_dir) / "checkpoints" / step_name(step)
    shutil.rmtree(final.with_name(final.name + ".tmp"), ignore_errors=True)
    if _interrupted(e):  # Ctrl-C inside torch.save can surface as the writer's RuntimeError: still 130
        return KeyboardInterrupt()
    previous = complete_checkpoints(run_dir)
    kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
    reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:200]
    return DataError(f"could not write checkpoint {final}: {reason}; nothing was marked complete and {kept}")


def has_shards(ckpt: Path) -> bool:
    """True for a checkpoint written by train.parallel=fsdp (model and optimizer in dcp/)."""
    return (Path(ckpt) / SHARDS / ".metadata").is_file()


def _interrupted(e: BaseException | None) -> bool:
    """True when a KeyboardInterrupt is somewhere in the chain of exceptions behind `e`."""
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__cause__ or e.__context__
    return False


def _write_files(tmp: Path, model, optimizer, train_state: dict, config_yaml: str, tokenizer: Path | None,
                 shards: bool = False) -> None:
    """The checkpoint's files in `tmp`, fsynced, then COMPLETE with their sha256 (read back from disk).
    `shards`: tmp/dcp/ holds the ranks' DCP files (kept, checksummed) and replaces optimizer.pt."""
    if not shards:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if isinstance(model, nn.Module):
        save_model(model, str(tmp / "model.safetensors"))  # shared (tied) tensors stored once
    else:
        save_file({k: v.contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    write_atomic(tmp / "train_state.json", json.dumps(train_state).encode())
    write_atomic(tmp / "config.yaml", config_yaml.encode())
    names = tuple(n for n in CKPT_FILES if optimizer is not None or n != "optimizer.pt")
    if shards:
        names += tuple(sorted(f"{SHARDS}/{p.name}" for p in (tmp / SHARDS).iterdir() if p.is_file()))
    if tokenizer is not None:
        shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
        names += (TOKENIZER_FILE,)
    for name in names:
        _fsync(tmp / name)
    sums = {name: file_sha256(tmp / name) for name in names}
    write_atomic(tmp / "COMPLETE", json.dumps({"sha256": sums}, indent=1).encode())  # last: all above are whole


def load(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device) -> dict:
    """Load weights (and optimizer state) into the unwrapped model; return train_state. (A sharded
    checkpoint's optimizer is in dcp/: train/fsdp.load reads both.)"""
    load_weights(ckpt, model, device)
    if optimizer is not None:
        optimizer.load_state_dict(optimizer_state(ckpt))
    return train_state(ckpt)


def optimizer_state(ckpt: Path) -> dict:
    """optimizer.pt: a plain `optimizer.state_dict()` (tensors only)."""
    try:
        return torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, KeyError, EOFError, OSError) as e:
        raise DataError(f"checkpoint file {ckpt / 'optimizer.pt'} cannot be loaded: {' '.join(str(e).split())[:200]}") from None


def train_state(ckpt: Path) -> dict:
    """train_state.json (step, tokens, loader cursor, RNG states per rank, ...)."""
    try:
        return json.loads((ckpt / "train_state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise DataError(f"checkpoint file {ckpt / 'train_state.json'} is not valid JSON") from None


class Checkpoint(NamedTuple):
    """A checkpoint opened once (`open_checkpoint`): found, its files verified, its config read, its
    weights loaded on the host, its step and tokenizer known. Every variant a command builds from it
    (runs/inference.py) reuses all of them."""

    path: Path  # the checkpoint directory
    config: Any  # RunConfig as saved
    step: int | None  # the optimizer step it was saved at
    weights: dict  # name -> tensor on the CPU (the model's state dict)
    tokenizer: Path | None  # --tokenizer, else the copy it carries, else the run's data.tokenizer if here
    missing_tokenizer: str = ""  # why `tokenizer` is None (DataError text for commands that need one)

    def require_tokenizer(self) -> Path:
        if self.tokenizer is None:
            raise DataError(self.missing_tokenizer)
        return self.tokenizer


def open_checkpoint(path: str | Path, tokenizer: str | None = None) -> Checkpoint:
    """A run directory (its newest checkpoint that verifies) or a checkpoint directory, opened once.
    DataError (exit 3) when the path is missing, incomplete or corrupted, its saved config is not one
    this version can build, its weights do not fit that config, or a given --tokenizer is not the one
    it carries; UsageError (exit 2) when --tokenizer names no file."""
    ckpt = resolve(path)
    step = saved_step(ckpt)
    try:
        saved = load_config(ckpt / "config.yaml")
    except UsageError as e:
        raise DataError(f"checkpoint {ckpt} has a config this version cannot use: {e}") from None
    model = build_model(saved)
    load_weights(ckpt, model, torch.device("cpu"))
    carried = ckpt / TOKENIZER_FILE
    found, why = carried if carried.is_file() else model_tokenizer(saved)[0], ""
    if tokenizer is not None:
        found = Path(tokenizer)
        if not found.is_file():
            raise UsageError(f"--tokenizer {found}: no such file")
        if carried.is_file() and file_sha256(carried) != file_sha256(found):
            raise DataError(f"--tokenizer {found} is not the tokenizer {ckpt} was trained with ({carried}, "
                            f"which it carries); leave --tokenizer out")
    elif found is None:
        why = (f"cannot find the tokenizer of {ckpt}: the checkpoint carries none (saved before checkpoints did) "
               f"and its data.tokenizer ({saved.data.tokenizer}) is not a file here; pass --tokenizer PATH")
    return Checkpoint(ckpt, saved, step, model.state_dict(), found, why)


def saved_step(ckpt: Path) -> int | None:
    """The optimizer step a checkpoint was saved at: from its directory name, else (a checkpoint
    copied under another name) from its train_state.json; None when neither says."""
    m = _STEP.match(Path(ckpt).name)
    if m:
        return int(m.group(1))
    try:
        step = json.loads((Path(ckpt) / "train_state.json").read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def rng_state() -> dict:
    """This process's RNG states, JSON-serialisable (torch states as base64 bytes)."""
    b64 = lambda t: base64.b64encode(t.cpu().numpy().tobytes()).decode()  # noqa: E731
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "torch": b64(torch.get_rng_state()),
            "cuda": [b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    unb64 = lambda s: torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)  # noqa: E731
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(unb64(state["torch"]))
    if torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([unb64(s) for s in state["cuda"]])


def load_weights(ckpt: Path, model: nn.Module, device: torch.device) -> None:
    try:
        load_model(model, str(ckpt / "model.safetensors"), strict=True, device=str(device))
    except (RuntimeError, KeyError, ValueError, SafetensorError) as e:
        first = " ".join(str(e).split())[:300]
        raise DataError(f"checkpoint {ckpt} does not fit the model built from its config and overrides: {first}") from None


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


