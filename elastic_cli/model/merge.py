"""Local causal attention and the memory keys in the fused kernel, merged exactly by log-sum-exp.

Axis legend: B batch, H heads, n queries, S = start + n local keys, M memory keys, d head width.

softmax over [memory ; local] splits into parts with their own log-sum-exp L_p and output O_p:
  L = logsumexp_p L_p,   y = Σ_p exp(L_p - L) O_p
(the merge of blockwise softmax, Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022). The
local keys are one causal part at a segment start, or, when streaming (start > 0), a non-causal
part for the keys before the chunk and a causal part for the chunk. The memory keys are one more
non-causal part with their own queries (the un-rotated query; the rotated one for memory keys with
positions) and, where some key is invalid, an additive mask. Each part runs in the fused kernel
(flash on CUDA for bf16/fp16 without a mask, the flash CPU kernel on the CPU), which returns its L_p.
With two parts, exp(L_1 - L) = sigmoid(L_1 - L_2) and y is one lerp.

Backward: with the merged output y and L, the gradient of the joint softmax w.r.t. a logit of any
part is P_ij (dy_i · v_j - dy_i · y_i) with P_ij = exp(s_ij - L_i): exactly what the kernel's
backward computes when it is handed y and L instead of its own part's output and LSE (as ring
attention does), so every part, the memory's included, is differentiated by its kernel.
`math_forward` / `math_backward` are the unfused twin (any device and dtype), tested equal.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..precision import fp32_region


class Part(NamedTuple):
    """One part of the joint softmax, as one fused-kernel call: queries q (B, H, n, d), keys and values
    k, v (B, H, S, d); causal: query i sees key j iff j <= i (top-left aligned, as the fused kernels);
    mask: additive, broadcastable to (B, H, n, S) (-inf: not seen), or None."""
    q: Tensor
    k: Tensor
    v: Tensor
    causal: bool = False
    mask: Tensor | None = None


class MemoryKeys(NamedTuple):
    """The memory side of `merged_attention`: the queries of the memory logits q (B, H, n, d) (un-rotated,
    or rotated when the memory keys have positions), keys and values k, v (B, H, M, d); valid: (B, M)
    bool or None (every key valid); rows: (B,) bool or None, the rows that see the memory at all."""
    q: Tensor
    k: Tensor
    v: Tensor
    valid: Tensor | None = None
    rows: Tensor | None = None


def math_forward(part: Part, scale: float) -> tuple[Tensor, Tensor]:
    """Explicit softmax attention: (out (B, H, n, d) in q's dtype, lse (B, H, n) fp32 or fp64); a row
    that sees no key has out 0 and lse -inf."""
    q, k, v, causal, mask = part
    s = q.float() @ k.float().transpose(-1, -2) * scale if q.dtype != torch.float64 else q @ k.transpose(-1, -2) * scale
    s = _masked(s, causal, mask)  # (B, H, n, S)
    lse = s.logsumexp(-1)  # (B, H, n)
    p = torch.where(torch.isfinite(lse)[..., None], (s - lse[..., None]).exp(), 0)  # (B, H, n, S)
    return (p @ v.to(s.dtype)).to(q.dtype), lse


def _masked(s: Tensor, causal: bool, mask: Tensor | None) -> Tensor:
    if causal:
        n, m = s.shape[-2:]
        s = s.masked_fill(torch.ones(n, m, dtype=torch.bool, device=s.device).triu(1), float("-inf"))  # (B, H, n, S)
    return s if mask is None else s + mask.to(s.dtype)


def math_backward(dy: Tensor, part: Part, out: Tensor, lse: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of `part` within the joint softmax whose output is `out` and log-sum-exp `lse`."""
    q, k, v, causal, mask = part
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf, dyf = q.to(wide), k.to(wide), v.to(wide), dy.to(wide)
    s = _masked(qf @ kf.transpose(-1, -2) * scale, causal, mask)  # (B, H, n, S)
    p = (s - lse.to(wide)[..., None]).exp()  # (B, H, n, S) joint-softmax weights of these keys
    ds = p * (dyf @ vf.transpose(-1, -2) - (dyf * out.to(wide)).sum(-1, keepdim=True)) * scale  # (B, H, n, S)
    return (ds @ kf).to(q.dtype), (ds.transpose(-1, -2) @ qf).to(k.dtype), (p.transpose(-1, -2) @ dyf).to(v.dtype)


_CPU_FORWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default  # the overloads: no packet lookup
_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


def _flash_cuda(q: Tensor) -> bool:
    """Whether CUDA flash attention takes q. `meta` counts as CUDA: it is the device on which the
    accelerator path is traced and counted (`gpu_path.py`), and flash has meta kernels."""
    return q.device.type in ("cuda", "meta") and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0 \
        and q.shape[-1] <= 256


def fused_forward(part: Part, scale: float) -> tuple[Tensor, Tensor, tuple]:
    """(out, lse, what the backward needs) from the fused kernel; `math_forward` where none applies.
    The last item is () or, for CUDA flash, (cum_seq_q, cum_seq_k, rng_state, unused, max_q, max_k).
    The mask is additive, in q's dtype (the CPU kernel takes it; CUDA flash does not: the twin runs)."""
    q, k, v, causal, mask = part
    if q.device.type == "cpu":
        out, lse = _CPU_FORWARD(q, k, v, 0.0, causal, attn_mask=mask, scale=scale)
        return out, lse, ()
    if _flash_cuda(q) and mask is None:
        out, lse, cq, ck, mq, mk, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale)
        return out, lse, (cq, ck, seed, offset, mq, mk)
    out, lse = math_forward(part, scale)
    return out, lse, ()


def fused_backward(dy: Tensor, part: Part, out: Tensor, lse: Tensor, scale: float,
                   extra: tuple) -> tuple[Tensor, Tensor, Tensor]:
    """The kernel's backward of `part` within the joint softmax, given its merged output and log-sum-exp
    and what `fused_forward` returned for the backward."""
    q, k, v, causal, mask = part
    if q.device.type == "cpu":
        return _CPU_BACKWARD(dy, q, k, v, out, lse, 0.0, causal, attn_mask=mask, scale=scale)
    if extra:  # CUDA flash: the same arguments as its autograd formula (derivatives.yaml)
        cq, ck, seed, offset, mq, mk = extra
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dy, q, k, v, out, lse, cq, ck, mq, mk, 0.0, causal, seed, offset, scale=scale)
    return math_backward(dy, part, out, lse, scale)


def _parts(local: Part, start: int, memory: Part) -> list[Part]:
    """The joint softmax as fused-kernel parts: the local keys (keys before `start` are seen by all,
    and one query, a generated token, sees every key), then the memory keys, seen by every query
    (with their own queries: un-rotated, or rotated for positions)."""
    q, k, v, _, _ = local
    if start == 0:
        return [Part(q, k, v, True), memory]
    if k.shape[2] - start == 1:
        return [Part(q, k, v), memory]
    return [Part(q, k[:, :, :start], v[:, :, :start]), Part(q, k[:, :, start:], v[:, :, start:], True), memory]


_WIDE = (torch.float32, torch.float64)


def _as(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x if x.dtype == dtype else x.to(dtype)  # no dispatch when it is already there (the common case)


def _combine(outs: list[Tensor], lses: list[Tensor]) -> tuple[Tensor, Tensor]:
    """y = Σ_p exp(L_p - L) O_p with L = logsumexp_p L_p: (B, H, n, d) in the lse dtype, (B, H, n).
    Two parts (a segment's local keys and its memory): exp(L_1 - L) = sigmoid(L_1 - L_2), one lerp."""
    wide = lses[0].dtype
    if len(outs) == 2:
        (o1, o2), (l1, l2) = outs, lses
        weight = torch.sigmoid(l1 - l2).unsqueeze(-1)  # (B, H, n, 1); L_2 = -inf: 1, y = o1
        return _as(o2, wide).lerp_(_as(o1, wide), weight), torch.logaddexp(l1, l2)  # into the memory part's output
    lse = torch.stack(lses).logsumexp(0)  # (B, H, n)
    y = torch.zeros_like(outs[0], dtype=wide)
    for o, l in zip(outs, lses):
        y.addcmul_(_as(o, wide), (l - lse).exp().unsqueeze(-1))
    return y, lse


class _Merged(torch.autograd.Function):
    """Saved: the inputs, the additive mask, y and L (the parts are rebuilt from them: views), and
    CUDA flash's tensors (through save_for_backward, as torch.compile wants; their sizes on ctx)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, q_mem: Tensor, k_mem: Tensor, v_mem: Tensor,
                valid: Tensor | None, rows: Tensor | None, start: int) -> Tensor:
        scale = 1.0 / math.sqrt(q.shape[-1])
        mask = None
        if valid is not None:  # (B, M) bool -> additive (B, 1, 1, M) in the kernel's dtype
            mask = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill_(~valid, float("-inf"))
            mask = mask[:, None, None, :]
        with fp32_region(q.device.type):
            parts = _parts(Part(q, k, v), start, Part(q_mem, k_mem, v_mem, False, mask))
            done = [fused_forward(part, scale) for part in parts]
            lses = [lse_p if lse_p.dtype in _WIDE else lse_p.float() for _, lse_p, _ in done]
            if valid is not None:  # a row that sees no memory key: its memory part has no mass (the CPU kernel says 0)
                lses[-1] = lses[-1].masked_fill(~valid.any(-1)[:, None, None], float("-inf"))
            if rows is not None:  # rows without memory: the unmasked kernel ran over them; drop that mass
                lses[-1] = lses[-1].masked_fill(~rows[:, None, None], float("-inf"))
            y, lse = _combine([out for out, _, _ in done], lses)
            y = _as(y, q.dtype)
        extras = [extra for _, _, extra in done]
        ctx.save_for_backward(q, k, v, q_mem, k_mem, v_mem, mask, rows, y, lse, *(x for e in extras for x in e[:4]))
        ctx.sizes = [e[4:] for e in extras] if any(extras) else None
        ctx.start, ctx.scale, ctx.lse_dtype = start, scale, done[0][1].dtype
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        q, k, v, q_mem, k_mem, v_mem, mask, rows, y, lse, *flat = ctx.saved_tensors
        parts = _parts(Part(q, k, v), ctx.start, Part(q_mem, k_mem, v_mem, False, mask))
        extras = [()] * len(parts)
        if ctx.sizes is not None:
            extras, i = [], 0
            for sizes in ctx.sizes:
                extras.append(tuple(flat[i:i + 4]) + sizes if sizes else ())
                i += 4 if sizes else 0
        lse = _as(lse, ctx.lse_dtype)
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        with fp32_region(q.device.type):
            grads = [fused_backward(dy, part, y, lse, ctx.scale, extra) for part, extra in zip(parts, extras)]
        *local, (dq_mem, dk_mem, dv_mem) = grads
        if rows is not None:  # the kernel's backward saw exp(s - L) > 0 on rows without memory: their true weight is 0
            keep = rows.view(-1, 1, 1, 1)
            dq_mem, dk_mem, dv_mem = (torch.where(keep, g, 0) for g in (dq_mem, dk_mem, dv_mem))
        if len(local) == 1:
            dq, dk, dv = local[0]  # (B, H, n, d), (B, H, S, d) x 2
        else:
            dq = local[0][0] + local[1][0]  # (B, H, n, d)
            dk, dv = (torch.cat([g[j] for g in local], dim=2) for j in (1, 2))  # (B, H, S, d)
        return dq, dk, dv, dq_mem, dk_mem, dv_mem, None, None, None


def merged_attention(q: Tensor, k: Tensor, v: Tensor, start: int, memory: MemoryKeys) -> Tensor:
    """Joint softmax over [memory ; causal local]. q: (B, H, n, d) rotated queries at positions
    start..start+n-1; k, v: (B, H, S, d) rotated local keys 0..S-1; the memory's keys and values are
    cast to q's dtype (the local tensors are in it already). With `memory.valid` None and `rows` given,
    the kernel runs unmasked and the other rows' memory part is dropped exactly. Returns (B, H, n, d)
    in q's dtype. (`_Merged.apply` takes every tensor as an argument of its own: autograd tracks only those.)"""
    q_mem, k_mem, v_mem, valid, rows = memory
    return _Merged.apply(q, k, v, q_mem, _as(k_mem, q.dtype), _as(v_mem, q.dtype), valid, rows, start)
