"""`infinity`: the ∞-former's unbounded long-term memory (Martins, Marinho, Martins, ACL 2022,
arXiv 2109.00301, §3), one per memory layer; its read is added to the local attention output.

Axis legend: B batch, H heads, d head width, D = H·d, l segment tokens, N basis functions,
P regression points, S resampled points (`resample`).

Signal. The layer inputs leaving the local window (the segment just read) are a signal X (l, D) on
positions t_i ∈ [0, 1]. With N Gaussian RBFs ψ_j(t) = N(t; c_j, w_j²) and F[j, i] = ψ_j(t_i), ridge
regression gives the coefficients (eq. 6–7)
    B = (F Fᵀ + λ I)⁻¹ F X   (N, D)      [λ = 0: least squares, B = pinv(Fᵀ) X]
Unbounded update (§3.2): the old signal Bᵀψ(u) is sampled at S points u_k, squeezed into [0, τ], the
new l vectors are placed in (τ, 1], and all S + l points are regressed again. Every regression matrix
depends only on (l, S, τ, λ, N) and is precomputed in float64. Sticky memories (§3.3): the u_k are
the quantiles of where the last segment's attention densities put their mass (a 128-bin histogram),
so attended regions keep more points after the squeeze.
Read (continuous attention, §3.1, eq. 8–10): K = B W_K, V = B W_V; per head and query q (before RoPE)
    s = K_h q / sqrt(d),  μ = sigmoid(w_μᵀ s + b_μ),  σ² = softplus(w_σᵀ s + b_σ)
    r_j = E_{t ~ N(μ, σ²)}[ψ_j(t)] = N(μ; c_j, w_j² + σ²)        (closed form for Gaussians)
    out = W_O concat_h(V_hᵀ r)                                     (B, l, D), added after `wo`.
KL regulariser (§3.4): KL(N(μ, σ²) ‖ N(μ, σ0²)) = log(σ0/σ) + σ²/(2σ0²) − 1/2, σ0 = 0.05, averaged
over heads and queries of the segment just written; `aux_loss(state)` returns it per row and
`train.aux_weight` weighs it into the loss (the paper's weight 1e-6 is on the sum over heads and
queries: aux_weight = 1e-6 H l reproduces it; 0, the default, does not compute it).
Short-term memory (§3, "STM"; `stm` > 0): the paper's local attention also sees a Transformer-XL
cache, here of the last `stm` tokens' keys (before RoPE) and values, detached as in Transformer-XL,
joined to the segment's softmax at RoPE positions -stm..-1 (as memory/xl.py). The long-term memory
still absorbs each segment as it leaves the local window, so its newest part overlaps the cache
(the paper feeds it only what leaves the STM, which differs per row after a reset).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..precision import fp32_region
from .base import Memory, MemoryCost, Read, SegmentView
from .registry import register
from .options import MemoryOptions

KL_SIGMA0 = 0.05  # σ0 of the KL regulariser (paper value)
STICKY_BINS = 128  # histogram bins of the sticky-memory density (paper value)


class InfinityState(NamedTuple):
    coef: Tensor  # (B, N, D) fp32 RBF coefficients of the long-term signal
    t: Tensor  # (B,) long, tokens absorbed since the document start (0: empty)
    kl: Tensor  # (B,) fp32 KL regulariser of the last written segment's queries (0 if none)
    sk: Tensor  # (B, H, C, d) short-term memory: keys before RoPE of the last C = stm tokens, oldest first
    sv: Tensor  # (B, H, C, d) their values (C = 0 without a short-term memory)


def rbf_basis(n: int) -> tuple[Tensor, Tensor]:
    """Centres and widths (N,), float64: N/2 centres evenly on [0, 1], each with widths h and 2h
    (h = centre spacing), the two-width layout of the paper."""
    centres = torch.linspace(0, 1, n // 2, dtype=torch.float64)
    h = 1.0 / max(n // 2 - 1, 1)
    return centres.repeat(2), torch.cat([torch.full((n // 2,), h), torch.full((n // 2,), 2 * h)]).double()


def gaussian(t: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """N(t; mean, var), broadcasting."""
    return torch.exp(-0.5 * (t - mean) ** 2 / var) / torch.sqrt(2 * math.pi * var)


def design(t: Tensor, n: int) -> Tensor:
    """ψ_j(t_i): positions (..., P) -> (..., P, N) in the dtype of t."""
    centres, widths = (a.to(t) for a in rbf_basis(n))
    return gaussian(t[..., None], centres, widths**2)


def regression(t: Tensor, n: int, ridge: float) -> Tensor:
    """(N, P) float64 map from P values at positions t (float64) to N coefficients (eq. 7)."""
    f = design(t, n).T  # (N, P)
    if ridge == 0:
        return torch.linalg.pinv(f.T)  # (N, P)
    return torch.linalg.solve(f @ f.T + ridge * torch.eye(n, dtype=f.dtype), f)  # (N, P)


def midpoints(count: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * (torch.arange(count, dtype=torch.float64) + 0.5) / count  # (count,)


@lru_cache(maxsize=64)
def _maps(n: int, l: int, samples: int, tau: float, ridge: float, device: torch.device) -> tuple[Tensor, ...]:
    """fp32 on device: first (N, l) for an empty memory; old (N, S), new (N, l) for the update;
    uniform (N, N) = old @ ψ(uniform u) (the update of the old coefficients without sticky)."""
    first = regression(midpoints(l, 0, 1), n, ridge)  # (N, l)
    both = regression(torch.cat([midpoints(samples, 0, tau), midpoints(l, tau, 1)]), n, ridge)  # (N, S + l)
    old, new = both[:, :samples], both[:, samples:]
    uniform = old @ design(midpoints(samples, 0, 1), n)  # (N, N)
    return tuple(m.to(device=device, dtype=torch.float32) for m in (first, old, new, uniform))


def sticky_points(mu: Tensor, var: Tensor, samples: int) -> Tensor:
    """mu, var (B, H, l): attention densities -> (B, S) sample positions in [0, 1]: the quantiles
    (k + 1/2)/S of the histogram of their mass in STICKY_BINS bins (deterministic, sorted)."""
    edges = torch.linspace(0, 1, STICKY_BINS + 1, device=mu.device)  # (E,)
    cdf = 0.5 * (1 + torch.erf((edges - mu[..., None]) / torch.sqrt(2 * var[..., None])))  # (B, H, l, E)
    mass = (cdf[..., 1:] - cdf[..., :-1]).sum(dim=(1, 2)) + 1e-12  # (B, bins)
    cum = torch.cat([torch.zeros_like(mass[:, :1]), mass.cumsum(-1)], dim=-1)  # (B, E)
    cum = cum / cum[:, -1:]
    target = ((torch.arange(samples, device=mu.device) + 0.5) / samples).expand(mu.shape[0], -1).contiguous()  # (B, S)
    hi = torch.searchsorted(cum, target).clamp(1, STICKY_BINS)  # (B, S) right edge index of the bin
    c0, c1 = cum.gather(1, hi - 1), cum.gather(1, hi)  # (B, S)
    frac = (target - c0) / (c1 - c0).clamp_min(1e-12)
    return (edges[hi - 1] + frac * (edges[hi] - edges[hi - 1])).clamp(0, 1)  # (B, S)


class InfinityOptions(MemoryOptions):
    basis: int = Field(64, gt=0, description="Gaussian RBF basis functions N (even)")
    tau: float = Field(0.5, gt=0, lt=1, description="share τ of [0, 1] given to the old signal")
    ridge: float = Field(0.5, ge=0, description="ridge penalty λ of the regression")
    resample: int = Field(256, gt=0, description="points S resampled from the old signal")
    sticky: bool = Field(False, description="resample where the last segment attended (sticky memories)")
    detach: bool = Field(False, description="no gradient into the long-term memory (the paper's choice)")
    stm: int = Field(0, ge=0, description="short-term memory: a Transformer-XL cache of this many tokens' "
                                          "keys/values beside the long-term memory (the paper's STM; 0: none)")


@register("infinity")
class InfinityMemory(Memory):
    """Options: basis (N, even), tau (τ), ridge (λ), resample (S), sticky, detach (the paper's choice:
    no gradient flows into the long-term memory, so what a segment writes is not trained by later reads;
    default False: gradients flow through the memory like every other kind's within a BPTT window),
    stm (tokens of the short-term XL cache; 0: none)."""

    Options = InfinityOptions
    cache_read = "out"

    def __init__(self, n_head: int, head_dim: int, basis: int = 64, tau: float = 0.5, ridge: float = 0.5,
                 resample: int = 256, sticky: bool = False, detach: bool = False, stm: int = 0):
        super().__init__(n_head, head_dim)
        if basis < 2 or basis % 2:
            raise ValueError(f"InfinityMemory: basis must be an even number >= 2, got {basis}")
        if not 0 < tau < 1:
            raise ValueError(f"InfinityMemory: tau must be in (0, 1), got {tau}")
        if ridge < 0:
            raise ValueError(f"InfinityMemory: ridge must be >= 0, got {ridge}")
        if resample < 1:
            raise ValueError(f"InfinityMemory: resample must be >= 1, got {resample}")
        if not isinstance(stm, int) or stm < 0:
            raise ValueError(f"InfinityMemory: stm must be an integer >= 0, got {stm!r}")
        d = n_head * head_dim
        self.basis, self.tau, self.ridge, self.resample, self.sticky = basis, float(tau), float(ridge), resample, bool(sticky)
        self.detach, self.stm = bool(detach), stm
        if stm:  # Memory Caching combines `out` reads only: the short-term cache's keys would be dropped
            self.cache_read = None
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.mu = nn.Linear(basis, 1)
        self.sigma = nn.Linear(basis, 1)
        centres, widths = (a.float() for a in rbf_basis(basis))
        self.register_buffer("centres", centres, persistent=False)  # (N,)
        self.register_buffer("widths", widths, persistent=False)  # (N,)

    def extra_repr(self) -> str:
        return (f"basis={self.basis}, tau={self.tau}, ridge={self.ridge}, resample={self.resample}, sticky={self.sticky}, "
                f"detach={self.detach}, stm={self.stm}")

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost:
        """Read (r = l queries): K = B W_K, V = B W_V (2 N D^2 each), scores 2 r N D, μ/σ 2 * 2 H r N,
        r V 2 r N D, W_O 2 r D^2. Write: the densities again (K and scores), the old signal carried
        (sticky: ψ(u) resampled, 2 N S N, then 2 N^2 D; else 2 N^2 D) and new @ X, first @ X (2 N l D each)."""
        n, d, h, r = self.basis, self.n_head * self.head_dim, self.n_head, l if rows is None else rows

        def density(q: int) -> int:
            return 2 * n * d * d + 2 * q * n * d + 4 * h * q * n

        read = density(r) + 2 * n * d * d + 2 * r * n * d + 2 * r * d * d
        carried = 2 * n * n * d + (2 * n * self.resample * n if self.sticky else 0)
        return MemoryCost(self.stm if t > 0 else 0, read, density(l) + carried + 2 * 2 * n * l * d)

    def empty(self, batch: int, device: torch.device | str) -> InfinityState:
        coef = torch.zeros(batch, self.basis, self.n_head * self.head_dim, device=device)  # (B, N, D)
        cache = torch.zeros(batch, self.n_head, self.stm, self.head_dim, device=device)  # (B, H, C, d)
        return InfinityState(coef, torch.zeros(batch, dtype=torch.long, device=device), torch.zeros(batch, device=device),
                             cache, cache.clone())

    def split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.n_head, self.head_dim).transpose(1, 2)  # (B, H, N, d)

    def density(self, coef: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """μ, σ² (B, H, l) of each query's attention density over [0, 1]."""
        keys = self.split(self.wk(coef))  # (B, H, N, d)
        scores = q @ keys.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, l, N)
        return torch.sigmoid(self.mu(scores))[..., 0], F.softplus(self.sigma(scores))[..., 0]

    def attend(self, coef: Tensor, mu: Tensor, var: Tensor) -> Tensor:
        """Closed-form continuous attention: (B, H, l) densities -> (B, l, D)."""
        r = gaussian(mu[..., None], self.centres, self.widths**2 + var[..., None])  # (B, H, l, N)
        z = r @ self.split(self.wv(coef))  # (B, H, l, d)
        return self.wo(z.transpose(1, 2).reshape(z.shape[0], z.shape[2], -1))  # (B, l, D)

    def read(self, state: InfinityState, seg: SegmentView) -> Read:
        with fp32_region(state.coef.device.type):
            mu, var = self.density(state.coef, seg.q.float())
            out = self.attend(state.coef, mu, var)  # (B, l, D); 0 for an empty memory (coef = 0)
        if not self.stm:
            return Read(out=out.to(seg.x.dtype))
        slot = torch.arange(self.stm, device=state.t.device)  # (C,)
        valid = slot[None, :] >= self.stm - state.t.clamp(max=self.stm)[:, None]  # (B, C) the last min(t, C) are written
        return Read(k=state.sk, v=state.sv, valid=valid, pos=slot - self.stm, out=out.to(seg.x.dtype))  # pos -C..-1

    def write(self, state: InfinityState, seg: SegmentView) -> InfinityState:
        with fp32_region(state.coef.device.type):
            x = seg.x.float()  # (B, l, D) layer inputs leaving the local window
            coef = state.coef
            if self.detach:  # the paper's memory: a constant to later segments' gradients
                x, coef = x.detach(), coef.detach()
            first, old, new, uniform = _maps(self.basis, x.shape[1], self.resample, self.tau, self.ridge, x.device)
            mu, var = self.density(state.coef, seg.q.float())  # (B, H, l) what this segment attended
            if self.sticky:
                u = sticky_points(mu.detach(), var.detach(), self.resample)  # (B, S)
                carried = (old @ design(u, self.basis)) @ coef  # (B, N, D)
            else:
                carried = uniform @ coef  # (B, N, D)
            full = torch.where((state.t > 0)[:, None, None], carried + new @ x, first @ x)  # (B, N, D)
            sd = torch.sqrt(var)
            kl = (math.log(KL_SIGMA0) - torch.log(sd) + var / (2 * KL_SIGMA0**2) - 0.5).mean(dim=(1, 2))  # (B,)
            kl = torch.where(state.t > 0, kl, torch.zeros_like(kl))
        sk, sv = state.sk, state.sv
        if self.stm:  # the short-term cache keeps the last C tokens, detached (Transformer-XL's SG)
            sk = torch.cat([sk, seg.k.detach().to(sk.dtype)], dim=2)[:, :, -self.stm:]  # (B, H, C, d)
            sv = torch.cat([sv, seg.v.detach().to(sv.dtype)], dim=2)[:, :, -self.stm:]  # (B, H, C, d)
        return InfinityState(full, state.t + x.shape[1], kl, sk, sv)

    def aux_loss(self, state: InfinityState) -> Tensor:
        return state.kl

    def numel(self, state: InfinityState) -> int:
        d = self.n_head * self.head_dim
        return self.basis * d + 1 + 2 * self.stm * d  # coefficients, the KL of the last segment, the STM cache
