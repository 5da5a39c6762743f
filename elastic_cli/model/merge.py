"""Local causal attention in the fused kernel, merged exactly with memory logits by log-sum-exp.

Axis legend: B batch, H heads, n queries, S = start + n local keys, M memory keys, d head width.

softmax over [memory ; local] splits into parts with their own log-sum-exp L_p and output O_p:
  L = logsumexp_p L_p,   y = Σ_p exp(L_p - L) O_p
(the merge of blockwise softmax, Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022). The
local keys are one causal part at a segment start, or, when streaming (start > 0), a non-causal
part for the keys before the chunk and a causal part for the chunk. Each runs in the fused kernel
(flash on CUDA for bf16/fp16, the flash CPU kernel on the CPU), which returns its L_p.

Backward: with the merged output y and L, the gradient of the joint softmax w.r.t. a local logit is
P_ij (dy_i · v_j - dy_i · y_i) with P_ij = exp(s_ij - L_i): exactly what the kernel's backward
computes when it is handed y and L instead of its own part's output and LSE (as ring attention
does). The memory part (n x M, small) is differentiated here explicitly.
`math_forward` / `math_backward` are the unfused twin (any device and dtype), tested equal.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def math_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """Explicit softmax attention: (out (B, H, n, d) in q's dtype, lse (B, H, n) fp32 or fp64).
    causal: query i sees key j iff j <= i (top-left aligned, as the fused kernels)."""
    s = q.float() @ k.float().transpose(-1, -2) * scale if q.dtype != torch.float64 else q @ k.transpose(-1, -2) * scale
    if causal:
        n, m = s.shape[-2:]
        s = s.masked_fill(torch.ones(n, m, dtype=torch.bool, device=s.device).triu(1), float("-inf"))  # (B, H, n, S)
    lse = s.logsumexp(-1)  # (B, H, n)
    return ((s - lse[..., None]).exp() @ v.to(s.dtype)).to(q.dtype), lse


def math_backward(dy: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool,
                  scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of the joint softmax whose output is `out` and log-sum-exp `lse`."""
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf, dyf = q.to(wide), k.to(wide), v.to(wide), dy.to(wide)
    s = qf @ kf.transpose(-1, -2) * scale  # (B, H, n, S)
    if causal:
        n, m = s.shape[-2:]
        s = s.masked_fill(torch.ones(n, m, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    p = (s - lse.to(wide)[..., None]).exp()  # (B, H, n, S) joint-softmax weights of these keys
    ds = p * (dyf @ vf.transpose(-1, -2) - (dyf * out.to(wide)).sum(-1, keepdim=True)) * scale  # (B, H, n, S)
    return (ds @ kf).to(q.dtype), (ds.transpose(-1, -2) @ qf).to(k.dtype), (p.transpose(-1, -2) @ dyf).to(v.dtype)


def _flash_cuda(q: Tensor) -> bool:
    return q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0 \
        and q.shape[-1] <= 256


def fused_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> tuple[Tensor, Tensor, tuple]:
    """(out, lse, what the backward needs) from the fused kernel; `math_forward` where none applies.
    The last item is () or, for CUDA flash, (cum_seq_q, cum_seq_k, rng_state, unused, max_q, max_k)."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse, ()
    if _flash_cuda(q):
        out, lse, cq, ck, mq, mk, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale)
        return out, lse, (cq, ck, seed, offset, mq, mk)
    out, lse = math_forward(q, k, v, causal, scale)
    return out, lse, ()


def fused_backward(dy: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool,
                   scale: float, extra: tuple) -> tuple[Tensor, Tensor, Tensor]:
    """The kernel's backward for the joint softmax given its merged output and log-sum-exp."""
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dy, q, k, v, out, lse, 0.0, causal, scale=scale)
    if extra:  # CUDA flash: the same arguments as its autograd formula (derivatives.yaml)
        cq, ck, seed, offset, mq, mk = extra
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dy, q, k, v, out, lse, cq, ck, mq, mk, 0.0, causal, seed, offset, scale=scale)
    return math_backward(dy, q, k, v, out, lse, causal, scale)


def _parts(k: Tensor, v: Tensor, start: int) -> list[tuple[Tensor, Tensor, bool]]:
    """Local keys as fused-kernel parts: [(keys, values, causal)]; keys before `start` are seen by all,
    and one query (a generated token) sees every key."""
    if start == 0:
        return [(k, v, True)]
    if k.shape[2] - start == 1:
        return [(k, v, False)]
    return [(k[:, :, :start], v[:, :, :start], False), (k[:, :, start:], v[:, :, start:], True)]


class _Merged(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mem: Tensor, v_mem: Tensor, start: int) -> Tensor:
        scale = 1.0 / math.sqrt(q.shape[-1])
        with torch.autocast(device_type=q.device.type, enabled=False):
            parts = [fused_forward(q, kp, vp, causal, scale) for kp, vp, causal in _parts(k, v, start)]
            wide = mem.dtype  # fp32 (fp64 when the inputs are)
            lse_mem = mem.logsumexp(-1)  # (B, H, n); -inf where no memory key is valid
            if len(parts) == 1:
                lse = torch.logaddexp(parts[0][1].to(wide), lse_mem)  # (B, H, n)
            else:
                lse = torch.stack([lse_p.to(wide) for _, lse_p, _ in parts] + [lse_mem]).logsumexp(0)  # (B, H, n)
            p_mem = (mem - lse[..., None]).exp()  # (B, H, n, M) joint-softmax weights of the memory keys
            y = p_mem @ v_mem.to(wide)  # (B, H, n, d)
            for out_p, lse_p, _ in parts:
                y.addcmul_(out_p.to(wide), (lse_p.to(wide) - lse).exp()[..., None])  # + exp(L_p - L) O_p
            y = y.to(q.dtype)
        extras = [e for _, _, e in parts]  # tensors go through save_for_backward, sizes onto ctx
        ctx.save_for_backward(q, k, v, p_mem, v_mem, y, lse, *(x for e in extras for x in e[:4]))
        ctx.sizes = [e[4:] for e in extras]
        ctx.start, ctx.scale, ctx.lse_dtype = start, scale, parts[0][1].dtype
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        q, k, v, p_mem, v_mem, y, lse, *flat = ctx.saved_tensors
        extras, i = [], 0
        for sizes in ctx.sizes:
            extras.append(tuple(flat[i:i + 4]) + tuple(sizes) if sizes else ())
            i += 4 if sizes else 0
        with torch.autocast(device_type=q.device.type, enabled=False):
            dy = dy if dy.stride(-1) == 1 else dy.contiguous()
            lse_k = lse.to(ctx.lse_dtype)
            grads = [fused_backward(dy, q, kp, vp, y, lse_k, causal, ctx.scale, extra)
                     for (kp, vp, causal), extra in zip(_parts(k, v, ctx.start), extras)]
            if len(grads) == 1:
                dq, dk, dv = grads[0]  # (B, H, n, d), (B, H, S, d) x 2
            else:
                dq = grads[0][0] + grads[1][0]  # (B, H, n, d)
                dk, dv = (torch.cat([g[j] for g in grads], dim=2) for j in (1, 2))  # (B, H, S, d)
            dyw = dy.to(p_mem.dtype)
            delta = torch.linalg.vecdot(dyw, y.to(p_mem.dtype))[..., None]  # (B, H, n, 1) dy_i · y_i
            dmem = p_mem * (dyw @ v_mem.to(p_mem.dtype).transpose(-1, -2) - delta)  # (B, H, n, M)
            dv_mem = (p_mem.transpose(-1, -2) @ dyw).to(v_mem.dtype)  # (B, H, M, d)
        return dq, dk, dv, dmem, dv_mem, None


def merged_attention(q: Tensor, k: Tensor, v: Tensor, mem: Tensor, v_mem: Tensor, start: int) -> Tensor:
    """Joint softmax over [memory ; causal local]. q: (B, H, n, d) rotated queries at positions
    start..start+n-1; k, v: (B, H, S, d) rotated local keys 0..S-1; mem: (B, H, n, M) scaled memory
    logits (fp32, -inf where masked); v_mem: (B, H, M, d). Returns (B, H, n, d) in q's dtype."""
    return _Merged.apply(q, k, v, mem, v_mem, start)
