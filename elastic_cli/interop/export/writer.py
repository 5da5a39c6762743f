"""`elastic export --ckpt RUN --out DIR`: a folder `transformers` loads with
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` and `AutoTokenizer`.

The folder is built in a temporary sibling and renamed into place, so DIR is never half-written.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from elastic_cli import __version__, console
from elastic_cli.runs import inference
from elastic_cli.runs.checkpoint import Checkpoint, open_checkpoint
from elastic_cli.atomic import replace_tree
from elastic_cli.config import to_dict
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import DataError, UsageError
from elastic_cli.interop.export.card import model_card

# Kinds whose export is checked against elastic (tests/interop/test_export.py: logits, greedy generation).
# A kind missing here (a new one) is refused until it is added to that test.
EXPORTABLE = ("none", "elastic", "xl", "memorizing", "melodi", "rmt", "armt", "infinity", "caching")
HF_HINT = "pip install 'elastic-cli[hf]' (or: pip install transformers)"


def require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UsageError(f"export needs the transformers package: {HF_HINT}") from None


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: not empty; pass --overwrite to replace it")
    existing = next((p for p in out.parents if p.exists()), Path("."))  # missing folders are created
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {existing} is not a writable directory")


@dataclass(frozen=True)
class ExportOptions:
    """Everything `elastic export` takes (the CLI builds it)."""

    ckpt: str  # a run or checkpoint directory
    out: str  # the folder to write
    overwrite: bool = False  # replace a non-empty --out
    tokenizer: str | None = None  # default: the copy the checkpoint carries
    dtype: str = "fp32"  # the weights' precision in model.safetensors: fp32 (as trained) or bf16 (half the size)


def export(opts: ExportOptions) -> Path:
    """Write the export folder (creating missing parent folders); returns its path."""
    require_transformers()
    out_dir = Path(opts.out)
    ckpt = open_checkpoint(opts.ckpt, opts.tokenizer)
    if ckpt.config.memory.kind not in EXPORTABLE:
        raise UsageError(f"memory.kind={ckpt.config.memory.kind} is not exported yet: its Hugging Face model has not "
                         f"been checked against elastic (exported kinds: {', '.join(EXPORTABLE)})")
    tok_path = ckpt.require_tokenizer()
    check_out(out_dir, opts.overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(ckpt, tok_path, tmp, opts.dtype)
        replace_tree(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write(ckpt: Checkpoint, tok_path: Path, tmp: Path, dtype: str = "fp32") -> None:
    from transformers import GenerationConfig  # optional (elastic-cli[hf]): checked by require_transformers

    from elastic_cli.interop.export.configuration_elastic import ElasticConfig  # these import transformers
    from elastic_cli.interop.export.modeling_elastic import ElasticForCausalLM
    from elastic_cli.interop.export.tokenization_elastic import ElasticTokenizer

    cfg, model = ckpt.config, inference.load(ckpt, inference.Settings(device="cpu")).model
    tok = Tokenizer.load(tok_path)
    if tok.vocab_size != cfg.model.vocab_size:
        raise DataError(f"tokenizer {tok_path} has {tok.vocab_size} pieces, the model {cfg.model.vocab_size}")
    config = ElasticConfig(elastic=to_dict(cfg), elastic_version=__version__, vocab_size=cfg.model.vocab_size,
                           segment_len=cfg.model.segment_len, memory_kind=cfg.memory.kind,
                           bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    ElasticConfig.register_for_auto_class()
    ElasticForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    ElasticTokenizer.register_for_auto_class("AutoTokenizer")
    hf = ElasticForCausalLM(config)
    hf.decoder.load_state_dict(model.state_dict(), strict=True)
    hf.generation_config = GenerationConfig(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                                            pad_token_id=tok.pad_id, do_sample=False, max_new_tokens=128)
    if dtype == "bf16":
        hf.to(torch.bfloat16)
    tmp.mkdir(parents=True)
    hf.save_pretrained(tmp)
    ElasticTokenizer(vocab_file=str(tok_path)).save_pretrained(tmp)
    (tmp / "README.md").write_text(model_card(cfg, ckpt.path, tok), encoding="utf-8")
    console.info(f"exported {ckpt.path} ({cfg.memory.kind} memory) as a Hugging Face model")
