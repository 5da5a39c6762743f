"""SentencePiece tokenizers: training on a bounded sample of a corpus, and the `Tokenizer` wrapper.

The special ids are fixed here, in one place, for every model `elastic` trains and ships:
pad, bos (document start), eos (document end), unk (never produced: byte fallback covers every
byte) and the file separator that precedes each file's path header inside a repository document.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Iterable

import numpy as np
import sentencepiece as spm

from elastic_cli.errors import DataError, UsageError

PAD_ID, BOS_ID, EOS_ID, UNK_ID, FILE_SEP_ID = 0, 1, 2, 3, 4
PAD, BOS, EOS, UNK, FILE_SEP = "<pad>", "<s>", "</s>", "<unk>", "<|file|>"
KINDS = ("books", "code")
MAX_LINE_CHARS = 8192     # longer lines are cut before sampling (sentencepiece's max_sentence_length)


def sample_lines(texts: Iterable[str], k: int, seed: int) -> list[str]:
    """Reservoir sample (Algorithm R) of k non-empty lines: memory O(k) whatever the corpus size."""
    rng = random.Random(seed)
    reservoir: list[str] = []
    seen = 0
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            line = line[:MAX_LINE_CHARS]
            seen += 1
            if len(reservoir) < k:
                reservoir.append(line)
            else:
                j = rng.randrange(seen)
                if j < k:
                    reservoir[j] = line
    return reservoir


def trainer_options(vocab_size: int, kind: str) -> dict:
    """SentencePiece settings: exact round trip (identity, no dummy prefix, whitespace kept)."""
    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return dict(
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=0.9995 if kind == "books" else 1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=MAX_LINE_CHARS * 4,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        pad_piece=PAD, bos_piece=BOS, eos_piece=EOS, unk_piece=UNK,
        user_defined_symbols=[FILE_SEP],
        num_threads=2,
        minloglevel=2,
    )


def train(texts: Iterable[str], vocab_size: int, out: Path, kind: str, sample: int, seed: int) -> int:
    """Train a model on a reservoir sample of `sample` lines; writes `out` atomically. Returns lines used."""
    opts = trainer_options(vocab_size, kind)
    lines = sample_lines(texts, sample, seed)
    if not lines:
        raise DataError("no text to train a tokenizer on")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_prefix=str(tmp), shuffle_input_sentence=True, **opts)
    except RuntimeError as e:
        raise DataError(f"sentencepiece could not train {out}: {str(e).splitlines()[0]}") from None
    Path(str(tmp) + ".vocab").unlink(missing_ok=True)
    Path(str(tmp) + ".model").replace(out)
    return len(lines)


def file_sha256(blob: bytes) -> str:
    """A tokenizer's identity: the sha256 of its .model file's bytes (recorded in meta.json)."""
    return hashlib.sha256(blob).hexdigest()


class Tokenizer:
    """A loaded SentencePiece model with elastic's special ids."""

    pad_id, bos_id, eos_id, unk_id, file_sep_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID, FILE_SEP_ID
    file_sep = FILE_SEP

    def __init__(self, sp: spm.SentencePieceProcessor, sha256: str, path: Path):
        self._sp, self.sha256, self.path = sp, sha256, path

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer not found: {path}")
        blob = path.read_bytes()
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(blob)
        except (RuntimeError, OSError, TypeError):
            raise DataError(f"not a sentencepiece model: {path}") from None
        if sp.get_piece_size() == 0:
            raise DataError(f"not a sentencepiece model: {path}")
        found = (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.piece_to_id(FILE_SEP))
        if found != (PAD_ID, BOS_ID, EOS_ID, FILE_SEP_ID):
            raise DataError(f"{path}: special ids (pad, bos, eos, file) are {found}, elastic needs "
                            f"{(PAD_ID, BOS_ID, EOS_ID, FILE_SEP_ID)}; train it with `elastic tokenizer train`")
        return cls(sp, file_sha256(blob), path)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special ids (pad/bos/eos) decode to nothing, the file separator to its symbol."""
        return self._sp.decode([int(i) for i in ids])

    def piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def cuts(self) -> tuple[bool, bool]:
        """(newlines, spaces): where text can be cut so that encoding the pieces gives the tokens of
        the whole. No piece holds a newline -> after any newline; no piece holds a space after another
        character -> before a space that follows a non-space (every path of the unigram lattice passes
        through such a point, so the best one is the best of each side)."""
        pieces = [self._sp.id_to_piece(i) for i in range(self.vocab_size)]
        return (not any("\n" in p for p in pieces), not any("\u2581" in p.lstrip("\u2581") for p in pieces))

    def decoded_bytes(self, ids: np.ndarray, chunk: int = 1 << 18) -> int:
        """len(decode(ids).encode()) decoding `chunk` ids at a time: a chunk ends after a piece that is
        not a byte, or is an ASCII byte, so no UTF-8 sequence is cut (the slow twin: the whole decode)."""
        if not hasattr(self, "_ends_char"):
            byte = [self._sp.is_byte(i) for i in range(self.vocab_size)]
            self._ends_char = np.asarray([not b or int(self.piece(i)[3:5], 16) < 0x80
                                          for i, b in enumerate(byte)], dtype=bool)
        n, start, total = len(ids), 0, 0
        while start < n:
            end = min(start + chunk, n)
            while end < n and not self._ends_char[int(ids[end - 1])]:
                end += 1
            total += len(self._sp.decode(np.asarray(ids[start:end]).tolist()).encode("utf-8"))
            start = end
        return total
