"""Checkpoint file checksums: COMPLETE records the sha256 of every file at save time; `verify`
re-hashes them, so a truncated or corrupted file is a DataError (exit 3) naming it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from elastic_cli.errors import DataError

CKPT_FILES = ("model.safetensors", "optimizer.pt", "train_state.json", "config.yaml")
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
