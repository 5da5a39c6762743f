"""`elastic tokenizer train`: a SentencePiece model from a line sample of source files (data/tokenizer.py trains it)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from elastic_cli.data.sources import collect, read_text
from elastic_cli.data.tokenizer import Tokenizer, train
from elastic_cli.errors import UsageError


class TokenizerOptions(NamedTuple):
    """How `elastic tokenizer train` samples and trains (its flags)."""

    kind: str = "books"  # books | code: the normalisation and splitting rules (data/tokenizer.py)
    sample: int = 1_000_000  # lines sampled (reservoir)
    seed: int = 0
    corpus: str | None = None  # a built-in corpus instead of (or besides) the sources
    force: bool = False  # replace an existing `out`


def train_from_sources(sources: list[str], vocab_size: int, out: str,
                       opts: TokenizerOptions = TokenizerOptions()) -> tuple[Tokenizer, int]:
    """`elastic tokenizer train`: a model from a line sample of the text files in `sources`. An
    existing `out` (e.g. a shipped tokenizer that prepared data depends on) is replaced only with `force`."""
    kind, sample, seed, corpus, force = opts
    if Path(out).exists() and not force:
        raise UsageError(f"--out {out} exists (data prepared with it would no longer match): choose another path "
                         f"or pass --force to replace it")

    if vocab_size < 300:
        raise UsageError(f"--vocab-size must be at least 300 (256 byte pieces + specials), got {vocab_size}")
    if not sources and corpus is None:
        raise UsageError("give SOURCES or --corpus")
    col = collect(sources, corpus=corpus)
    texts = (read_text(p) for d in col.docs for p in d.paths)
    n = train(texts, vocab_size, Path(out), kind, sample, seed)
    return Tokenizer.load(out), n
