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
from .base import Memory, MemoryCost, Read, SegmentView
from .registry import register
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
    t: Tensor  # (B,) long ON THE CPU, tokens absorbed since the document start: the host builds the write's
    #            banks and knows which rows are empty without a device sync

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
        # Constants, not state: never saved (the state dicts of elastic and none stay equal). The bank
        # constants stay on the host (a plain attribute, not a buffer: `.to(device)` leaves them there),
        # where the write's banks are built in float64; the sampling matrix of a t-free schedule is a
        # buffer, moved with the model.
        self.host_constants = hippo.bank_constants(order)  # float64, CPU: u, gw, band, gscale
        self._base: tuple | None = None  # ((l, device, dtype), W(0, l)): see base_injection
        fixed = torch.zeros(0) if sampling.depends_on_t(schedule) else sampling.sampling_matrix(schedule, samples, 0, order, power)
        self.register_buffer("fixed_sampling", fixed.float(), persistent=False)  # (M, N) fp32, t-free schedules

    def extra_repr(self) -> str:
        return f"order={self.order}, samples={self.samples}, schedule={self.schedule}, power={self.power}"

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost:
        """Write 2 * 2 N (N + l) D ([R | W] @ [C ; X], one product also at t = 0, where R = 0); read
        2 * 2 M N D (S @ C_K, S @ C_V). The bank's own product is `plan_flops` (once per segment)."""
        n, m, d = self.order, self.samples, self.n_head * self.head_dim
        write = 2 * 2 * n * (n + l) * d
        return MemoryCost(m, 2 * 2 * m * n * d, write) if t > 0 else MemoryCost(0, 0, write)

    def plan_flops(self, l: int, t: int) -> int:
        """(1 - ρ) A @ W(0, l): 2 N^2 l, once per segment for all layers (`write_plan`)."""
        return 2 * self.order * self.order * l

    def empty(self, batch: int, device: torch.device | str) -> ElasticState:
        c = torch.zeros(batch, self.order, 2, self.n_head, self.head_dim, device=device)  # (B, N, 2, H, d)
        return ElasticState(c, torch.zeros(batch, dtype=torch.long))  # t on the host

    def reset(self, state: ElasticState, mask: Tensor) -> ElasticState:
        """Rows with mask=True become empty. mask (B,) bool, best on the CPU (a device mask costs a sync for t)."""
        rows = mask.to(state.c.device, non_blocking=True).view(-1, 1, 1, 1, 1)  # (B, 1, 1, 1, 1)
        return ElasticState(torch.where(rows, 0, state.c), torch.where(mask.cpu(), 0, state.t))

    def sampling_rows(self, t: Tensor, device: torch.device) -> Tensor:
        """S for every row on `device`: (M, N) when the schedule ignores t, else (B, M, N) built on the host
        in float64 from t (B,) and uploaded in fp32 (one copy)."""
        if not sampling.depends_on_t(self.schedule):
            return self.fixed_sampling
        rows = sampling.exponential_sampling_rows(t, self.samples, self.order, self.host_constants.gscale)  # (B, M, N) f64
        return rows.float().to(device, non_blocking=True)

    def read(self, state: ElasticState, seg: SegmentView) -> Read:
        """Memory keys and values S @ C. Which rows have a history is known on the host (t): none -> no
        read at all; some -> `Read.rows`, so attention keeps the fused kernel unmasked."""
        b, n, _, h, d = state.c.shape
        history = state.t.tolist()  # host values: no device sync, no numpy call in the hot path
        if not any(history):
            return Read()  # every row is empty: nothing to read
        with fp32_region(state.c.device.type):
            s = self.sampling_rows(state.t, state.c.device)  # (M, N) or (B, M, N)
            kv = torch.bmm(s.expand(b, -1, -1), state.c.view(b, n, 2 * h * d)).view(b, -1, 2, h, d)  # (B, M, 2, H, d)
        k, v = (x.transpose(1, 2) for x in kv.unbind(2))  # (B, H, M, d) each, views
        rows = None if all(history) else (state.t > 0).to(state.c.device, non_blocking=True)  # (B,)
        return Read(k=k, v=v, rows=rows)

    def plan_key(self) -> tuple:
        return ("elastic", self.order)  # every elastic layer of a model has read the same tokens

    def base_injection(self, l: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """W(0, l) (N, l) on `device` in `dtype`: a constant of the segment length, built once on the host
        and kept with the module (a plain attribute: not saved, not a DDP buffer; rebuilt when l, the
        device or the dtype change)."""
        key = (l, device, dtype)
        if self._base is None or self._base[0] != key:
            self._base = key, hippo.base_injection(l, self.order, self.host_constants).to(device, dtype)
        return self._base[1]

    def write_plan(self, state: ElasticState, l: int) -> Tensor:
        """[R(t/T) | W(t, T)] on the state's device, (1 or B, N, N + l) in the state's dtype, once per
        segment for all layers: the host builds [R | (1 - ρ) A] (N x 2N, float64, cast; `hippo.step_bank`)
        and uploads it, the device carries the base injection there (`hippo.write_bank`)."""
        step = hippo.step_bank(state.t, l, self.order, self.host_constants, state.c.dtype)  # (1 or B, N, 2N)
        if state.c.device.type != "cpu":
            step = step.to(state.c.device, non_blocking=True)
        return hippo.write_bank(step, self.base_injection(l, state.c.device, state.c.dtype))

    def write(self, state: ElasticState, seg: SegmentView, plan: Tensor | None = None) -> ElasticState:
        """C_new = [R | W] @ [C ; X] (docs/memory.md, "Write"): one product for keys and values, on the
        segment's rows laid out as the state, (B, l, 2, H, d) (the fused projection's view when given).
        Rows at t = 0 need no select: R(0) = 0 and their C is 0."""
        b, n, _, h, d = state.c.shape
        l = seg.k.shape[2]
        bank = self.write_plan(state, l) if plan is None else plan  # (1 or B, N, N + l)
        kv = seg.kv if seg.kv is not None else torch.stack((seg.k.transpose(1, 2), seg.v.transpose(1, 2)), dim=2)
        if torch.promote_types(kv.dtype, state.c.dtype) != state.c.dtype:  # wider than the state (tests): cast
            kv = kv.to(state.c.dtype)
        with fp32_region(state.c.device.type):  # (B, l, 2, H, d) in the projection's dtype, promoted by cat
            cx = torch.cat([state.c.view(b, n, 2 * h * d), kv.reshape(b, l, 2 * h * d)], dim=1)  # (B, N + l, 2 H d)
            c = torch.bmm(bank.expand(b, -1, -1), cx)  # (B, N, 2 H d)
        return ElasticState(c.view(b, n, 2, h, d), state.t + l)

    def numel(self, state: ElasticState) -> int:
        return 2 * self.n_head * self.order * self.head_dim
