"""The memory contract (docs/internals.md): a memory owns parameters, never its state.

State is a NamedTuple of tensors whose leaves all have the batch on axis 0; it is passed in and
returned new. Axis legend: B batch, l segment tokens, D model width, H heads, d head width,
M memory entries read by attention.
"""
from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from .options import MemoryOptions


class SegmentView(NamedTuple):
    """What one layer exposes to its memory for one segment (or, when streaming, a chunk of it)."""

    x: Tensor  # (B, l, D) layer input after the attention RMSNorm
    q: Tensor  # (B, H, l, d) queries before RoPE
    k: Tensor  # (B, H, l, d) keys before RoPE
    v: Tensor  # (B, H, l, d) values
    slots: Tensor | None = None  # (B, s, D) write only: this block's output at the back memory-token slots
    final: Tensor | None = None  # (B, s, D) write only: the model's last hidden state (after the final norm) there
    kv: Tensor | None = None  # (B, l, 2, H, d) keys (before RoPE) and values side by side, a view of the fused
    #                           projection (write only; None: build it from k and v if needed)
    slot_kv: Tensor | None = None  # (B, s, 2, H, d) write only: keys (before RoPE) and values of the back
    #                                memory-token slots at this layer (e.g. MELODI's summary tokens)


class Read(NamedTuple):
    """What the layer's attention gets from the past.

    k/v/valid/pos depend only on the state (not on the view): streaming reads them once per segment.
    out, heads and gate are per token (row i depends on the state and token i of the view only), so
    a Read carrying them is requested again for every streamed chunk (`per_token`).
    """

    k: Tensor | None = None  # (B, H, M, d) extra keys in the local softmax (logits with the un-rotated query)
    v: Tensor | None = None  # (B, H, M, d)
    valid: Tensor | None = None  # (B, M) bool; False entries are masked out; None with k: every key is valid
    out: Tensor | None = None  # (B, l, D) added to the attention output (after the output projection)
    pos: Tensor | None = None  # (M,) long RoPE positions of k relative to the segment start (e.g. -M..-1);
    #                            given: k is rotated there and its logits use the ROTATED query
    heads: Tensor | None = None  # (B, H, l, d) a per-head memory output, mixed with the local one before `wo`
    gate: Tensor | None = None  # broadcastable to (B, H, l, d), in [0, 1]: gate*heads + (1-gate)*local
    rows: Tensor | None = None  # (B,) bool with k and valid=None: rows that see the memory keys at all (the
    #                             others see none); None: every row. A row mask keeps the fused kernel unmasked

    @property
    def per_token(self) -> bool:
        """True when the Read depends on the view's tokens (streaming must call `read` per chunk)."""
        return self.out is not None or self.heads is not None


State = Any  # a NamedTuple of tensors, batch on axis 0


class MemoryCost(NamedTuple):
    """What one layer's memory adds to a segment of one sequence (flops.py, build.describe)."""

    keys: int  # M: extra keys/values the layer's attention reads (in its softmax)
    read: int  # matrix-product FLOPs of the read (a multiply-add is 2)
    write: int  # matrix-product FLOPs of the write

    @property
    def flops(self) -> int:
        return self.read + self.write


def _where_rows(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per-row select: rows with mask=True take `new`. mask: (B,), new/old: (B, ...)."""
    return torch.where(mask.view(-1, *([1] * (old.dim() - 1))), new, old)


class Memory(nn.Module):
    """Base class of every memory kind; subclasses are built as Cls(n_head, head_dim, **options).

    A kind declares next to its class: `Options` (its memory.* options, memory/options.py) and
    `cache_read` (how `caching` can combine its reads over cached states: "keys" when the read is
    extra keys/values from the state alone, "out" for a per-token `Read.out`, "pre" for the `pre`
    residual; None: it cannot be cached) and `zero_init` (its parameters that start at zero, e.g.
    ARMT's value projection; model/init.py applies it)."""

    Options: ClassVar[type[MemoryOptions]] = MemoryOptions
    cache_read: ClassVar[str | None] = None
    zero_init: ClassVar[tuple[str, ...]] = ()  # parameter names (relative to the memory) init_weights zeroes

    def __init__(self, n_head: int, head_dim: int):
        super().__init__()
        self.n_head = n_head
        self.head_dim = head_dim

    def empty(self, batch: int, device: torch.device | str) -> State:
        """The state before a document starts."""
        raise NotImplementedError

    def reset(self, state: State, mask: Tensor) -> State:
        """Rows with mask=True (a (B,) bool, on the CPU or the state's device) become empty; the others
        are unchanged. Each leaf is selected on its own device (a leaf may live on the host)."""
        empty = self.empty(mask.shape[0], mask.device)
        return type(state)(*(_where_rows(mask.to(s.device), e.to(s.device, s.dtype), s) for e, s in zip(empty, state)))

    def write_plan(self, state: State, l: int) -> Any:
        """Work the write of a segment of l tokens can share with every layer whose memory has the same
        `plan_key` (their states have read the same tokens): computed once per segment by the decoder
        and passed to `write`. Default: None (nothing shared)."""
        return None

    def plan_flops(self, l: int, t: int) -> int:
        """Matrix-product FLOPs of `write_plan` for a segment of l tokens after t (default 0)."""
        return 0

    def plan_key(self) -> Any:
        """Memories with equal non-None keys share one `write_plan` per segment; None: never shared."""
        return None

    def read(self, state: State, seg: SegmentView) -> Read:
        raise NotImplementedError

    def write(self, state: State, seg: SegmentView, plan: Any = None) -> State:
        """Fold the segment just read into memory. plan: `write_plan(state, l)` (None: build what is needed)."""
        raise NotImplementedError

    def numel(self, state: State) -> int:
        """Floats held per sequence (the footprint axis on which memories are compared)."""
        raise NotImplementedError

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost | None:
        """Keys read and FLOPs of read and write for a segment of l tokens after t tokens of the
        document (one sequence; the design's math: nothing is read at t = 0); a per-token read
        covers `rows` rows (default: the l tokens and this memory's slots). None: not counted
        (then MFU is not reported)."""
        return None

    # Optional hooks (docs/internals.md, "Memory tokens and pre-layer reads"); the defaults do nothing,
    # so a memory that does not override them runs the plain code path.

    def slot_counts(self) -> tuple[int, int]:
        """(front, back): memory-token slots this memory wants around every segment."""
        return 0, 0

    def inject(self, state: State, batch: int) -> tuple[Tensor | None, Tensor | None]:
        """(front (B, p, D), back (B, s, D)) added to the slot rows of this layer's input, or None."""
        return None, None

    def pre(self, state: State, x: Tensor) -> Tensor | None:
        """A residual read added to this layer's input x (B, n, D) before the block, per token; or None."""
        return None

    def aux_loss(self, state: State) -> Tensor | None:
        """A (B,) auxiliary loss the last write left in the state (e.g. the ∞-former KL), or None."""
        return None

    def metrics(self, state: State) -> dict[str, Tensor]:
        """Diagnostics the last write left in the state, name -> (B,) (e.g. ARMT's write gate β), for
        the training loop to log (memory code computes, never logs); default none."""
        return {}


def detach_state(states: Any) -> Any:
    """Map .detach() over every tensor leaf of a (nested) tuple of states (gradient truncation)."""
    if isinstance(states, Tensor):
        return states.detach()
    if isinstance(states, tuple) and hasattr(states, "_fields"):
        return type(states)(*(detach_state(s) for s in states))
    if isinstance(states, (tuple, list)):
        return type(states)(detach_state(s) for s in states)
    return states
