"""`elastic bench`: what a memory costs against the length of the history it has read.

For each kind, one pass reads a long document segment by segment, as eval does, under a peak
meter: the peak so far is recorded at every history length asked for. Then, from the memory
states after each history, two costs are timed (interleaved, repeated): evaluating a few more
segments (eval time per token) and generating tokens (time per generated token).
A memory whose state is bounded should show neither growing; `state_floats` records whether it is.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from elastic_cli.bench import measure
from elastic_cli.evaluate.scoring import read
from elastic_cli.model.decoder import Decoder, Stream


@torch.no_grad()
def evaluate_document(model: Decoder, tokens: Tensor, autocast, states: tuple | None = None) -> tuple[float, tuple]:
    """Mean next-token loss of tokens (B, n) read segment by segment by eval's loop (`scoring.read`)
    from `states` (default: empty memory), and the memory states after the last segment."""
    if states is None:
        states = model.empty_states(tokens.shape[0], tokens.device)
    n, L = tokens.shape[1], model.segment_len
    m = min(n, -(-(n - 1) // L) * L)  # inputs: the segments holding the n - 1 positions that predict a token
    nll = 0.0  # targets tokens[:, 1:m + 1]: one short of the inputs when the last input predicts nothing
    for _, seg_nll, _, states in read(model, tokens[:, :m], tokens[:, 1:m + 1], states, lambda: autocast):
        nll += float(seg_nll.sum())
    return nll / tokens[:, 1:].numel(), states


def eval_peak(model: Decoder, tokens: Tensor, autocast) -> tuple[int, str]:
    """Peak bytes allocated while evaluating tokens (B, n), and how they were measured."""
    return measure.peak_bytes(lambda: evaluate_document(model, tokens, autocast), tokens.device)


@torch.no_grad()
def generate_greedy(model: Decoder, stream: Stream, last_logits: Tensor, n: int, autocast) -> Tensor:
    """n greedy tokens (B, n) from a stream (not changed: it is forked first)."""
    out, stream = [], stream.fork()
    token = last_logits.argmax(-1, keepdim=True)  # (B, 1)
    with autocast:
        for _ in range(n):
            out.append(token)
            logits, stream = model.step(token, stream)  # (B, 1, V)
            token = logits[:, -1].argmax(-1, keepdim=True)
    return torch.cat(out, dim=1)


def stream_after(model: Decoder, states: tuple) -> Stream:
    """The generation stream after whole segments were read into `states` (a segment boundary)."""
    n = len(model.blocks)
    return Stream(states, (None,) * n, (None,) * n, 0)


class Pass(NamedTuple):
    peaks: dict[int, int]  # history length -> peak bytes while reading the document up to it
    states: dict[int, tuple]  # history length -> memory states after it
    floats: dict[int, int]  # history length -> memory floats held per sequence (bounded: constant)
    how: str  # how the peak was measured


def history_pass(model: Decoder, vocab: int, lengths: list[int], autocast, device: torch.device) -> Pass:
    """Read one random document of max(lengths) tokens segment by segment under a peak meter; the
    peak at every length, then the states at every length (short ones re-read outside the meter, so
    that keeping them does not count in the long one's peak). Lengths are multiples of segment_len."""
    seg, longest = model.segment_len, max(lengths)
    doc = measure.random_tokens((1, longest + 1), vocab, 4, device)  # +1: the last segment's targets
    peaks, states = {}, None
    with measure.PeakMeter(device) as meter:
        for s in range(0, longest, seg):
            _, states = evaluate_document(model, doc[:, s:s + seg + 1], autocast, states)
            if s + seg in lengths:
                peaks[s + seg] = meter.peak()
    kept = {longest: states}
    for n in lengths:
        if n != longest:
            kept[n] = evaluate_document(model, doc[:, :n + 1], autocast)[1]
    return Pass(peaks, kept, {n: model.numel(s) for n, s in kept.items()}, meter.how)


class Timing(NamedTuple):
    """What `timed_after` times: after which histories, how many tokens, how many interleaved repeats."""

    eval_lengths: tuple[int, ...]  # histories (tokens) after which `eval_tokens` more are evaluated
    generate_lengths: tuple[int, ...]  # histories after which `new_tokens` are generated
    eval_tokens: int
    new_tokens: int
    repeats: int


def timed_after(models: dict[str, Decoder], passes: dict[str, Pass], timing: Timing, autocast,
                device: torch.device) -> tuple[dict, dict]:
    """Seconds per token, per (kind, history): evaluating `eval_tokens` more tokens, and generating
    `new_tokens`, from the states after each history. All interleaved. Returns (eval, generate)."""
    eval_lengths, generate_lengths, eval_tokens, new_tokens, repeats = timing
    vocab = next(iter(models.values())).vocab_size
    more = measure.random_tokens((1, eval_tokens + 1), vocab, 6, device)
    first = torch.zeros(1, vocab, device=device)  # (1, V): the first generated token is 0
    fns: dict[tuple, Callable[[], object]] = {}
    for kind, model in models.items():
        for n in eval_lengths:
            fns[("eval", kind, n)] = (lambda model=model, s=passes[kind].states[n]:
                                      evaluate_document(model, more, autocast, s))
        for n in generate_lengths:
            fns[("generate", kind, n)] = (lambda model=model, s=passes[kind].states[n]:
                                          generate_greedy(model, stream_after(model, s), first, new_tokens, autocast))
    times = measure.interleave(fns, repeats, device)
    per_token = {key: [t / (eval_tokens if key[0] == "eval" else new_tokens) for t in v] for key, v in times.items()}
    split = ({k[1:]: v for k, v in per_token.items() if k[0] == "eval"},
             {k[1:]: v for k, v in per_token.items() if k[0] == "generate"})
    return split
