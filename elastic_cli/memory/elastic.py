"""Elastic Memory: online HiPPO-LegS compression of a layer's keys (before RoPE) and values,
read back by polynomial sampling at the points of a schedule (docs/memory.md).

Axis legend: B batch, H heads, N order, d head width, l segment tokens, M samples.
No trainable parameters: the state dicts of `elastic` and `none` models match.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import Field
from torch import Tensor

from ..precision import fp32_region
from . import hippo, sampling
from .base import Memory, MemoryCost, Read, SegmentView, register
from .options import MemoryOptions


class ElasticOptions(MemoryOptions):
    order: int = Field(64, gt=0, description="LegS order N: coefficients per head and key/value width")
    samples: int = Field(64, gt=0, description="M points read back as extra keys/values per head")
    schedule: Literal[sampling.SCHEDULES] = Field("uniform", description="where the M points lie in [0, 1] "  # type: ignore[valid-type]
                                               "(1 = now); can change at test time")
    power: float = Field(2.0, gt=0, description="strength of the `power` schedule")


class ElasticState(NamedTuple):
    c: Tensor  # (B, N, 2, H, d) fp32 LegS coefficients of the keys before RoPE ([:, :, 0]) and the values
    #            ([:, :, 1]), laid out as the segment's rows (B, l, 2, H, d), so one product writes both
    t: Tensor  # (B,) long, tokens absorbed since the document start

    @property
    def ck(self) -> Tensor:
        return self.c[:, :, 0].transpose(1, 2)  # (B, H, N, d) C_K (a view)

    @property
    def cv(self) -> Tensor:
        return self.c[:, :, 1].transpose(1, 2)  # (B, H, N, d) C_V (a view)


@register("elastic")
class ElasticMemory(Memory):
    """State: C_K and C_V (N x d per head) and t. Write: exact segment LegS projection of the
    segment's keys/values (`hippo.absorb`). Read: M samples S @ C as extra keys/values."""

    Options = ElasticOptions
    cache_read = "keys"

    def __init__(self, n_head: int, head_dim: int, order: int, samples: int,
                 schedule: str = "uniform", power: float = 2.0):
        super().__init__(n_head, head_dim)
        if order < 1 or samples < 1:
            raise ValueError(f"ElasticMemory: order and samples must be >= 1, got {order}, {samples}")
        if schedule not in sampling.SCHEDULES:
            raise ValueError(f"ElasticMemory: unknown schedule {schedule!r}; choose one of {', '.join(sampling.SCHEDULES)}")
        self.order, self.samples, self.schedule, self.power = order, samples, schedule, float(power)
        # Constants, not state: never saved (the state dicts of elastic and none stay equal), moved with
        # the model, so the write and read find them on their device without a cache.
        for name, value in hippo.bank_constants(order)._asdict().items():  # float64: u, gw, band, gscale
            self.register_buffer(f"bank_{name}", value, persistent=False)
        fixed = torch.zeros(0) if sampling.depends_on_t(schedule) else sampling.sampling_matrix(schedule, samples, 0, order, power)
        self.register_buffer("fixed_sampling", fixed.float(), persistent=False)  # (M, N) fp32, t-free schedules

    def extra_repr(self) -> str:
        return f"order={self.order}, samples={self.samples}, schedule={self.schedule}, power={self.power}"

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost:
        """Write 2 (2 N l D + 2 N^2 D) (W @ X, and R @ C when t > 0); read 2 * 2 M N D (S @ C_K, S @ C_V)."""
        n, m, d = self.order, self.samples, self.n_head * self.head_dim
        write = 2 * (2 * n * l * d + (2 * n * n * d if t > 0 else 0))
        return MemoryCost(m, 2 * 2 * m * n * d, write) if t > 0 else MemoryCost(0, 0, write)

    def bank_constants(self) -> hippo.BankConstants:
        return hippo.BankConstants(self.bank_u, self.bank_gw, self.bank_band, self.bank_gscale)

    def empty(self, batch: int, device: torch.device | str) -> ElasticState:
        c = torch.zeros(batch, self.order, 2, self.n_head, self.head_dim, device=device)  # (B, N, 2, H, d)
        return ElasticState(c, torch.zeros(batch, dtype=torch.long, device=device))

    def sampling_rows(self, t: Tensor) -> Tensor:
        """S for every row: (M, N) when the schedule ignores t, else (B, M, N)."""
        if not sampling.depends_on_t(self.schedule):
            return self.fixed_sampling
        return sampling.exponential_sampling_rows(t, self.samples, self.order, self.bank_gscale).float()  # (B, M, N), no cache

    def read(self, state: ElasticState, seg: SegmentView) -> Read:
        b, n, _, h, d = state.c.shape
        every = False  # every row has a history: known on the CPU only
        if state.t.device.type == "cpu":  # free to know there (a list: no numpy call in the hot path)
            rows = state.t.tolist()
            if not any(rows):
                return Read()  # every row is empty: nothing to read
            every = all(rows)
        valid = None if every else (state.t > 0)[:, None].expand(-1, self.samples)  # (B, M); None: all valid
        with fp32_region(state.c.device.type):
            s = self.sampling_rows(state.t)  # (M, N) or (B, M, N)
            kv = torch.bmm(s.expand(b, -1, -1), state.c.view(b, n, 2 * h * d)).view(b, -1, 2, h, d)  # (B, M, 2, H, d)
        k, v = (x.transpose(1, 2) for x in kv.unbind(2))  # (B, H, M, d) each, views
        return Read(k=k, v=v, valid=valid)

    def write(self, state: ElasticState, seg: SegmentView) -> ElasticState:
        """Keys and values in one absorb: one bank build and one product for both, on the segment laid
        out as the state, (B, l, 2, H, d) (one copy of it: cheaper than a product per part)."""
        b, n, _, h, d = state.c.shape
        l = seg.k.shape[2]
        rows = torch.stack((seg.k.transpose(1, 2), seg.v.transpose(1, 2)), dim=2)  # (B, l, 2, H, d), their dtype
        c = hippo.absorb(state.c.view(b, n, 2 * h * d), state.t, rows.view(b, l, 2 * h * d),
                         self.bank_constants())  # (B, N, 2 H d): fp32, absorb runs in its own fp32 region
        return ElasticState(c.view(b, n, 2, h, d), state.t + l)

    def numel(self, state: ElasticState) -> int:
        return 2 * self.n_head * self.order * self.head_dim
