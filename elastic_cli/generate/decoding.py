"""Decoding: choosing each generated token: top-k -> temperature -> top-p, then a draw from a seeded generator.

The filter order is litgpt's (`litgpt.generate.base.sample`): crop to the k largest logits,
divide by the temperature, then keep the smallest set of tokens whose probability reaches
`top_p`. Temperature 0 means greedy decoding (argmax; top-k and top-p are then irrelevant).
Draws use a CPU `torch.Generator`, so one seed gives one output on every device.

Axis legend: B rows, V vocabulary.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from elastic_cli.errors import UsageError


class DecodingOptions(NamedTuple):
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None  # None: no crop
    top_p: float = 1.0  # 1: no nucleus crop


class Sampler(NamedTuple):
    """How a decoder draws: the filters, the random stream, the token that ends a sample (None: none)
    and the precision context of each forward (a callable returning a context manager)."""

    opts: DecodingOptions
    generator: torch.Generator
    eos_id: int | None = None
    amp: Callable = nullcontext


def check_options(opts: DecodingOptions) -> DecodingOptions:
    """UsageError (exit 2) naming the flag for values outside their range."""
    if not opts.temperature >= 0:
        raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {opts.temperature}")
    if not 0 < opts.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {opts.top_p}")
    if opts.top_k is not None and opts.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {opts.top_k}")
    return opts


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits per row (exactly k, ties broken by index), -inf elsewhere."""
    k = min(k, logits.shape[-1])
    values, index = torch.topk(logits, k, dim=-1)  # (B, k)
    return torch.full_like(logits, float("-inf")).scatter(-1, index, values)  # (B, V)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most probable tokens whose total probability is >= p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)  # (B, V)
    before = probs.cumsum(dim=-1) - probs  # (B, V) probability of the tokens ranked above each one
    drop_sorted = before >= p  # (B, V); the top token has before = 0 < p, so it is always kept
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # (B, V) back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def filter_logits(logits: Tensor, opts: DecodingOptions) -> Tensor:
    """The distribution a draw is taken from, as logits: top-k, then temperature, then top-p.

    Requires temperature > 0 (greedy decoding does not filter)."""
    logits = logits.float()
    if opts.top_k is not None:
        logits = top_k_filter(logits, opts.top_k)
    logits = logits / opts.temperature
    return top_p_filter(logits, opts.top_p)


def next_token(logits: Tensor, opts: DecodingOptions, generator: torch.Generator) -> Tensor:
    """logits (B, V) -> token ids (B,) long, on the logits' device."""
    if opts.temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, opts).softmax(dim=-1).cpu()  # (B, V) drawn on CPU: device-independent
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)  # (B,)


def draw(logits: Tensor, opts: DecodingOptions, generator: torch.Generator) -> tuple[list[int], list[float]]:
    """`next_token` and each token's log-probability under the model (unfiltered), for logits (B, V),
    with ONE device-to-host transfer (the host needs the ids to print them): greedy picks on the
    device; sampling moves the filtered distribution and the log-probabilities together and draws
    on the CPU generator (the same draws as `next_token`)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    if opts.temperature == 0:
        token = logits.argmax(dim=-1)  # (B,)
        pair = torch.stack([token.to(logp.dtype), logp.gather(1, token[:, None])[:, 0]])  # (2, B)
        ids, values = pair.tolist()
        return [int(i) for i in ids], values
    both = torch.stack([filter_logits(logits, opts).softmax(dim=-1), logp]).cpu()  # (2, B, V)
    token = torch.multinomial(both[0], 1, generator=generator)[:, 0]  # (B,)
    return token.tolist(), both[1].gather(1, token[:, None])[:, 0].tolist()


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)
