"""Segment-recurrent decoder: one segment at a time, memory state passed in and returned.

Axis legend: B batch, l / n tokens in the segment / chunk, D model width, V vocabulary,
H heads, d head width. Per layer: add the memory's injected memory tokens and pre-layer residual
read (optional hooks), read memory (with this segment's view), attend over [memory ; causal local].
After the last layer every memory writes the segment (tokens only, plus the outputs at the back
memory-token slots). A memory layer's state is not used again within the segment, so writing after
all layers equals writing after each.

`prev_embed` (optional): each token's input adds a second embedding of the token before it in the
same segment, x_i = E[t_i] + P[t_{i-1}] (a learned bigram input: the "smeared key" idea of Olsson
et al. 2022, and what the short convolutions of H3/Based give MQAR, Arora et al. 2023). A position
then knows its predecessor from the input on, so associative recall is one attention hop instead of
an induction circuit that a 2-layer model finds only after a long plateau. The first token of a
segment has none (a segment carries nothing but memory); generation keeps the last token id of the
current segment (`Stream.last`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..memory.base import Memory, Read, SegmentView
from .attention import Attention
from .layers import RMSNorm, SwiGLU

States = tuple  # one memory State per memory layer, sorted by layer index


class SegmentCache(NamedTuple):
    """One layer's rows of the stream's current segment, in buffers allocated at the segment's start
    (capacity C = front slots + segment_len + back slots) and written in place: a generated token costs
    a copy of its own rows, never a concatenation of the segment, and each key is rotated once.

    Joint decoding (memory layers whose Read is M plain keys, every row with a history): from the
    first single-token step of a segment on, the rotated keys and the values live in `kj` / `vj`
    behind M slots holding the memory, keys widened to 2d so that ONE attention call scores both:
    [rope(q) | q] · [rope(k) | 0] is the local logit, [rope(q) | q] · [0 | k_mem] the memory's
    (`attention.attend_joint`)."""

    x: Tensor | None  # (B, C, D) the layer input after the attention norm (memory layers only, for the write)
    qkv: Tensor  # (B, C, 3, H, d) queries, keys and values before RoPE
    k_rot: Tensor  # (B, C, H, d) keys after RoPE (until joint decoding starts)
    kj: Tensor | None = None  # (B, M + C, H, 2d) joint keys: [0 | k_mem] then [rope(k) | 0]
    vj: Tensor | None = None  # (B, M + C, H, 2d) joint values [v | 0] (flash wants one head width)

    def fork(self) -> "SegmentCache":
        return SegmentCache(*(None if t is None else t.clone() for t in self))

    def keys(self, end: int) -> tuple[Tensor, Tensor]:
        """Rotated keys and values of rows [0, end): (B, end, H, d) each, views."""
        if self.kj is None:
            return self.k_rot[:, :end], self.qkv[:, :end, 2]
        m, d = self.kj.shape[1] - self.qkv.shape[1], self.qkv.shape[-1]
        return self.kj[:, m:m + end, :, :d], self.vj[:, m:m + end, :, :d]

    def joined(self, read: Read, start: int) -> "SegmentCache":
        """With the joint buffers, filled with the memory and the rows [0, start) so far (once a segment)."""
        b, c, _, h, d = self.qkv.shape
        m = read.k.shape[2]
        kj = self.qkv.new_zeros(b, m + c, h, 2 * d)
        vj = self.qkv.new_zeros(b, m + c, h, 2 * d)
        kj[:, :m, :, d:] = read.k.transpose(1, 2)  # (B, M, H, d) the memory keys, un-rotated
        vj[:, :m, :, :d] = read.v.transpose(1, 2)
        kj[:, m:m + start, :, :d] = self.k_rot[:, :start]
        vj[:, m:m + start, :, :d] = self.qkv[:, :start, 2]
        return self._replace(kj=kj, vj=vj)


def _joint(read: Read) -> bool:
    """Whether a Read can be scored in the joint call: plain keys for every row, nothing per token."""
    return (read.k is not None and read.pos is None and read.valid is None and read.rows is None
            and not read.per_token)


class Stream(NamedTuple):
    """Generation state: memory states plus the current segment only (bounded by segment_len). The
    per-layer caches are written in place as the stream advances: a stream that is stepped from twice
    (several continuations of one prompt) must be `fork`ed first."""

    states: States
    past: tuple  # per layer: SegmentCache of the current segment, or None at a segment start
    reads: tuple  # per layer: the Read of the current segment (memory samples, computed once), or None
    pos: int  # tokens of the current segment already consumed, 0 <= pos < segment_len
    last: Tensor | None = None  # (B,) id of the segment's last consumed token (prev_embed), None at its start

    def fork(self) -> "Stream":
        """A stream that can be stepped independently of this one (the caches copied; states and reads
        are values and shared)."""
        return self._replace(past=tuple(None if c is None else c.fork() for c in self.past))

    def repeat(self, n: int) -> "Stream":
        """n copies of every row as one batch (row b becomes rows b n .. b n + n - 1): several
        continuations of one prompt decoded together. The reads are dropped: the next step reads them
        again from the repeated states (a Read depends on the state only)."""
        def rep(x):
            return x.repeat_interleave(n, 0) if isinstance(x, Tensor) else x

        states = tuple(type(s)(*(rep(leaf) for leaf in s)) for s in self.states)  # every leaf: batch first
        past = tuple(None if c is None else SegmentCache(*(rep(t) for t in c)) for c in self.past)
        return Stream(states, past, (None,) * len(self.reads), self.pos, rep(self.last))


def _segment_view(h: Tensor, qkv: Tensor) -> SegmentView:
    """The memory's view of stream rows: h (B, n, D), qkv (B, n, 3, H, d) -> SegmentView with q, k, v
    (B, H, n, d) and kv (B, n, 2, H, d), all views."""
    return SegmentView(h, *(qkv[:, :, i].transpose(1, 2) for i in range(3)), kv=qkv[:, :, 1:])


class Span(NamedTuple):
    """Where a chunk of rows sits in the stream: positions start..start+n-1, the first `front` and the
    last `back` rows are memory-token slots. capacity None: the rows are the whole stream (a segment,
    start 0); otherwise they are appended to a cache of that many rows (streaming)."""
    start: int = 0
    front: int = 0
    back: int = 0
    capacity: int | None = None


class DecoderShape(NamedTuple):
    """The sizes of a Decoder (from `model.*` of the config, by `build.build_model`)."""
    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    mlp_hidden: int
    segment_len: int
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    prev_embed: bool = False


class Block(nn.Module):
    """Pre-norm transformer block with an optional memory."""

    def __init__(self, d_model: int, n_head: int, mlp_hidden: int, rope_base: float, memory: Memory | None,
                 max_pos: int = 0):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_head, rope_base, max_pos)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, mlp_hidden)
        self.memory = memory

    def forward(self, x: Tensor, state: Any, past: SegmentCache | None, read: Read | None,
                span: Span = Span()) -> tuple[Tensor, SegmentView, SegmentCache | None, Read]:
        """x: (B, n, D) rows at stream positions span.start..start+n-1. Without `span.capacity` the rows
        are the whole stream (a segment, start 0); with it they are appended to `past` (allocated here,
        with that capacity, when None). The memory's `inject` is added to the span's slot rows.

        Returns the block output (B, n, D), the memory's view of the stream so far, the cache and the Read used.
        """
        start, front, back, capacity = span
        if self.memory is not None:
            x = self._inject(x, state, front, back)
            extra = self.memory.pre(state, x)  # (B, n, D) or None
            if extra is not None:
                x = x + extra
        h = self.attn_norm(x)  # (B, n, D)
        qkv = self.attn.qkv(h)  # (B, n, 3, H, d)
        rot = self.attn.rotary(qkv[:, :, :2], start, dim=1)  # (B, n, 2, H, d) q and k at start..start+n-1
        n, q = x.shape[1], qkv[:, :, 0].transpose(1, 2)  # (B, H, n, d) before RoPE
        if self.memory is None:
            read = Read()
        elif read is None or read.per_token:
            read = self.memory.read(state, _segment_view(h, qkv))  # this chunk's rows
        rows, k_rot, v, hs = qkv, rot[:, :, 1], qkv[:, :, 2], h
        if capacity is not None:
            if past is None:
                b = x.shape[0]
                past = SegmentCache(None if self.memory is None else h.new_empty(b, capacity, h.shape[-1]),
                                    qkv.new_empty(b, capacity, *qkv.shape[2:]),
                                    rot.new_empty(b, capacity, *rot.shape[3:]))
            if n == 1 and past.kj is None and _joint(read) and not self.attn.reference:
                past = past.joined(read, start)
            end = start + n
            past.qkv[:, start:end] = qkv
            if past.kj is None:
                past.k_rot[:, start:end] = k_rot
            else:
                m = past.kj.shape[1] - capacity
                past.kj[:, m + start:m + end, :, :qkv.shape[-1]] = k_rot
                past.vj[:, m + start:m + end, :, :qkv.shape[-1]] = qkv[:, :, 2]
            if past.x is not None:
                past.x[:, start:end] = h
            (k_rot, v), rows = past.keys(end), past.qkv[:, :end]
            hs = h if past.x is None else past.x[:, :end]
        seg = _segment_view(hs, rows)  # the stream so far: (B, H, S, d) views
        q_rot = rot[:, :, 0].transpose(1, 2)  # (B, H, n, d)
        if past is not None and past.kj is not None and n == 1:
            end = past.kj.shape[1] - capacity + start + 1  # memory slots and the rows so far
            y = self.attn.output_joint(q, q_rot, past.kj[:, :end].transpose(1, 2), past.vj[:, :end].transpose(1, 2))
        else:
            y = self.attn.output(q, seg.k, v.transpose(1, 2), read, start, q_rot, k_rot.transpose(1, 2))
        if read.out is not None:
            y = y + read.out
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), seg, past, read

    def _inject(self, x: Tensor, state: Any, front: int, back: int) -> Tensor:
        if not (front or back):
            return x
        add_front, add_back = self.memory.inject(state, x.shape[0])  # (B, p, D), (B, s, D) or None
        n = x.shape[1]
        head, mid, tail = x[:, :front], x[:, front : n - back], x[:, n - back :]
        if front and add_front is not None:
            head = head + add_front.to(x.dtype)
        if back and add_back is not None:
            tail = tail + add_back.to(x.dtype)
        return torch.cat([head, mid, tail], dim=1)  # (B, n, D)


class Decoder(nn.Module):
    def __init__(self, shape: DecoderShape, memories: dict[int, Memory]):
        """memories: layer -> its memory (layers without one have none)."""
        super().__init__()
        vocab_size, d_model, n_layer, n_head, mlp_hidden, segment_len, rope_base, tie_embeddings, prev_embed = shape
        bad = sorted(i for i in memories if not 0 <= i < n_layer)
        if bad:
            raise ValueError(f"Decoder: memory layers {bad} outside 0..{n_layer - 1}")
        head_dim = d_model // n_head
        for i, mem in memories.items():
            if (mem.n_head, mem.head_dim) != (n_head, head_dim):
                raise ValueError(f"Decoder: memory of layer {i} is built for {mem.n_head} heads of {mem.head_dim}, "
                                 f"the model has {n_head} of {head_dim}")
        slots = {mem.slot_counts() for mem in memories.values()} - {(0, 0)}
        if len(slots) > 1:
            raise ValueError(f"Decoder: memories disagree on their memory-token slots {sorted(slots)}")
        self.front, self.back = slots.pop() if slots else (0, 0)
        self.vocab_size, self.segment_len = vocab_size, segment_len
        self.memory_layers = tuple(sorted(memories))
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(  # RoPE tables cover a segment's stream, slots included
            Block(d_model, n_head, mlp_hidden, rope_base, memories.get(i), self.front + segment_len + self.back)
            for i in range(n_layer))
        self.norm = RMSNorm(d_model)
        self.lm_head = None if tie_embeddings else nn.Linear(d_model, vocab_size, bias=False)
        self.prev_embed = nn.Embedding(vocab_size, d_model) if prev_embed else None

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

    def aux_loss(self, states: States) -> Tensor:
        """Sum over memory layers of the auxiliary losses the last write left (batch mean); 0 if none."""
        total = torch.zeros((), device=self.embed.weight.device)
        for mem, s in zip(self._memories(), states):
            loss = mem.aux_loss(s)
            if loss is not None:
                total = total + loss.mean()
        return total

    def memory_metrics(self, states: States) -> dict[str, Tensor]:
        """The memories' diagnostics of the last write (`Memory.metrics`), batch means (0-d tensors),
        named `{name}/layer{i}` (e.g. `beta/layer0`, ARMT's write gate)."""
        return {f"{name}/layer{i}": value.float().mean() for i, mem, s in zip(self.memory_layers, self._memories(), states)
                for name, value in mem.metrics(s).items()}

    def logits(self, x: Tensor) -> Tensor:
        return self._project(self.norm(x))  # (B, n, V)

    def _project(self, h: Tensor) -> Tensor:
        return h @ self.embed.weight.T if self.lm_head is None else self.lm_head(h)  # (B, n, V)

    def _embed(self, tokens: Tensor, last: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """tokens (B, n) -> input embeddings (B, n, D) and the last token id (B,). With `prev_embed`,
        position i adds P[t_{i-1}]; `last` (B,) is the token before the chunk, None at a segment start."""
        e = self.embed(tokens)  # (B, n, D)
        if self.prev_embed is None:
            return e, tokens[:, -1]
        prev = tokens[:, :-1] if last is None else torch.cat([last[:, None], tokens[:, :-1]], dim=1)  # (B, n or n-1)
        skip = e.shape[1] - prev.shape[1]  # 1 at a segment start: the first token has no predecessor
        return torch.cat([e[:, :skip], e[:, skip:] + self.prev_embed(prev)], dim=1), tokens[:, -1]

    def _slot_input(self, batch: int, n: int) -> Tensor:
        return torch.zeros(batch, n, self.embed.weight.shape[1], device=self.embed.weight.device,
                           dtype=self.embed.weight.dtype)  # (B, n, D): slots start empty, memories inject into them

    def compile_blocks(self, **options) -> None:
        """torch.compile every block for `forward` (whole segments: training and eval); streaming stays
        eager. The blocks share their code, so the compiler builds one graph per kind of block (with
        and without memory) instead of one of the whole model, and the memory writes between segments
        stay outside it. options: `torch.compile`'s (e.g. backend). The compiled wrappers are a plain
        attribute: the state dict is unchanged."""
        self._compiled = tuple(torch.compile(block, **options) for block in self.blocks)

    def _blocks(self, x: Tensor, states: States, past: list, reads: list,
                span: Span) -> tuple[Tensor, dict[int, Tensor], list]:
        """Run every block on one chunk (updates past/reads in place); returns the output (B, n, D),
        per memory layer the block output at the chunk's last `span.back` rows, and per layer the
        memory's view of the stream so far. With `span.capacity`: streaming (see `Block.forward`);
        without it the compiled blocks run, if `compile_blocks` made them."""
        slot = {layer: j for j, layer in enumerate(self.memory_layers)}
        outs, views = {}, []
        blocks = self.blocks if span.capacity is not None else getattr(self, "_compiled", None) or self.blocks
        for i, block in enumerate(blocks):
            state = states[slot[i]] if i in slot else None
            x, view, past[i], reads[i] = block(x, state, past[i], reads[i], span)
            views.append(view)
            if i in slot and span.back:
                outs[i] = x[:, x.shape[1] - span.back :]  # (B, s, D)
        return x, outs, views

    def _write(self, states: States, views: list, outs: dict[int, Tensor], final: Tensor | None) -> States:
        """Fold the segment into every memory; views span [front slots ; tokens ; back slots]. Work a
        memory's write shares with the other layers (`write_plan`, e.g. Elastic Memory's banks) is done
        once for the segment and passed to each."""
        new, plans = [], {}
        for j, i in enumerate(self.memory_layers):
            seg, mem = views[i], self.blocks[i].memory
            if self.front or self.back:  # tokens only (B, l, D) / (B, H, l, d); without slots, no slice to differentiate
                lo, hi = self.front, seg.x.shape[1] - self.back
                tail = None  # (B, s, 2, H, d) the back slots' keys and values
                if self.back:
                    tail = seg.kv[:, hi:] if seg.kv is not None else \
                        torch.stack((seg.k[:, :, hi:].transpose(1, 2), seg.v[:, :, hi:].transpose(1, 2)), dim=2)
                seg = SegmentView(seg.x[:, lo:hi], seg.q[:, :, lo:hi], seg.k[:, :, lo:hi], seg.v[:, :, lo:hi],
                                  kv=None if seg.kv is None else seg.kv[:, lo:hi], slot_kv=tail)
            view = seg._replace(slots=outs.get(i), final=final)
            key = mem.plan_key()
            if key is None:
                new.append(mem.write(states[j], view))
                continue
            if key not in plans:
                plans[key] = mem.write_plan(states[j], view.k.shape[2])
            new.append(mem.write(states[j], view, plans[key]))
        return tuple(new)

    def forward(self, tokens: Tensor, states: States, select: Tensor | None = None,
                write: bool = True) -> tuple[Tensor, States | None]:
        """One segment. tokens: (B, l), l <= segment_len -> logits (B, l, V), new states.
        With memory tokens the stream is [front slots ; tokens ; back slots]; logits are for the tokens.
        select: (B, l) bool -> logits (n, V) of the selected positions only, row-major (training on a
        few answer tokens skips the vocabulary projection everywhere else).
        write=False: the memories are not written and None is returned for the states (the caller
        drops them, e.g. after a training window's last segment)."""
        if tokens.shape[1] > self.segment_len:
            raise ValueError(f"Decoder: segment of {tokens.shape[1]} tokens > segment_len {self.segment_len}")
        b, l = tokens.shape
        x = torch.cat([self._slot_input(b, self.front), self._embed(tokens)[0], self._slot_input(b, self.back)],
                      dim=1)  # (B, p + l + s, D)
        n = len(self.blocks)
        past, reads = [None] * n, [None] * n
        x, outs, views = self._blocks(x, states, past, reads, Span(0, self.front, self.back))
        h = self.norm(x)  # (B, p + l + s, D)
        final = h[:, self.front + l :] if self.back else None  # (B, s, D)
        h = h[:, self.front : self.front + l]  # (B, l, D)
        logits = self._project(h if select is None else h[select])
        return logits, (self._write(states, views, outs, final) if write else None)

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
        """tokens (B, n) all inside the current segment; front slots run first at a segment start,
        back slots last when the segment fills (the same stream as `forward`)."""
        b = tokens.shape[0]
        past, reads = list(stream.past), list(stream.reads)
        capacity = self.front + self.segment_len + self.back  # the caches' rows
        if stream.pos == 0 and self.front:
            self._blocks(self._slot_input(b, self.front), stream.states, past, reads, Span(0, self.front, 0, capacity))
        e, last = self._embed(tokens, stream.last if stream.pos else None)  # (B, n, D), (B,)
        x, _, views = self._blocks(e, stream.states, past, reads, Span(self.front + stream.pos, 0, 0, capacity))
        pos = stream.pos + tokens.shape[1]
        if pos < self.segment_len:
            return self.logits(x), Stream(stream.states, tuple(past), tuple(reads), pos, last)
        outs, final = {}, None
        if self.back:
            tail, outs, views = self._blocks(self._slot_input(b, self.back), stream.states, past, reads,
                                             Span(self.front + pos, 0, self.back, capacity))
            final = self.norm(tail)  # (B, s, D)
        n = len(self.blocks)
        return self.logits(x), Stream(self._write(stream.states, views, outs, final), (None,) * n, (None,) * n, 0)
