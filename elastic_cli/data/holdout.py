"""Non-empty validation and test splits for small collections (`elastic prepare`).

Splits are drawn per document from a hash of its name, so six long books with `--val-frac 0.05`
usually all land in `train` and nothing can be evaluated. After the draw:
- with at least 3 documents, an empty split that was asked for (frac > 0) gets the train document
  whose hash draw came closest to it (deterministic; train keeps at least one document);
- with 1 or 2 documents, the tail of the longest document (frac of its tokens, at least one) is
  held out as a separate document `<name>#<split>-tail`.
"""
from __future__ import annotations

import hashlib

import numpy as np

SPLITS = ("val", "test")


def draw(name: str) -> float:
    """The uniform draw in [0, 1) behind `store.split_of` (same hash)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2**64


def fill_empty_splits(names: list[str], splits: list[str], fracs: dict[str, float]) -> tuple[list[str], list[str]]:
    """(new splits, notes): each requested split that is empty takes one train document, while at
    least one train document remains. The val document is the train one with the smallest draw,
    the test one the next (their draws are the closest to the val and test ranges)."""
    splits, notes = list(splits), []
    for split in SPLITS:
        train = [i for i, s in enumerate(splits) if s == "train"]
        if fracs[split] <= 0 or split in splits or len(train) < 2:
            continue
        pick = min(train, key=lambda i: draw(names[i]))
        splits[pick] = split
        notes.append(f"split {split!r} was empty: moved document {names[pick]!r} from train to {split}")
    return splits, notes


def cut_tails(ids: np.ndarray, fracs: dict[str, float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(head, {split: tail}): the requested splits' tails (frac of the tokens each, at least one;
    val before test in the text), leaving at least one token in the head."""
    n, tails = len(ids), {}
    sizes = {s: max(1, round(fracs[s] * n)) for s in SPLITS if fracs[s] > 0}
    if sum(sizes.values()) >= n:
        return ids, {}
    end = n
    for split in reversed(SPLITS):
        if split in sizes:
            tails[split] = ids[end - sizes[split]:end]
            end -= sizes[split]
    return ids[:end], {s: tails[s] for s in SPLITS if s in tails}
