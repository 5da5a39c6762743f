"""Decoding from a model's stream: read a prompt of any length into memory (`prefill_chunks`), then
draw tokens one at a time (`continuation`) or as one batch of samples (`samples`), and print text
pieces as they become whole characters (`IncrementalDecoder`).

Axis legend: B rows, n tokens in a chunk, V vocabulary.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable, Iterator

import torch

from elastic_cli import console
from elastic_cli.generate.decoding import Sampler, draw

CONTEXT_TOKENS = 4  # prompt tokens the incremental decoder starts from (keeps the first space)


class IncrementalDecoder:
    """Turns a growing list of token ids into text pieces that are safe to print: a piece is
    released only once its bytes form whole UTF-8 characters (no U+FFFD half-characters), and
    it is the difference of two decodes over the same start, so SentencePiece's leading-space
    handling and multi-byte pieces come out exactly as a decode of the whole sequence."""

    def __init__(self, tokenizer, context: list[int]):
        self.tok = tokenizer
        self.ids = list(context)
        self.prefix = 0  # start of the window that is decoded
        self.read = len(self.ids)  # ids[:read] are already printed

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._release(final=False)

    def flush(self) -> str:
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        before = self.tok.decode(self.ids[self.prefix : self.read])
        after = self.tok.decode(self.ids[self.prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]


@torch.no_grad()
def prefill(model, ids: list[int], device: torch.device, amp=nullcontext) -> tuple[torch.Tensor, object]:
    """Feed the prompt one segment at a time -> (logits of its last token (1, V), stream)."""
    logits, stream, _, _ = prefill_chunks(model, [ids], device, amp)
    return logits, stream


@torch.no_grad()
def prefill_chunks(model, chunks: Iterable[list[int]], device: torch.device, amp=nullcontext):
    """Feed token chunks of any size one segment at a time (at most one segment of them held) ->
    (logits of the last token (1, V), stream, number of tokens, the last CONTEXT_TOKENS ids)."""
    stream, L = model.start_stream(1, device), model.segment_len
    pending, n, tail, logits = [], 0, [], None
    with console.progress(None, "reading prompt", unit="seg") as bar:
        for chunk in chunks:
            pending, n, tail = pending + list(chunk), n + len(chunk), (tail + list(chunk))[-CONTEXT_TOKENS:]
            i = 0
            while len(pending) - i > L:  # keep the last (partial or full) segment for the final call
                logits, stream = _feed(model, pending[i:i + L], stream, device, amp)
                i += L
                bar.update(1)
            pending = pending[i:]
        if pending:
            logits, stream = _feed(model, pending, stream, device, amp)
            bar.update(1)
    return logits[:, -1].float(), stream, n, tail  # (1, V)


def _feed(model, ids: list[int], stream, device, amp):
    with amp():
        return model.step(torch.tensor(ids, dtype=torch.long, device=device)[None], stream)  # (1, n, V)


@torch.no_grad()
def continuation(model, stream, logits: torch.Tensor, max_new: int, sampler: Sampler) -> Iterator[tuple[int, float]]:
    """Yield (token, log-prob under the model) for up to max_new tokens, stopping after EOS.

    logits (1, V) predict the first token; the stream is not modified (it is forked: a stream's caches
    are written in place, and --num-samples starts every sample from the same prompt)."""
    opts, generator, eos_id, amp = sampler
    stream = stream.fork()
    for i in range(max_new):
        (token,), (logprob,) = draw(logits, opts, generator)  # the one host sync of a generated token
        yield token, logprob
        if token == eos_id or i == max_new - 1:
            return
        with amp():
            out, stream = model.step(torch.tensor([[token]], device=logits.device), stream)  # (1, 1, V)
        logits = out[:, -1]  # (1, V)


@torch.no_grad()
def samples(model, stream, logits: torch.Tensor, rows: int, max_new: int, sampler: Sampler) -> list[list[int]]:
    """`rows` continuations of one stream decoded as ONE batch (--num-samples): the prompt's stream
    repeated row-wise, one forward per step for all samples, one host transfer per step (`draw`). A
    row stops collecting at its EOS (kept as its last token); the batch stops when every row has,
    or after max_new tokens. logits (1, V) predict the first token; the stream is not modified."""
    opts, generator, eos_id, amp = sampler
    stream, logits = stream.repeat(rows), logits.expand(rows, -1)  # (R, V)
    out, done = [[] for _ in range(rows)], [False] * rows
    for i in range(max_new):
        ids, _ = draw(logits, opts, generator)  # (R,) the step's one host sync
        for r, token in enumerate(ids):
            if not done[r]:
                out[r].append(token)
                done[r] = token == eos_id
        if all(done) or i == max_new - 1:
            return out
        with amp():
            step, stream = model.step(torch.tensor(ids, device=logits.device)[:, None], stream)  # (R, 1, V)
        logits = step[:, -1]  # (R, V)
    return out


def stream_numel(stream) -> int:
    """Floats held by a generation stream: memory states, the current segment's cache and reads."""
    leaves: list[torch.Tensor] = []

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            leaves.append(x)
        elif isinstance(x, (tuple, list)):
            for y in x:
                walk(y)

    walk((stream.states, stream.past, stream.reads))
    return sum(t.numel() for t in leaves if t.is_floating_point())


