"""Segment-recurrent decoder: one segment at a time, memory state passed in and returned.

Axis legend: B batch, l / n tokens in the segment / chunk, D model width, V vocabulary,
H heads, d head width. Per layer: read memory (before attention, with this segment's view),
attend over [memory ; causal local], write the segment into memory (after).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..memory.base import Memory, Read, SegmentView
from .attention import Attention
from .layers import RMSNorm, SwiGLU

States = tuple  # one memory State per memory layer, sorted by layer index


class Stream(NamedTuple):
    """Generation state: memory states plus the current segment only (bounded by segment_len)."""

    states: States
    past: tuple  # per layer: SegmentView of the current segment so far, or None at a segment start
    reads: tuple  # per layer: the Read of the current segment (memory samples, computed once), or None
    pos: int  # tokens of the current segment already consumed, 0 <= pos < segment_len


def _join(past: SegmentView | None, chunk: SegmentView) -> SegmentView:
    if past is None:
        return chunk
    return SegmentView(
        torch.cat([past.x, chunk.x], dim=1),  # (B, start + n, D)
        *(torch.cat([a, b], dim=2) for a, b in zip(past[1:], chunk[1:])),  # (B, H, start + n, d)
    )


class Block(nn.Module):
    """Pre-norm transformer block with an optional memory."""

    def __init__(self, d_model: int, n_head: int, mlp_hidden: int, rope_base: float, memory: Memory | None):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_head, rope_base)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, mlp_hidden)
        self.memory = memory

    def forward(self, x: Tensor, state: Any, past: SegmentView | None, read: Read | None,
                start: int) -> tuple[Tensor, SegmentView, Read]:
        """x: (B, n, D) tokens at segment positions start..start+n-1; past: the segment before them.

        Returns the block output (B, n, D), the segment view so far and the Read used.
        """
        h = self.attn_norm(x)  # (B, n, D)
        q, k, v = self.attn.project(h)  # (B, H, n, d) each
        chunk = SegmentView(h, q, k, v)
        seg = _join(past, chunk)
        if self.memory is None:
            read = Read()
        elif read is None or read.per_token:
            read = self.memory.read(state, chunk)
        y = self.attn.output(q, seg.k, seg.v, read, start)  # (B, n, D)
        if read.out is not None:
            y = y + read.out
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), seg, read


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, n_layer: int, n_head: int, mlp_hidden: int,
                 segment_len: int, memories: dict[int, Memory], rope_base: float = 10000.0,
                 tie_embeddings: bool = True):
        super().__init__()
        bad = sorted(i for i in memories if not 0 <= i < n_layer)
        if bad:
            raise ValueError(f"Decoder: memory layers {bad} outside 0..{n_layer - 1}")
        head_dim = d_model // n_head
        for i, mem in memories.items():
            if (mem.n_head, mem.head_dim) != (n_head, head_dim):
                raise ValueError(f"Decoder: memory of layer {i} is built for {mem.n_head} heads of {mem.head_dim}, "
                                 f"the model has {n_head} of {head_dim}")
        self.vocab_size, self.segment_len = vocab_size, segment_len
        self.memory_layers = tuple(sorted(memories))
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, n_head, mlp_hidden, rope_base, memories.get(i)) for i in range(n_layer))
        self.norm = RMSNorm(d_model)
        self.lm_head = None if tie_embeddings else nn.Linear(d_model, vocab_size, bias=False)

    def _memories(self) -> list[Memory]:
        return [self.blocks[i].memory for i in self.memory_layers]

    def empty_states(self, batch: int, device: torch.device | str) -> States:
        return tuple(mem.empty(batch, device) for mem in self._memories())

    def reset_states(self, states: States, mask: Tensor) -> States:
        """Rows with mask=True (a (B,) bool) start a new document: their memory becomes empty."""
        return tuple(mem.reset(s, mask) for mem, s in zip(self._memories(), states))

    def numel(self, states: States) -> int:
        """Floats of memory held per sequence, all layers."""
        return sum(mem.numel(s) for mem, s in zip(self._memories(), states))

    def logits(self, x: Tensor) -> Tensor:
        h = self.norm(x)  # (B, n, D)
        return h @ self.embed.weight.T if self.lm_head is None else self.lm_head(h)  # (B, n, V)

    def forward(self, tokens: Tensor, states: States) -> tuple[Tensor, States]:
        """One segment. tokens: (B, l), l <= segment_len -> logits (B, l, V), new states."""
        if tokens.shape[1] > self.segment_len:
            raise ValueError(f"Decoder: segment of {tokens.shape[1]} tokens > segment_len {self.segment_len}")
        x = self.embed(tokens)  # (B, l, D)
        slot = {layer: j for j, layer in enumerate(self.memory_layers)}
        new = list(states)
        for i, block in enumerate(self.blocks):
            state = states[slot[i]] if i in slot else None
            x, seg, _ = block(x, state, None, None, 0)
            if i in slot:
                new[slot[i]] = block.memory.write(state, seg)
        return self.logits(x), tuple(new)

    def start_stream(self, batch: int, device: torch.device | str) -> Stream:
        n = len(self.blocks)
        return Stream(self.empty_states(batch, device), (None,) * n, (None,) * n, 0)

    def step(self, tokens: Tensor, stream: Stream) -> tuple[Tensor, Stream]:
        """Generation: tokens (B, n), any n -> logits (B, n, V). Each time the current segment fills,
        it is written into memory and its cache dropped: cost per token does not grow with history."""
        out = []
        while tokens.shape[1]:
            take = min(tokens.shape[1], self.segment_len - stream.pos)
            logits, stream = self._step_chunk(tokens[:, :take], stream)
            out.append(logits)
            tokens = tokens[:, take:]
        return torch.cat(out, dim=1), stream  # (B, n, V)

    def _step_chunk(self, tokens: Tensor, stream: Stream) -> tuple[Tensor, Stream]:
        """tokens (B, n) all inside the current segment."""
        x = self.embed(tokens)  # (B, n, D)
        slot = {layer: j for j, layer in enumerate(self.memory_layers)}
        past, reads = list(stream.past), list(stream.reads)
        for i, block in enumerate(self.blocks):
            state = stream.states[slot[i]] if i in slot else None
            x, past[i], reads[i] = block(x, state, stream.past[i], stream.reads[i], stream.pos)
        pos = stream.pos + tokens.shape[1]
        if pos < self.segment_len:
            return self.logits(x), Stream(stream.states, tuple(past), tuple(reads), pos)
        states = tuple(self.blocks[i].memory.write(s, past[i]) for i, s in zip(self.memory_layers, stream.states))
        n = len(self.blocks)
        return self.logits(x), Stream(states, (None,) * n, (None,) * n, 0)
