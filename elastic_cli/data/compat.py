"""The one check that a model and prepared data agree: vocabulary size and tokenizer (train, eval).

The model's tokenizer is `data.tokenizer` of its config when that file is here, else what its
training data's meta.json records. A mismatch is a DataError (exit 3); a run that records no
tokenizer at all cannot be checked (a warning text is returned for the caller to show).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from elastic_cli.data.tokenizer import file_sha256
from elastic_cli.errors import DataError


def model_tokenizer(cfg: Any) -> tuple[Path | None, str | None]:
    """(tokenizer file, sha256) the model was trained with; either may be None when the run does not say."""
    meta_path = Path(cfg.data.path) / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    if cfg.data.tokenizer is not None and Path(cfg.data.tokenizer).is_file():
        path = Path(cfg.data.tokenizer)
        return path, file_sha256(path.read_bytes())
    recorded = meta.get("tokenizer")
    path = Path(recorded) if isinstance(recorded, str) and Path(recorded).is_file() else None
    return path, meta.get("tokenizer_sha256") or (file_sha256(path.read_bytes()) if path else None)


def check_data(cfg: Any, meta: dict, data_dir: str | Path, tokenizer: Path | None = None) -> str | None:
    """DataError unless the data in data_dir (its meta.json) was made for this model; returns a
    warning text when the run records no tokenizer to compare with. `tokenizer`: the model's
    tokenizer file when the caller knows it (a checkpoint's own copy), else `model_tokenizer(cfg)`."""
    if meta.get("vocab_size") != cfg.model.vocab_size:
        raise DataError(f"model.vocab_size={cfg.model.vocab_size} but {data_dir}/meta.json has "
                        f"vocab_size={meta.get('vocab_size')}: the data was made with another tokenizer")
    path, sha = (tokenizer, file_sha256(Path(tokenizer).read_bytes())) if tokenizer else model_tokenizer(cfg)
    if sha is None:
        return f"the run records no tokenizer; cannot check that {data_dir} was made with the model's tokenizer"
    if sha != meta.get("tokenizer_sha256"):
        made = meta.get("tokenizer") or "a tokenizer"
        raise DataError(f"{data_dir} was prepared with {made} (sha256 {str(meta.get('tokenizer_sha256'))[:12]}), "
                        f"but the model's tokenizer is {path or 'another one'} (sha256 {sha[:12]}): prepare the "
                        f"data with the model's tokenizer")
    return None
