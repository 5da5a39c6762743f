"""HiPPO-LegS mathematics for Elastic Memory: pure functions, float64-capable, no nn.Module.

Reference: Gu et al., "HiPPO: Recurrent Memory with Optimal Polynomial Projections" (NeurIPS 2020),
LegS measure (eq. 19-20, Appendix D.3); segment form: docs/memory.md ("Write: exact segment update").

Axis legend
  N  polynomial order (number of coefficients), n, m index it
  D  channels compressed independently (head_dim, possibly with leading batch/head axes)
  l  tokens in the segment being absorbed, j = 1..l indexes them
  t  tokens already summarised by the coefficients, T = t + l
  K  quadrature nodes
  s  normalised history position in [0, 1]: 0 = oldest token, 1 = the present

The history x_1..x_T is a step function, token k on [k-1, k). Its LegS coefficients are
  c_n(T) = (1/T) ∫_0^T x(τ) g_n(τ/T) dτ = ∫_0^1 x(T r) g_n(r) dr,   g_n(s) = sqrt(2n+1) P_n(2s-1).
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..precision import fp32_region
from .bounded_lru import BoundedLRU

F64 = torch.float64
# Constants and reference banks: built on the CPU (device="cpu"), also under a meta/CUDA default device.


def legendre_p(u: Tensor, order: int) -> Tensor:
    """P_0..P_{order-1} at u in [-1, 1] by the three-term recurrence (stable for any order).

    u: (K,) -> (K, order). (n+1) P_{n+1} = (2n+1) u P_n - n P_{n-1}. Runs in numpy on the CPU: the
    reference banks (`transition`, `injection`, `sampling.sampling_matrix`) and the Gauss nodes use it;
    the write's fast path uses `legendre_scaled` on the state's device.
    """
    un = u.detach().cpu().numpy()
    out = np.empty((un.shape[0], order), dtype=un.dtype)  # (K, order)
    out[:, 0] = 1
    if order > 1:
        out[:, 1] = un
    for n in range(1, order - 1):
        out[:, n + 1] = ((2 * n + 1) * un * out[:, n] - n * out[:, n - 1]) / (n + 1)
    return torch.from_numpy(out).to(u.device)


def legendre_basis(s: Tensor, order: int) -> Tensor:
    """g_n(s_j) = sqrt(2n+1) P_n(2 s_j - 1), orthonormal on [0, 1]. s: (K,) -> (K, order)."""
    n = torch.arange(order, dtype=s.dtype, device=s.device)
    return legendre_p(2 * s - 1, order) * torch.sqrt(2 * n + 1)  # (K, order)


def legendre_integral(r: Tensor, order: int) -> Tensor:
    """G_n(r) = ∫_0^r g_n(s) ds for n < order. r: (K,) -> (K, order).

    With u = 2s - 1 and ∫ P_n du = (P_{n+1} - P_{n-1}) / (2n+1), which vanishes at u = -1 for n >= 1:
    G_0(r) = r,  G_n(r) = (P_{n+1}(u) - P_{n-1}(u)) / (2 sqrt(2n+1)).
    """
    p = legendre_p(2 * r - 1, order + 1)  # (K, order+1)
    n = torch.arange(1, order, dtype=r.dtype, device=r.device)
    rest = (p[:, 2:] - p[:, :-2]) / (2 * torch.sqrt(2 * n + 1))  # (K, order-1)
    return torch.cat([r[:, None], rest], dim=1)  # (K, order)


@lru_cache(maxsize=16)
def gauss_legendre(k: int) -> tuple[Tensor, Tensor]:
    """Gauss–Legendre nodes (ascending, in [-1, 1]) and weights, float64, k >= 1.

    Golub–Welsch (eigenvalues of the Jacobi matrix) for the start, then Newton on P_k; weights
    w = 2 / ((1 - x^2) P_k'(x)^2). Exact for polynomials of degree <= 2k - 1.
    """
    i = torch.arange(1, k, dtype=F64, device="cpu")
    beta = i / torch.sqrt(4 * i * i - 1)  # (k-1,)
    x = torch.linalg.eigvalsh(torch.diag(beta, 1) + torch.diag(beta, -1))  # (k,)
    for _ in range(3):
        p = legendre_p(x, k + 1)  # (k, k+1)
        dp = k * (x * p[:, k] - p[:, k - 1]) / (x * x - 1)  # P_k'(x)
        x = x - p[:, k] / dp
    p = legendre_p(x, k + 1)
    dp = k * (x * p[:, k] - p[:, k - 1]) / (x * x - 1)
    return x, 2 / ((1 - x * x) * dp * dp)


def legs_A_B(order: int) -> tuple[Tensor, Tensor]:
    """LegS ODE c' = (1/t)(-A c + B f) (HiPPO eq. 20, positive-diagonal convention), float64.

    A[n,k] = sqrt(2n+1) sqrt(2k+1) for n > k, n+1 on the diagonal, 0 above; B[n] = sqrt(2n+1).
    """
    b = torch.sqrt(2 * torch.arange(order, dtype=F64, device="cpu") + 1)  # (N,)
    a = torch.tril(b[:, None] * b[None, :], -1) + torch.diag(torch.arange(1, order + 1, dtype=F64, device="cpu"))
    return a, b


def transition(rho: float, order: int) -> Tensor:
    """R(ρ)[m,n] = ρ ∫_0^1 g_m(ρu) g_n(u) du, float64 (N, N), lower triangular; equals ρ^A.

    The integrand has degree <= 2N-2, so N+1 Gauss–Legendre nodes integrate it exactly.
    """
    x, w = gauss_legendre(order + 1)
    u = (x + 1) / 2  # (K,) nodes on [0, 1]
    g_rho = legendre_basis(rho * u, order)  # (K, N)
    g_one = legendre_basis(u, order)  # (K, N)
    return rho * g_rho.T @ (w[:, None] / 2 * g_one)  # (N, N)


def injection(t: int, l: int, order: int) -> Tensor:
    """W(t, T)[n, j] = G_n((t+j)/T) - G_n((t+j-1)/T), j = 1..l, float64 (N, l).

    Token k contributes (1/T) ∫_{k-1}^{k} g_n(τ/T) dτ x_k; with r = τ/T the 1/T is the dr/dτ of
    the substitution, so W is the plain difference of G_n over the cell [(k-1)/T, k/T].
    """
    big_t = t + l
    r = torch.arange(t, big_t + 1, dtype=F64, device="cpu") / big_t  # (l+1,)
    g = legendre_integral(r, order)  # (l+1, N)
    return (g[1:] - g[:-1]).T  # (N, l)


def legendre_scaled(u, order: int):
    """V_n = P_n(u) / f_n for n < order (`_legendre_factors`): (order, ...), order leading.
    The fast twin of `legendre_p`, for a torch tensor (on its device) or a numpy array.

    (n+1) P_{n+1} = (2n+1) u P_n - n P_{n-1} with P_n rescaled so that it reads
    V_{n+1} = V_{n-1} + b_n u V_n (one fused addcmul per order in torch, for every point at once).
    """
    b = _legendre_factors(order)[1]
    if isinstance(u, Tensor):
        rows = [torch.ones_like(u), u]
        for n in range(1, order - 1):
            rows.append(torch.addcmul(rows[n - 1], u, rows[n], value=b[n]))
        return torch.stack(rows[:order])  # (order, ...)
    out = np.empty((order, *u.shape), dtype=u.dtype)  # (order, ...), filled in place: no per-order arrays
    out[0] = 1
    if order > 1:
        out[1] = u
    for n in range(1, order - 1):
        np.multiply(u, out[n], out=out[n + 1])
        out[n + 1] *= b[n]
        out[n + 1] += out[n - 1]
    return out


@lru_cache(maxsize=4)
def _legendre_factors(order: int) -> tuple[list[float], list[float]]:
    """f_n with P_n = f_n V_n, and the recurrence's b_n (python floats, exact to rounding).
    P_n = σ_n Q_n / d_n with d_{n+1} = d_{n-1} (n+1)/n and σ_{n+1} = -σ_{n-1} (σ_0 = σ_1 = d_0 = d_1 = 1)."""
    d, sig = [1.0, 1.0], [1.0, 1.0]
    for n in range(1, order - 1):
        d.append(d[n - 1] * (n + 1) / n)
        sig.append(-sig[n - 1])
    f = [sig[n] / d[n] for n in range(order)]  # P_n = f_n V_n
    b = [0.0] + [(2 * n + 1) / (n + 1) * d[n + 1] / d[n] * sig[n + 1] / sig[n] for n in range(1, order - 1)]
    return f, b


class BankConstants(NamedTuple):
    """What the write needs besides t, for order N (K = N+1 Gauss nodes), float64. `ElasticMemory`
    keeps them as non-persistent buffers, so the write finds them on its device without a cache."""

    u: Tensor  # (K,) Gauss–Legendre nodes on [0, 1]
    gw: Tensor  # (N, K) w_k g_n(u_k), weights summing to 1
    band: Tensor  # (2, N) G_n(r) = band[0, n] V_{n+1} + band[1, n] V_{n-1} at u = 2r-1 (V_{-1} := V_0)
    gscale: Tensor  # (N+1,) g_n = gscale_n V_n


def bank_constants(order: int) -> BankConstants:
    x, w = gauss_legendre(order + 1)
    f = torch.tensor(_legendre_factors(order + 2)[0], dtype=F64, device="cpu")  # (N+2,)
    root = torch.sqrt(2 * torch.arange(order + 1, dtype=F64, device="cpu") + 1)  # (N+1,)
    band = torch.zeros(2, order, dtype=F64, device="cpu")  # G_0 = r = (P_1 + P_0)/2; G_n = (P_{n+1} - P_{n-1}) / (2 root_n)
    band[0, 0], band[1, 0] = 0.5 * f[1], 0.5 * f[0]
    n = torch.arange(1, order, device="cpu")
    band[0, n], band[1, n] = f[n + 1] / (2 * root[n]), -f[n - 1] / (2 * root[n])
    gw = legendre_basis((x + 1) / 2, order).T * (w / 2)  # (N, K)
    return BankConstants((x + 1) / 2, gw, band, root * f[: order + 1])


def segment_banks(t: Tensor, l: int, order: int, consts: BankConstants | None = None) -> tuple[Tensor, Tensor]:
    """(R(t/T), W(t, T)) for every row, float64 on t's device: t (B,) -> (B, N, N), (B, N, l).

    Fast twin of `transition` and `injection` (tested equal for t up to 1e9, N up to 1024), built from
    closed forms with no host round trip, so a never-seen t costs what a seen one does (the CPU's small
    banks are also kept in `BANKS`, see `_row_banks`):
      W[n, j] = G_n((t+j)/T) - G_n((t+j-1)/T) from the antiderivatives at the l+1 cell edges;
      R[m, n] = ρ Σ_k w_k g_m(ρ u_k) g_n(u_k), N+1 Gauss–Legendre nodes u_k, exact (degree <= 2N-2).
    One Legendre recurrence evaluates the edges and ρ u_k of every row. consts: `bank_constants(order)`
    on t's device, if the caller keeps them (else built here).
    """
    c = BankConstants(*(x.to(t.device) for x in bank_constants(order))) if consts is None else consts
    if t.device.type == "cpu":
        r, w = _banks(np, t.numpy().astype(np.float64)[:, None], np.arange(l + 1, dtype=np.float64), l, order,
                      BankConstants(*(x.numpy() for x in c)))
        return torch.from_numpy(r), torch.from_numpy(np.ascontiguousarray(w))
    return _banks(torch, t.to(F64)[:, None], torch.arange(l + 1, dtype=F64, device=t.device), l, order, c)


def _banks(xp, tt, j, l: int, order: int, c: BankConstants):
    """`segment_banks` in xp = torch (on the device) or numpy (on the CPU, where numpy's per-op cost
    on these small vectors is a fraction of torch's). tt (B, 1) float64 t, j = 0..l (l+1,)."""
    b, k = tt.shape[0], c.u.shape[0]
    big = tt + l  # (B, 1) T
    edges = (tt + j) / big  # (B, l+1) cell edges r_j = (t+j)/T
    rho = tt / big  # (B, 1)
    v = legendre_scaled(xp.concatenate([edges.reshape(-1), (rho * c.u).reshape(-1)]) * 2 - 1, order + 1)  # (N+1, B(l+1) + BK)
    e = b * (l + 1)
    ve = v[:, :e].reshape((order + 1) * b, l + 1)  # ((N+1) B, l+1) V_n at the cell edges (2-D: fast kernels)
    d = (ve[:, 1:] - ve[:, :-1]).reshape(order + 1, b * l)  # (N+1, B l) V_n over each cell
    w = d[1:] * c.band[0, :, None]  # (N, B l): W is the band of these that G is of V: band[0, n] ΔV_{n+1}
    w[1:] += d[: order - 1] * c.band[1, 1:, None]  # + band[1, n] ΔV_{n-1}
    w[0] += d[0] * c.band[1, 0]  # V_{-1} := V_0
    w_bank = w.reshape(order, b, l).swapaxes(0, 1)  # (B, N, l)
    g_rho = v[:order, e:].reshape(order, b, k).swapaxes(0, 1)  # (B, N, K) V_n(ρ u_k)
    return (rho * c.gscale[:order])[..., None] * (g_rho @ c.gw.T), w_bank  # (B, N, N), (B, N, l)


# Small banks are where caching pays: their build is some sixty numpy calls whose fixed cost is about
# that of the write itself (e.g. N = 16, l = 64), and training windows revisit the same few t at every
# step (one per segment of the window) while a model's layers write the same t in one segment. Large
# banks are built at every write, so a never-seen t costs what a seen one does (`elastic bench`'s
# write_new_t_vs_seen_t, at N = 64, l = 2048). A long document meets a new t at every segment: its first
# write misses and builds from the closed forms; the cache is full after 16 segments and stays so.
BANKS = BoundedLRU(16, 64 << 10)  # a window of 16 segments; 64 KiB: N = 16, l = 64 is 5 KiB in fp32, N = 64, l = 128 48 KiB


def _row_banks(t: Tensor, l: int, order: int, consts: BankConstants | None,
               dtype: torch.dtype = F64) -> tuple[Tensor, Tensor]:
    """`segment_banks` for every row of t (B,) in `dtype`: (R, W). On the CPU through `step_bank` and
    `write_bank` (the route Elastic Memory's write takes); on an accelerator every row is built there
    from the closed forms (a reference route: the memory itself keeps t on the host)."""
    if t.device.type != "cpu":
        r, w = segment_banks(t, l, order, consts)
        return r.to(dtype), w.to(dtype)
    bank = write_bank(step_bank(t, l, order, consts, dtype), base_injection(l, order, consts).to(dtype))
    return bank[..., :order], bank[..., order:]  # (1 or B, N, N), (1 or B, N, l)


AHEAD = 8  # a single-t miss also builds the banks of the next AHEAD - 1 segments (one recurrence for all)


def step_bank(t: Tensor, l: int, order: int, consts: BankConstants | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """[R(ρ) | (1 - ρ) A(ρ)] with ρ = t/T for every row of the host tensor t (B,): (1, N, 2N) when all
    rows share t, else (B, N, 2N), in `dtype`, on the CPU; built in float64 and kept in `BANKS`.

    A(ρ)[n, m] = ∫_0^1 g_n(ρ + (1 - ρ) u) g_m(u) du re-expands g_n on the segment's part [ρ, 1] of the
    new interval in the basis of [0, 1] (exact with N+1 Gauss nodes: degree <= 2N - 2). With it the
    injection of any t is the base injection of t = 0 carried there (`write_bank`):
      W(t, T) = (1 - ρ) A(ρ) W(0, l),
    because the cell of token j is [(t+j-1)/T, (t+j)/T] = ρ + (1 - ρ) [(j-1)/l, j/l] and ds = (1 - ρ) du.
    So a never-seen t costs two N x N banks on the host, whatever l. A miss where all rows share t
    also builds t + l, ..., t + (AHEAD-1) l in the same call (a document read in order, or a training
    window from t = 0, asks for them next): the recurrence's cost is per call, not per point.
    """
    rows = tuple(t.tolist())  # the key; a list, not numpy: cheapest on the hot path
    key = ("step", order, l, rows, dtype)
    found = BANKS.get(key)
    if found is not None:
        return found[0]
    c = BankConstants(*(x.numpy() for x in (bank_constants(order) if consts is None else consts)))
    values, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)  # (U,), (B,)
    if values.shape[0] == 1:
        ahead = values[0] + l * np.arange(AHEAD)  # (AHEAD,)
        banks = torch.from_numpy(_step_banks(ahead, l, order, c)).to(dtype)  # (AHEAD, N, 2N)
        for k in range(AHEAD - 1, -1, -1):  # the asked one last: most recently used
            BANKS.put(("step", order, l, (int(ahead[k]),) * len(rows), dtype), (banks[k:k + 1].clone(),))
        return banks[:1]
    bank = torch.from_numpy(_step_banks(values, l, order, c)).to(dtype)[torch.from_numpy(inverse)]  # (B, N, 2N)
    BANKS.put(key, (bank,))
    return bank


def _step_banks(values: np.ndarray, l: int, order: int, c: BankConstants) -> np.ndarray:
    """`step_bank` for distinct t values (U,), numpy float64 -> (U, N, 2N)."""
    rho = (values / (values + l))[:, None]  # (U, 1)
    k = c.u.shape[0]
    points = np.concatenate([(rho * c.u).reshape(-1), (rho + (1 - rho) * c.u).reshape(-1)]) * 2 - 1  # (2 U K,)
    v = legendre_scaled(points, order).reshape(order, 2, values.shape[0], k)  # (N, 2, U, K) V_n at both point sets
    u = values.shape[0]
    g = (v * c.gscale[:order, None, None, None]).transpose(1, 2, 0, 3).reshape(2 * u * order, k)  # (2 U N, K) g_n
    both = (g @ c.gw.T).reshape(2, u, order, order)  # Σ_k g_n(point_k) w_k g_m(u_k): one 2-D BLAS product
    both[0] *= rho[:, :, None]  # R = ρ Σ_k w_k g_m(ρ u_k) g_n(u_k)
    both[1] *= 1 - rho[:, :, None]  # (1 - ρ) A
    return np.concatenate([both[0], both[1]], axis=2)  # (U, N, 2N)


def base_injection(l: int, order: int, consts: BankConstants | None = None) -> Tensor:
    """W(0, l): (N, l) float64 on the CPU, the injection of a segment that is the whole history."""
    return segment_banks(torch.zeros(1, dtype=torch.long), l, order, consts)[1][0]


def write_bank(step: Tensor, base: Tensor) -> Tensor:
    """[R | W] from `step_bank` (on base's device) and the base injection W(0, l) (N, l), in their dtype:
    (1 or B, N, N + l), W = (1 - ρ) A(ρ) W(0, l). Two launches (a product and a concatenation)."""
    order = step.shape[1]
    return torch.cat([step[..., :order], step[..., order:] @ base], dim=-1)


def absorb(c: Tensor, t: int | Tensor, x: Tensor, consts: BankConstants | None = None) -> Tensor:
    """Absorb segment x into c: C_new = R(t/T) @ C + W(t, T) @ X, exact LegS projection.

    c: (..., N, D) coefficients of t tokens (ignored where t = 0), in the state dtype (fp32/fp64).
    x: (..., l, D) the segment (Elastic Memory: keys and values side by side, (B, l, 2 H d)); cast
       to c's dtype.
    t: python int, or (B,) LongTensor with c (B, ..., N, D), x (B, ..., l, D): banks per row.
    consts: `bank_constants(N)` on c's device (optional; built here when not given).
    Returns (..., N, D) coefficients of t + l tokens. Runs with autocast disabled; the banks are
    built in float64 on c's device (`segment_banks`) and cast to c's dtype. No host sync.
    """
    x = x if x.dtype == c.dtype else x.to(c.dtype)
    with fp32_region(c.device.type):
        order, l = c.shape[-2], x.shape[-2]
        if not isinstance(t, Tensor):
            r, w = segment_banks(torch.tensor([t], device=c.device), l, order, consts)
            new = w[0].to(c.dtype) @ x  # (..., N, D)
            return new if t == 0 else r[0].to(c.dtype) @ c + new
        r, w = _row_banks(t, l, order, consts, c.dtype)  # (B or 1, N, N), (B or 1, N, l)
        if c.dim() == 3:  # (B, N, D): batched products, the banks expanded over B when shared
            w = w.expand(c.shape[0], order, l)
            new = torch.bmm(w, x)  # (B, N, D)
        else:  # the banks broadcast over the axes between B and N (and over B if shared)
            new = w.view(w.shape[0], *(1,) * (c.dim() - 3), order, l) @ x  # (B, ..., N, D)
        if t.device.type == "cpu":  # which rows start empty is free to know on the CPU
            rows = t.tolist()
            if not any(rows):
                return new
            if c.dim() == 3 and all(rows):  # one fused product-and-add: new + R @ C
                return torch.baddbmm(new, r.expand(c.shape[0], order, order), c)
        lead = (1,) * (c.dim() - 3)
        old = r.view(r.shape[0], *lead, order, order) @ c  # (B, ..., N, D)
        return torch.where((t > 0).view(-1, *lead, 1, 1), old, 0) + new


def absorb_reference(c: Tensor, t: int, x: Tensor) -> Tensor:
    """Slow twin of `absorb`: the exact one-token step c_k = R((k-1)/k) c_{k-1} + W(k-1, 1) x_k.

    Built fresh in float64 for every token from the reference `transition` / `injection`, applied
    l times. Python int t only.
    """
    out = c.to(F64)
    order = c.shape[-2]
    for j in range(x.shape[-2]):
        k = t + j + 1
        w = injection(k - 1, 1, order)  # (N, 1)
        step = w @ x[..., j : j + 1, :].to(F64)  # (..., N, D)
        out = step if k == 1 else transition((k - 1) / k, order) @ out + step
    return out.to(c.dtype)
