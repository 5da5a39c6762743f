"""HiPPO-LegS mathematics for Elastic Memory: pure functions, float64-capable, no nn.Module.

Reference: Gu et al., "HiPPO: Recurrent Memory with Optimal Polynomial Projections" (NeurIPS 2020),
LegS measure (eq. 19-20, Appendix D.3); segment form: docs/memory.md ("Write: exact segment update").

Axis legend
  N  polynomial order (number of coefficients), n, m index it
  D  channels compressed independently (head_dim, possibly with leading batch/head axes)
  l  tokens in the segment being absorbed, j = 1..l indexes them
  t  tokens already summarised by the coefficients, T = t + l
  K  quadrature nodes, M sample points
  s  normalised history position in [0, 1]: 0 = oldest token, 1 = the present

The history x_1..x_T is a step function, token k on [k-1, k). Its LegS coefficients are
  c_n(T) = (1/T) ∫_0^T x(τ) g_n(τ/T) dτ = ∫_0^1 x(T r) g_n(r) dr,   g_n(s) = sqrt(2n+1) P_n(2s-1).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

SCHEDULES = ("uniform", "exponential", "gauss", "power")
F64 = torch.float64


def legendre_p(u: Tensor, order: int) -> Tensor:
    """P_0..P_{order-1} at u in [-1, 1] by the three-term recurrence (stable for any order).

    u: (K,) -> (K, order). (n+1) P_{n+1} = (2n+1) u P_n - n P_{n-1}. Runs in numpy (the banks are
    built once per (t, l, N) on the CPU; numpy is ~5x faster than torch on these small vectors).
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
    i = torch.arange(1, k, dtype=F64)
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
    b = torch.sqrt(2 * torch.arange(order, dtype=F64) + 1)  # (N,)
    a = torch.tril(b[:, None] * b[None, :], -1) + torch.diag(torch.arange(1, order + 1, dtype=F64))
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
    r = torch.arange(t, big_t + 1, dtype=F64) / big_t  # (l+1,)
    g = legendre_integral(r, order)  # (l+1, N)
    return (g[1:] - g[:-1]).T  # (N, l)


@lru_cache(maxsize=64)
def _banks(t: int, l: int, order: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """(R(t/T), W(t, T)) built in float64, then cast; cached per (t, l, N, dtype, device)."""
    r = transition(t / (t + l), order) if t > 0 else torch.zeros(order, order, dtype=F64)
    w = injection(t, l, order)
    return r.to(device=device, dtype=dtype), w.to(device=device, dtype=dtype)


def _absorb_rows(c: Tensor, t: int, x: Tensor) -> Tensor:
    """One shared t. c: (..., N, D), x: (..., l, D) -> (..., N, D)."""
    r, w = _banks(int(t), x.shape[-2], c.shape[-2], c.dtype, c.device)
    new = w @ x.to(c.dtype)  # (..., N, D)
    return new if t == 0 else r @ c + new


def absorb(c: Tensor, t: int | Tensor, x: Tensor) -> Tensor:
    """Absorb segment x into c: C_new = R(t/T) @ C + W(t, T) @ X, exact LegS projection.

    c: (..., N, D) coefficients of t tokens (ignored where t = 0), in the state dtype (fp32/fp64).
    x: (..., l, D) the segment; cast to c's dtype.
    t: python int, or (B,) LongTensor with c (B, ..., N, D), x (B, ..., l, D): rows grouped by t.
    Returns (..., N, D) coefficients of t + l tokens. Runs with autocast disabled.
    """
    with torch.autocast(device_type=c.device.type, enabled=False):
        if not isinstance(t, Tensor):
            return _absorb_rows(c, t, x)
        values = torch.unique(t).tolist()
        if len(values) == 1:
            return _absorb_rows(c, values[0], x)
        out = c.new_empty(c.shape)  # (B, ..., N, D)
        for value in values:
            rows = (t == value).nonzero().squeeze(1)  # (b,)
            out[rows] = _absorb_rows(c[rows], value, x[rows])
        return out


def absorb_reference(c: Tensor, t: int, x: Tensor) -> Tensor:
    """Slow twin of `absorb`: the exact one-token step c_k = R((k-1)/k) c_{k-1} + W(k-1, 1) x_k.

    Built fresh in float64 for every token (no cache), applied l times. Python int t only.
    """
    out = c.to(F64)
    order = c.shape[-2]
    for j in range(x.shape[-2]):
        k = t + j + 1
        w = injection(k - 1, 1, order)  # (N, 1)
        step = w @ x[..., j : j + 1, :].to(F64)  # (..., N, D)
        out = step if k == 1 else transition((k - 1) / k, order) @ out + step
    return out.to(c.dtype)


def sample_points(schedule: str, m: int, t: int, power: float = 2.0) -> Tensor:
    """m ascending points in [0, 1] (float64) where the memory polynomial is read.

    uniform      s_j = (j - 1/2) / m
    gauss        Gauss–Legendre nodes mapped to [0, 1]
    power        s_j = 1 - (1 - u_j)^p with u_j uniform; p = 1 is uniform, p > 1 denser near 1
    exponential  distances d_j = t^((m-j)/(m-1)) tokens, geometric from t (oldest) down to 1,
                 s_j = 1 - d_j / t (recency-dense). m = 1 gives d = 1. For t <= 1 the history is
                 a constant (one token or none), so every point reads the same value: uniform is used.
    """
    if m < 1:
        raise ValueError(f"sample_points: m must be >= 1, got {m}")
    j = torch.arange(1, m + 1, dtype=F64)
    uniform = (j - 0.5) / m
    if schedule == "uniform" or (schedule == "exponential" and t <= 1):
        return uniform
    if schedule == "gauss":
        return (gauss_legendre(m)[0] + 1) / 2
    if schedule == "power":
        if power <= 0:
            raise ValueError(f"sample_points: power must be > 0, got {power}")
        return 1 - (1 - uniform) ** power
    if schedule == "exponential":
        frac = (m - j) / (m - 1) if m > 1 else torch.zeros(1, dtype=F64)
        return 1 - float(t) ** frac / t
    raise ValueError(f"sample_points: unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def depends_on_t(schedule: str) -> bool:
    """Whether the sample points of `schedule` move with the history length t."""
    return schedule == "exponential"


def sampling_matrix(schedule: str, m: int, t: int, order: int, power: float = 2.0) -> Tensor:
    """S[j, n] = g_n(s_j): (M, N) float64, so that memory samples are S @ C."""
    return legendre_basis(sample_points(schedule, m, t, power=power), order)  # (M, N)


__all__ = [
    "SCHEDULES", "absorb", "absorb_reference", "depends_on_t", "gauss_legendre", "legendre_basis",
    "legendre_integral", "legendre_p", "legs_A_B", "sample_points", "sampling_matrix", "transition",
    "injection",
]
