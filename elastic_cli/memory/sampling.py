"""Reading the memory polynomial: where its M sample points lie in [0, 1] (the sampling bias,
chosen per recipe and changeable at test time) and the matrix S that turns coefficients into samples.

Reference: docs/memory.md ("Read: polynomial sampling"); the LegS basis g_n is `hippo.legendre_basis`.
Axis legend as in `hippo`: N order, M sample points, t tokens already summarised, s in [0, 1] with
0 = the oldest token and 1 = the present.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .hippo import F64, bank_constants, gauss_legendre, legendre_basis, legendre_scaled

SCHEDULES = ("uniform", "exponential", "gauss", "power")


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
    j = torch.arange(1, m + 1, dtype=F64, device="cpu")
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
        frac = (m - j) / (m - 1) if m > 1 else torch.zeros(1, dtype=F64, device="cpu")
        return 1 - float(t) ** frac / t
    raise ValueError(f"sample_points: unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def depends_on_t(schedule: str) -> bool:
    """Whether the sample points of `schedule` move with the history length t."""
    return schedule == "exponential"


def sampling_matrix(schedule: str, m: int, t: int, order: int, power: float = 2.0) -> Tensor:
    """S[j, n] = g_n(s_j): (M, N) float64, so that memory samples are S @ C."""
    return legendre_basis(sample_points(schedule, m, t, power=power), order)  # (M, N)


def exponential_sampling_rows(t: Tensor, m: int, order: int, gscale: Tensor | None = None) -> Tensor:
    """Fast twin of `sampling_matrix("exponential", m, t, order)` for every row: t (B,) -> (B, M, N)
    float64 on t's device, no per-t cache. s_j = 1 - t^((m-j)/(m-1)) / t = 1 - exp(((m-j)/(m-1) - 1) ln t);
    rows with t <= 1 read at the uniform points (see `sample_points`). gscale: `BankConstants.gscale`."""
    gscale = bank_constants(order).gscale.to(t.device) if gscale is None else gscale
    j = torch.arange(1, m + 1, dtype=F64, device=t.device)  # (M,)
    frac = (m - j) / (m - 1) if m > 1 else torch.zeros_like(j)  # (M,)
    tt = t.to(F64).clamp(min=2)[:, None]  # (B, 1); t <= 1 is replaced below
    s = torch.where(t[:, None] > 1, -torch.expm1((frac - 1) * torch.log(tt)), (j - 0.5) / m)  # (B, M)
    v = legendre_scaled(2 * s - 1, order)  # (N, B, M)
    return (v * gscale[:order, None, None].to(F64)).permute(1, 2, 0)  # (B, M, N)

