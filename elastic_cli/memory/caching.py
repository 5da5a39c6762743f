"""`caching`: Memory Caching (Behrouz, Li, Deng, Zhong, Razaviyayn, Mirrokni 2026, arXiv 2602.24281)
as a wrapper around a state-based memory (`base`: any kind that declares `cache_read`: elastic,
armt, infinity).

Axis legend: B batch, C = max_caches, C1 = C + 1 (online + cached), n rows of a chunk, D model width.

At every segment end the state the segment replaces is cached (FIFO, at most C), with a descriptor:
the mean of that segment's RMS-normalised layer inputs. The online state holds everything up to the
last segment. A read combines the base's reads from the online state Y_0 and the cached ones Y_i:
  residual  y = Σ_i Y_i                                          (RM)
  gated     y = Σ_i γ_i Y_i,  γ = softmax_i(⟨W_u x̂_t, c_i⟩ / sqrt(D))   over online + cached  (GRM)
  sparse    as gated, the softmax over the online state and the top_k cached by ⟨W_u x̂_t, c_i⟩ (SSC)
  soup      y = read(Σ_i γ_i S_i): the states mixed per token, then read once (equals gated when the
            read is linear in the state, e.g. armt with denom=false)
x̂_t is the RMS-normalised input of the read (layer input for `read`, residual stream for `pre`).
For a base read as keys/values in the attention softmax (cache_read "keys", e.g. elastic), which
must not depend on the token, only `residual` applies: the samples of all states join the one softmax.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import torch
from pydantic import Field, create_model
from torch import Tensor, nn

from ..precision import fp32_region
from .base import Memory, MemoryCost, Read, SegmentView
from .options import LayerContext, MemoryOptions, OptionError, validate
from .registry import REGISTRY, register

AGGREGATES = ("residual", "gated", "sparse", "soup")


def bases() -> tuple[str, ...]:
    """The registered kinds whose states can be cached (they declare `cache_read`)."""
    return tuple(k for k, cls in REGISTRY.items() if cls.cache_read is not None)


class CachingOptions(MemoryOptions):
    """caching's own options; the base kind's options sit next to them (memory.tokens, ...)."""

    base: str = Field("armt", description="the memory whose states are cached (a kind with cache_read)")
    aggregate: Literal[AGGREGATES] = Field("gated", description="how the reads of the cached states mix")  # type: ignore[valid-type]
    max_caches: int = Field(8, gt=0, description="state snapshots kept (FIFO)")
    top_k: int = Field(2, gt=0, description="snapshots read per token by `sparse`")

    @classmethod
    def for_raw(cls, raw: dict) -> type[MemoryOptions]:
        return _with_base(raw.get("base", "armt"), bases())

    @classmethod
    def carry_over(cls, old: dict, new: dict) -> dict:
        """Switching memory.base drops the old base's options."""
        if new.get("base", old.get("base", "armt")) == old.get("base", "armt"):
            return old
        return {k: v for k, v in old.items() if k in CachingOptions.model_fields}

    def base_options(self) -> MemoryOptions:
        """The base kind's options, as if it were the memory section's kind."""
        values = {k: v for k, v in self.options().items() if k not in CachingOptions.model_fields}
        return validate({"kind": self.base, **values}, bases())

    def memory_kwargs(self, ctx: LayerContext) -> dict:
        own = {k: v for k, v in self.options().items() if k in CachingOptions.model_fields}
        return {**own, **self.base_options().memory_kwargs(ctx)}

    def check(self, ctx: LayerContext, prefix: str) -> None:
        base = self.base_options()
        base.check(ctx, prefix)
        if getattr(base, "stm", 0):
            raise OptionError("stm", f"{prefix}stm={base.stm}: caching combines the base's per-token reads only; "
                                     f"the short-term cache would be dropped (set {prefix}stm=0)")


@lru_cache(maxsize=None)
def _with_base(base: str, kinds: tuple[str, ...]) -> type[MemoryOptions]:
    """CachingOptions with `base` one of `kinds` and, for a valid base, the base's options added."""
    fields: dict[str, Any] = {"base": (Literal[kinds], Field("armt", description=CachingOptions.model_fields["base"].description))}  # type: ignore[valid-type]
    if base in kinds:
        extra = REGISTRY[base].Options.model_fields
        fields.update({k: (f.annotation, f) for k, f in extra.items() if k not in MemoryOptions.model_fields})
    return create_model(f"CachingOptions_{base}", __base__=CachingOptions, **fields)


_STATE_TYPES: dict[type, type] = {}


def cache_state_type(base_type: type) -> type:
    """The flat state of caching over a base whose state is `base_type` (one class per base type):
    the base's fields (online state, leaves (B, ...)), cached_<field> (leaves (B, C, ...), oldest
    first), desc (B, C1, E) descriptors of [online ; cached] (E = D with a router, else 0) and
    count (B,) long, segments written since the document start (the newest count − 1 slots are filled)."""
    if base_type not in _STATE_TYPES:
        fields = list(base_type._fields)
        _STATE_TYPES[base_type] = NamedTuple(
            f"Cached{base_type.__name__}",
            [(f, Tensor) for f in fields] + [(f"cached_{f}", Tensor) for f in fields]
            + [("desc", Tensor), ("count", Tensor)])
    return _STATE_TYPES[base_type]


def _rms(x: Tensor) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _map(fn, *states):
    """Apply fn leaf-wise over NamedTuple states of one type."""
    return type(states[0])(*(fn(*leaves) for leaves in zip(*states)))


@register("caching")
class CachingMemory(Memory):
    """Options: base, aggregate, max_caches, top_k (sparse), plus the base's own options."""

    Options = CachingOptions

    def __init__(self, n_head: int, head_dim: int, base: str = "armt", aggregate: str = "gated",
                 max_caches: int = 8, top_k: int = 2, **base_options):
        super().__init__(n_head, head_dim)
        if base not in bases():
            raise ValueError(f"CachingMemory: base must be one of {', '.join(bases())}, got {base!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"CachingMemory: unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
        try:
            self.base = REGISTRY[base](n_head, head_dim, **base_options)
        except TypeError as err:  # an option the base does not take
            raise ValueError(f"CachingMemory: base={base}: {err}") from None
        self.mode = self.base.cache_read  # the instance's: an option may make a base uncacheable
        if self.mode is None:
            raise ValueError(f"CachingMemory: base={base} with these options cannot be cached "
                             f"({', '.join(f'{k}={v}' for k, v in base_options.items())}), e.g. infinity's stm")
        if self.mode == "keys" and aggregate != "residual":
            raise ValueError(f"CachingMemory: base={base} reads keys/values inside the attention softmax; "
                             "only aggregate=residual applies")
        if max_caches < 1 or top_k < 1:
            raise ValueError(f"CachingMemory: max_caches and top_k must be >= 1, got {max_caches}, {top_k}")
        self.base_kind, self.aggregate, self.max_caches, self.top_k = base, aggregate, max_caches, top_k
        d = n_head * head_dim
        self.router = None if aggregate == "residual" else nn.Linear(d, d, bias=False)  # W_u
        self.base_type = type(self.base.empty(1, "cpu"))
        self.state_type = cache_state_type(self.base_type)
        self.fields = len(self.base_type._fields)

    def extra_repr(self) -> str:
        return f"base={self.base_kind}, aggregate={self.aggregate}, max_caches={self.max_caches}, top_k={self.top_k}"

    def empty(self, batch: int, device: torch.device | str) -> Any:
        c, e = self.max_caches, (0 if self.router is None else self.n_head * self.head_dim)
        cached = _map(lambda leaf: leaf.view(batch, c, *leaf.shape[1:]), self.base.empty(batch * c, device))
        return self.pack(self.base.empty(batch, device), cached, torch.zeros(batch, c + 1, e, device=device),
                         torch.zeros(batch, dtype=torch.long, device=device))

    def pack(self, online: Any, cached: Any, desc: Tensor, count: Tensor) -> Any:
        return self.state_type(*online, *cached, desc, count)

    def valid(self, state: Any) -> Tensor:
        """(B, C) bool: cache slots that hold a state (FIFO: the newest min(count − 1, C) slots)."""
        c = self.max_caches
        filled = (state.count - 1).clamp(0, c)  # (B,)
        return torch.arange(c, device=filled.device)[None, :] >= (c - filled)[:, None]

    def online(self, state: Any) -> Any:
        """The base state holding everything up to the last segment."""
        return self.base_type(*state[: self.fields])

    def cached(self, state: Any) -> Any:
        """The cached base states, leaves (B, C, ...), oldest first."""
        return self.base_type(*state[self.fields : 2 * self.fields])

    def stacked(self, state: Any) -> Any:
        """Base state with leaves (B * C1, ...): row b*C1 + 0 is b's online state, + i its cache i."""
        return _map(lambda o, c: torch.cat([o[:, None], c], dim=1).flatten(0, 1), self.online(state), self.cached(state))

    def live(self, state: Any) -> Tensor:
        """(B, C1) bool: the online state and the filled caches."""
        valid = self.valid(state)  # (B, C)
        return torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)

    def weights(self, state: Any, x: Tensor) -> Tensor:
        """(B, n, C1) combination weights of [online ; cached] for every row of x (B, n, D)."""
        live = self.live(state)[:, None, :]  # (B, 1, C1)
        if self.router is None:
            return live.to(x.dtype).expand(-1, x.shape[1], -1)
        u = self.router(_rms(x))  # (B, n, D)
        logits = u @ state.desc.transpose(1, 2).to(u.dtype) / math.sqrt(u.shape[-1])  # (B, n, C1)
        keep = live
        if self.aggregate == "sparse" and self.top_k < self.max_caches:
            cached = logits[..., 1:].masked_fill(~self.valid(state)[:, None, :], float("-inf"))  # (B, n, C)
            top = cached.topk(self.top_k, dim=-1).indices  # (B, n, k)
            chosen = torch.zeros_like(cached, dtype=torch.bool).scatter(-1, top, True)  # (B, n, C)
            keep = live & torch.cat([torch.ones_like(chosen[..., :1]), chosen], dim=-1)  # (B, n, C1)
        return logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)  # (B, n, C1)

    def combine(self, state: Any, x: Tensor, fn) -> Tensor:
        """fn(base_state, x) -> (B', n', D), a per-token read; combined over the states -> (B, n, D)."""
        b, n, c1 = x.shape[0], x.shape[1], self.max_caches + 1
        w = self.weights(state, x)  # (B, n, C1)
        if self.aggregate == "soup":
            stacked = _map(lambda leaf: leaf.view(b, c1, *leaf.shape[1:]), self.stacked(state))

            def mix(leaf: Tensor) -> Tensor:  # (B, C1, ...) -> (B * n, ...) one mixed state per token
                if not leaf.is_floating_point():
                    return leaf[:, :1].expand(b, n, *leaf.shape[2:]).flatten(0, 1)
                return torch.einsum("bnc,bc...->bn...", w.to(leaf.dtype), leaf).flatten(0, 1)

            with fp32_region(x.device.type):  # mixed states stay fp32 under bf16 autocast, as every state
                mixed = _map(mix, stacked)
            return fn(mixed, x.reshape(b * n, 1, -1)).view(b, n, -1)  # (B, n, D)
        y = fn(self.stacked(state), x.repeat_interleave(c1, dim=0))  # (B * C1, n, D)
        return torch.einsum("bnc,bcnd->bnd", w.to(y.dtype), y.view(b, c1, n, -1))  # (B, n, D)

    def read(self, state: Any, seg: SegmentView) -> Read:
        if self.mode == "keys":  # keys/values of every state in the one softmax
            c1 = self.max_caches + 1
            r = self.base.read(self.stacked(state), seg)
            if r.k is None:  # the base reads nothing from any state (all empty)
                return Read()
            b, h, m, d = r.k.shape[0] // c1, r.k.shape[1], r.k.shape[2], r.k.shape[3]
            k = r.k.view(b, c1, h, m, d).transpose(1, 2).reshape(b, h, c1 * m, d)  # (B, H, C1 * M, d)
            v = r.v.view(b, c1, h, m, d).transpose(1, 2).reshape(b, h, c1 * m, d)
            live = self.live(state)[..., None]  # (B, C1, 1)
            seen = live if r.valid is None else r.valid.view(b, c1, m) & live  # (B, C1, 1 or M)
            if r.rows is not None:  # the base's row mask: states with no history at all
                seen = seen & r.rows.view(b, c1, 1)
            valid = seen.expand(b, c1, m).flatten(1)  # (B, C1 * M)
            return Read(k=k, v=v, valid=valid)

        if self.mode != "out":
            return Read()
        b, n = seg.x.shape[:2]

        def one(base_state: Any, x: Tensor) -> Tensor:
            if self.aggregate == "soup":  # one token per row: (B * n, 1, ...)
                view = SegmentView(seg.x.reshape(b * n, 1, -1),
                                   *(t.transpose(1, 2).reshape(b * n, t.shape[1], 1, -1) for t in seg[1:4]))
            else:  # every state of a row reads the row's tokens: (B * C1, n, ...)
                view = SegmentView(*(t.repeat_interleave(self.max_caches + 1, dim=0) for t in seg[:4]))
            return self.base.read(base_state, view).out

        return Read(out=self.combine(state, seg.x, one))

    def pre(self, state: Any, x: Tensor) -> Tensor | None:
        return self.combine(state, x, self.base.pre) if self.mode == "pre" else None

    def slot_counts(self) -> tuple[int, int]:
        return self.base.slot_counts()

    def inject(self, state: Any, batch: int) -> tuple[Tensor | None, Tensor | None]:
        return self.base.inject(self.online(state), batch)

    def write(self, state: Any, seg: SegmentView) -> Any:
        online = self.base.write(self.online(state), seg)
        cached = _map(lambda c, o: torch.cat([c[:, 1:], o[:, None].to(c.dtype)], dim=1),
                      self.cached(state), self.online(state))
        desc = state.desc
        if self.router is not None:
            now = _rms(seg.x.float()).mean(dim=1, keepdim=True)  # (B, 1, D) this segment's descriptor
            desc = torch.cat([now, desc[:, 2:], desc[:, :1]], dim=1)  # [online ; cached oldest..newest]
        return self.pack(online, cached, desc, state.count + 1)

    def aux_loss(self, state: Any) -> Tensor | None:
        return self.base.aux_loss(self.online(state))

    def metrics(self, state: Any) -> dict[str, Tensor]:
        return self.base.metrics(self.online(state))

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost | None:
        """The base's read from each of the C1 states (its write once); mixing 2 n C1 D, and with a
        router W_u x̂ (2 n D^2) and its logits over the descriptors (2 n C1 D). `soup` instead mixes
        the states per row (2 n C1 per float of a state) and reads each row from its own state."""
        base = self.base.cost(l, t, rows)
        if base is None:
            return None
        c1, d = self.max_caches + 1, self.n_head * self.head_dim
        if self.mode == "keys":
            return MemoryCost(c1 * base.keys, c1 * base.read, base.write)
        n = rows if rows is not None else l + sum(self.slot_counts()) if self.mode == "pre" else l
        route = 0 if self.router is None else 2 * n * d * d + 2 * n * c1 * d
        if self.aggregate == "soup":
            floats = sum(x.numel() for x in self.base.empty(1, "meta") if x.is_floating_point())
            per_row = self.base.cost(1, t, 1)
            return None if per_row is None else MemoryCost(0, route + 2 * n * c1 * floats + n * per_row.read, base.write)
        return MemoryCost(c1 * base.keys, c1 * base.read + 2 * n * c1 * d + route, base.write)

    def plan_flops(self, l: int, t: int) -> int:
        """The base's write plan, made by the base's write in every layer (caching shares none)."""
        return self.base.plan_flops(l, t)

    def numel(self, state: Any) -> int:
        per = self.base.numel(self.online(state))
        return (self.max_caches + 1) * (per + state.desc.shape[-1])
