"""Pydantic validation errors -> one line each, naming the dotted key, the file that set it and,
for unknown keys or names, a difflib "did you mean" (or the memory kinds that take the key)."""
from __future__ import annotations

import difflib
import typing
from typing import Any, Literal

from pydantic import BaseModel

from elastic_cli.memory import MemoryOptions
from elastic_cli.memory import options as memory_options

from .schema import RunConfig

RENAMED = {"memory.sampling": "memory.schedule"}  # old key -> new key (old checkpoints are migrated)


# Names other toolkits (litgpt, torchtune, nanoGPT, HF) use for our keys: "did you mean" finds them
# where spelling similarity cannot (learning_rate is closer in letters to eval_batches than to lr).
SYNONYMS = {
    "learning_rate": "lr", "max_lr": "lr", "peak_lr": "lr", "lr_min": "min_lr", "min_learning_rate": "min_lr",
    "warmup_steps": "warmup", "warmup_iters": "warmup", "max_steps": "steps", "num_steps": "steps",
    "max_iters": "steps", "total_steps": "steps", "train_steps": "steps", "iters": "steps",
    "batch_size": "global_batch", "global_batch_size": "global_batch", "micro_batch_size": "micro_batch",
    "grad_clip_norm": "grad_clip", "max_grad_norm": "grad_clip", "clip_grad_norm": "grad_clip",
    "gradient_clipping": "grad_clip", "precision": "dtype", "mixed_precision": "dtype", "wd": "weight_decay",
    "block_size": "segment_len", "seq_len": "segment_len", "max_seq_len": "segment_len", "context_length": "segment_len",
    "n_embd": "d_model", "dim": "d_model", "hidden_size": "d_model", "embed_dim": "d_model",
    "num_layers": "n_layer", "n_layers": "n_layer", "num_hidden_layers": "n_layer", "depth": "n_layer",
    "num_heads": "n_head", "n_heads": "n_head", "num_attention_heads": "n_head", "heads": "n_head",
    "intermediate_size": "mlp_hidden", "ffn_dim": "mlp_hidden", "hidden_dim": "mlp_hidden", "vocab": "vocab_size",
    "out_dir": "dir", "output_dir": "dir", "run_dir": "dir", "logger": "loggers", "report_to": "loggers",
    "eval_interval": "eval_every", "eval_steps": "eval_every", "save_interval": "save_every",
    "save_steps": "save_every", "log_interval": "log_every", "logging_steps": "log_every",
    "save_total_limit": "keep_last", "keep_latest_k": "keep_last", "gradient_checkpointing": "checkpoint_segments",
    "bptt": "bptt_segments", "type": "kind", "memory": "kind",
}


def explain(err: dict, origin: dict[str, str], recipe: str, tree: dict) -> str:
    parts = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function")))]
    loc = [str(p) for p in parts if not isinstance(p, int)]  # keys only: list positions are shown as [i]
    shown = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts))
    dotted = ".".join(loc)
    below = [src for key, src in origin.items() if key.startswith(dotted + ".")]
    where = origin.get(dotted) or (below[0] if below else None) or origin.get(".".join(loc[:-1])) or recipe
    if err["type"] == "extra_forbidden":
        if dotted in RENAMED:
            return f"unknown key {dotted} in {where}: it is now {RENAMED[dotted]}"
        return f"unknown key {dotted} in {where}{_owners(loc, tree) or suggest_key(loc, tree)}"
    if err["type"] == "missing":
        return f"missing key {dotted} (not set in {recipe} or its base recipes)"
    given = err.get("input")
    if err["type"] == "literal_error":
        choices = choices_at(loc, tree)
        hint = did_you_mean(str(given), choices)
        return f"{shown}={given!r} in {where}: choose one of {', '.join(choices)}{hint}"
    return f"{shown}={given!r} in {where}: {err['msg'].lower()}"


def did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def suggest_key(loc: list[str], tree: dict) -> str:
    """'; did you mean ...?' for an unknown key: another toolkit's name for one of ours, the same
    name in another section, else the closest name of this section (compared without the section,
    which every candidate shares)."""
    name, parent = loc[-1], loc[:-1]
    prefix = ".".join(parent) + "." if parent else ""
    fields = list(section_at(parent, tree).model_fields)
    if name in SYNONYMS and SYNONYMS[name] in fields:
        return f"; did you mean {prefix + SYNONYMS[name]!r}?"
    if len(parent) == 1:
        for section, field in RunConfig.model_fields.items():
            cls = field.annotation
            if section != parent[0] and isinstance(cls, type) and issubclass(cls, BaseModel):
                if name in cls.model_fields or SYNONYMS.get(name) in cls.model_fields:
                    key = name if name in cls.model_fields else SYNONYMS[name]
                    return f"; did you mean '{section}.{key}'? ({key} is in section {section})"
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    return f"; did you mean {prefix + close[0]!r}?" if close else f" (keys of {prefix.rstrip('.') or 'a recipe'}: " \
        f"{', '.join(fields)})"


def _owners(loc: list[str], tree: dict) -> str:
    """For an unknown memory key: the kinds that take it (the chosen kind takes other keys)."""
    if len(loc) != 2 or loc[0] != "memory":
        return ""
    kinds = [k for k, cls in memory_options.registry().items() if loc[1] in cls.Options.model_fields]
    kind = (tree.get("memory") or {}).get("kind", memory_options.DEFAULT_KIND)
    return f" (an option of memory.kind={'|'.join(kinds)}, not {kind})" if kinds else ""


def section_at(loc: list[str], tree: dict) -> type[BaseModel]:
    """The model that validates the section at loc (a memory section: its kind's options)."""
    cls: type[BaseModel] = RunConfig
    node: Any = tree
    for part in loc:
        field = cls.model_fields.get(part)
        node = node.get(part, {}) if isinstance(node, dict) else {}
        if field is None:
            break
        if field.annotation is MemoryOptions or typing.get_origin(field.annotation) is typing.Annotated:
            cls = memory_options.resolve(node)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            cls = field.annotation
        else:
            break
    return cls


def choices_at(loc: list[str], tree: dict) -> list[str]:
    field = section_at(loc[:-1], tree).model_fields.get(loc[-1])
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
