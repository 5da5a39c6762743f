"""Teacher-forced scoring, memory carried from segment to segment: `read` is the one segment loop behind
`elastic eval` (`score`: whole documents), the periodic validation loss (train/validate.py), `elastic
bench`'s history passes and lm-eval's rolling log-likelihood (through `score`).

Axis legend: B documents in a batch, L segment length, V vocabulary.

Besides the NLL of every next token it keeps, for task data, the answer tokens by *distance*: the
segment index of the position that predicts an answer token minus the segment index of the fact
it needs (0: the fact is in the same segment, local attention can see it). With `gain=True` every
segment is scored a second time with empty memory; the per-token difference
NLL(memory reset every segment) - NLL(memory carried) is the long-context gain (exactly 0 for a
model without memory, and on a document's first segment).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

GAIN_THRESHOLD = 2.0  # nats; tokens that gain more are the "key tokens" (LongPPL, Fang et al. 2024, §3)


def spans_of(answer) -> list[tuple[int, int, int | None]]:
    """A document's answer spans as (start, end, source): None, one (start, end) pair, or a list."""
    if not answer:
        return []
    if len(answer) == 2 and all(isinstance(v, (int, np.integer)) for v in answer):
        return [(int(answer[0]), int(answer[1]), None)]
    return [(int(a), int(b), None if f is None else int(f)) for a, b, f in answer]


@dataclass
class Tally:
    """Running sums over scored tokens; NLL sums in float64."""

    nll: float = 0.0
    tokens: int = 0
    seg_nll: list = field(default_factory=list)  # per segment index: NLL sum
    seg_tokens: list = field(default_factory=list)  # per segment index: scored tokens
    answers: int = 0  # answer spans
    exact: int = 0  # of those, every token predicted by argmax
    answer_tokens: int = 0  # answer tokens scored
    answer_correct: int = 0  # of those, predicted by argmax
    answer_nll: float = 0.0  # NLL sum over answer tokens (a graded signal where exact match is still 0)
    by_distance: dict = field(default_factory=dict)  # distance in segments (None: unknown) -> [tokens, correct, nll]
    gain: float = 0.0  # sum over tokens of NLL(reset) - NLL(carried); only with gain=True
    gain_tokens: int = 0
    key_tokens: int = 0  # tokens whose gain exceeds GAIN_THRESHOLD
    key_nll: float = 0.0  # their NLL with memory carried
    doc_exact: dict = field(default_factory=dict)  # document index -> per answer span: every token right
    starts: list = field(default_factory=list)  # per answer span: (its first token, the argmax there)

    def add_segment(self, index: int, nll: torch.Tensor, valid: torch.Tensor) -> None:
        """nll, valid: (B, L) for segment `index` of the batch's documents."""
        while len(self.seg_nll) <= index:
            self.seg_nll.append(0.0)
            self.seg_tokens.append(0)
        total = float(nll.double()[valid].sum())
        count = int(valid.sum())
        self.nll += total
        self.tokens += count
        self.seg_nll[index] += total
        self.seg_tokens[index] += count

    def add_answers(self, all_correct: list[bool]) -> None:
        self.answers += len(all_correct)
        self.exact += sum(all_correct)

    def add_answer_tokens(self, nll: torch.Tensor, correct: torch.Tensor, distance: np.ndarray | None = None) -> None:
        """nll, correct: (n,) over answer tokens; distance: (n,) segments to their facts (-1: unknown)."""
        self.answer_tokens += int(nll.numel())
        self.answer_correct += int(correct.sum())
        self.answer_nll += float(nll.double().sum())
        distance = np.full(nll.numel(), -1) if distance is None else distance
        for d, x, ok in zip(distance.tolist(), nll.double().tolist(), correct.tolist()):
            row = self.by_distance.setdefault(None if d < 0 else int(d), [0, 0, 0.0])
            row[0], row[1], row[2] = row[0] + 1, row[1] + int(ok), row[2] + x

    def add_gain(self, carried: torch.Tensor, reset: torch.Tensor, valid: torch.Tensor,
                 threshold: float = GAIN_THRESHOLD) -> None:
        """carried, reset: (B, L) per-token NLL with memory carried / emptied before the segment."""
        gain = (reset.double() - carried.double())[valid]
        key = gain > threshold
        self.gain += float(gain.sum())
        self.gain_tokens += int(valid.sum())
        self.key_tokens += int(key.sum())
        self.key_nll += float(carried.double()[valid][key].sum())

    def start_report(self) -> dict | None:
        """How answers begin: "right", the share of spans whose first token is the argmax; "well_formed",
        the share whose argmax there begins one of the evaluated answers (right or wrong: the model
        answers in the task's format). None without answers."""
        read = [(g, p) for g, p in self.starts if g >= 0]  # a span at position 0 has no token predicting it
        if not read:
            return None
        firsts = {g for g, _ in read}
        return {"right": sum(g == p for g, p in read) / len(read),
                "well_formed": sum(p in firsts for _, p in read) / len(read), "spans": len(read)}

    def loss_by_segment(self) -> list[float | None]:
        return [s / n if n else None for s, n in zip(self.seg_nll, self.seg_tokens)]

    def distance_report(self) -> dict:
        """{"0": {"tokens", "accuracy", "loss"}, ...} sorted by distance ("unknown" last)."""
        keys = sorted((k for k in self.by_distance if k is not None)) + ([None] if None in self.by_distance else [])
        return {("unknown" if k is None else str(k)): {"tokens": self.by_distance[k][0],
                                                       "accuracy": self.by_distance[k][1] / self.by_distance[k][0],
                                                       "loss": self.by_distance[k][2] / self.by_distance[k][0]}
                for k in keys}


def batch_arrays(docs: list[np.ndarray], segment_len: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Documents -> inputs (B, S*L) long (0-padded), targets (B, S*L) (-1: no target), S segments."""
    longest = max(len(d) for d in docs)
    n_seg = -(-longest // segment_len)
    inputs = torch.zeros(len(docs), n_seg * segment_len, dtype=torch.long)  # (B, S*L)
    targets = torch.full_like(inputs, -1)  # (B, S*L)
    for row, d in enumerate(docs):
        t = torch.from_numpy(d.astype(np.int64))
        inputs[row, : len(t)] = t
        targets[row, : len(t) - 1] = t[1:]
    return inputs, targets, n_seg


class _Answers:
    """One document's answer tokens as input positions (the position that predicts each answer
    token), with their span and distance in segments, sorted by position."""

    def __init__(self, spans: list[tuple[int, int, int | None]], segment_len: int, doc: np.ndarray):
        pos, span, dist, first = [], [], [], []
        for i, (a, b, f) in enumerate(spans):
            for p in range(a - 1, b - 1):
                pos.append(p)
                span.append(i)
                dist.append(-1 if f is None else p // segment_len - f // segment_len)
                first.append(p == a - 1)
        order = np.argsort(pos, kind="stable")
        self.pos, self.span = np.asarray(pos, dtype=np.int64)[order], np.asarray(span, dtype=np.int64)[order]
        self.dist = np.asarray(dist, dtype=np.int64)[order]
        self.first = np.asarray(first, dtype=bool)[order]  # the positions that predict a span's first token
        self.wrong = np.zeros(len(spans), dtype=np.int64)  # per span: answer tokens missed
        # per span: (its first token, the argmax predicting it; -1 until read); -1, -1 for a span at position 0
        self.starts = [(int(doc[a]) if a > 0 else -1, -1) for a, _, _ in spans]

    def in_range(self, lo: int, hi: int) -> slice:
        return slice(int(np.searchsorted(self.pos, lo)), int(np.searchsorted(self.pos, hi)))


def reset_at(model, states, doc_start, s: int):
    """Empty the memory of rows whose document starts at segment s. doc_start (m, S) bool on the CPU,
    and so is the mask handed to the memories (each moves it where its leaves are; a host-side leaf,
    like Elastic Memory's t, needs no sync). No work at s = 0 (the window's states are fresh) or where
    no row starts a document: the reset builds an empty state and a select per leaf, which the hot
    path should not pay every segment."""
    if s == 0 or not bool(doc_start[:, s].any()):
        return states
    return model.reset_states(states, doc_start[:, s])


def token_nll(model, x: torch.Tensor, y: torch.Tensor, states, amp=nullcontext):
    """One segment: per-token NLL (B, l) in fp32 (0 where y is -1), the logits (B, l, V) in fp32 and the
    memory states after it. x: (B, l), l <= segment_len; y: (B, l), or shorter when the last inputs
    predict nothing (as -1)."""
    if y.shape[1] < x.shape[1]:
        y = F.pad(y, (0, x.shape[1] - y.shape[1]), value=-1)  # (B, l)
    with amp():
        logits, states = model(x, states)  # (B, l, V)
    logits = logits.float()
    return F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-1, reduction="none"), logits, states  # (B, l)


def read(model, x: torch.Tensor, y: torch.Tensor, states, amp=nullcontext, doc_start=None) -> Iterator[tuple]:
    """THE segment loop: x, y (B, T) read segment_len tokens at a time (the last segment may be
    shorter; y may end before x), memory carried from each segment to the next and emptied where `doc_start` (B, S) bool
    (CPU) says a row's document starts. Yields (s, nll (B, l), logits (B, l, V), states after segment s)."""
    L = model.segment_len
    for s, start in enumerate(range(0, x.shape[1], L)):
        if doc_start is not None:
            states = reset_at(model, states, doc_start, s)
        nll, logits, states = token_nll(model, x[:, start:start + L], y[:, start:start + L], states, amp)
        yield s, nll, logits, states


class Scoring(NamedTuple):
    """How `score` reads: the autocast context of each forward (a callable), a progress bar to update
    with scored tokens, whether to also score each segment with empty memory (the long-context gain),
    and the tokens per segment distances are counted in (None: the model's segment_len; a task's own
    unit keeps distances comparable between models with other segment lengths)."""

    amp: Callable = nullcontext
    bar: Any = None
    gain: bool = False
    distance_unit: int | None = None


@torch.no_grad()
def score(model, docs: list[np.ndarray], answers: list, batch_size: int, device: torch.device,
          how: Scoring = Scoring()) -> Tally:
    """Teacher-forced NLL of every next token of every document, memory carried per document.

    answers[i]: document i's answer spans (see `spans_of`)."""
    amp, bar, gain, distance_unit = how
    tally, L = Tally(), model.segment_len
    order = sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i))  # similar lengths share a batch
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        inputs, targets, _ = batch_arrays([docs[i] for i in rows], L)
        inputs, targets = inputs.to(device), targets.to(device)
        spans = [_Answers(spans_of(answers[i]), distance_unit or L, docs[i]) for i in rows]
        for s, nll, logits, _ in read(model, inputs, targets, model.empty_states(len(rows), device), amp):
            x, y = inputs[:, s * L : (s + 1) * L], targets[:, s * L : (s + 1) * L]  # (B, L)
            valid = y >= 0  # (B, L)
            tally.add_segment(s, nll, valid)
            if gain:
                reset, _, _ = token_nll(model, x, y, model.empty_states(len(rows), device), amp)
                tally.add_gain(nll, reset, valid)
            guess = logits.argmax(-1)  # (B, L)
            miss = ((guess != y) & valid).cpu()  # (B, L)
            guess_host = None  # copied to the host only for a segment that holds a span's first token
            for r, a in enumerate(spans):
                at = a.in_range(s * L, (s + 1) * L)
                if at.start == at.stop:
                    continue
                cols = torch.from_numpy(a.pos[at] - s * L)  # (n,)
                if a.first[at].any():
                    guess_host = guess.cpu() if guess_host is None else guess_host
                    for c, i in zip(cols[a.first[at]].tolist(), a.span[at][a.first[at]].tolist()):
                        a.starts[i] = (a.starts[i][0], int(guess_host[r, c]))
                wrong = miss[r, cols]  # (n,)
                np.add.at(a.wrong, a.span[at], wrong.numpy().astype(np.int64))
                tally.add_answer_tokens(nll[r, cols.to(device)].cpu(), ~wrong, a.dist[at])
            if bar is not None:
                bar.update(int(valid.sum()))
        tally.add_answers([bool(w == 0) for a in spans for w in a.wrong])
        tally.starts += [st for a in spans for st in a.starts]
        for i, a in zip(rows, spans):
            tally.doc_exact[i] = [bool(w == 0) for w in a.wrong]
    return tally
