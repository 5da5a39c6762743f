"""`armt`: the Associative Recurrent Memory Transformer (Rodkin, Kuratov, Bulatov, Burtsev 2024,
arXiv 2407.04841, §3), one associative matrix memory per memory layer.

Axis legend: B batch, n rows of a chunk, m memory tokens, D model width, K = 2·ν·key_dim feature width.

  read (before the layer, every row):   h <- h + Aᵀφ(W_q h) / (zᵀφ(W_q h) + ε)          (paper eq. 3)
  write (after the layer, from the m memory-token outputs o_i):
      k_i = φ(W_k o_i),  v_i = W_v o_i,  β_i = sigmoid(W_β o_i),  v̄_i = Aᵀk_i / (zᵀk_i + ε)
      A <- A + Σ_i β_i k_i (v_i − v̄_i)ᵀ                                                   (delta rule, eq. 4)
      γ_i = clip(1 − (zᵀk_i + ε) / ‖k_i‖², 0, 1) (no gradient; 1 while z = 0),  z <- z + Σ_i γ_i k_i
φ is DPFP-ν (Schlag, Irie, Schmidhuber 2021, eq. 11–12), L2-normalised (`l2`, default) as in the
ARMT reference code (`AssociativeLayerWrapper.associate/update_mem`, which normalises φ(q) and φ(k)
after DPFP): with it ‖φ‖ = 1, so zᵀφ(q) is O(1) from the first write and a read returns a
β-weighted mean of the stored values, whatever the scale of the residual stream. Without it (the
2024 paper code, `l2=false`) a small model's features are ~1e-4 at initialisation, zᵀφ(q) ~ 1e-8 is
below ε and the read is ~1e-3 of the values (tests/test_armt_init.py measures both).
W_v is zero-initialised as in the reference code (`zero_init`; init_weights applies it), so the
memory starts as a no-op and opens by its gradient. The m memory tokens are learned embeddings
appended to every segment (back slots); they carry no state. A and z are kept in fp32; the state
also carries β of the last write (mean over the m tokens, a diagnostic the training loop logs via
`metrics`). `denom=False` drops the normaliser (read Aᵀφ(q), linear in the state; as the newer
ARMT code's `use_denom`), which Memory Caching's `soup` needs to equal `gated`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..precision import fp32_region
from .base import Memory, MemoryCost, Read, SegmentView
from .registry import register
from .options import MemoryOptions

EPS = 1e-5


class ARMTState(NamedTuple):
    a: Tensor  # (B, K, D) fp32 associative matrix
    z: Tensor  # (B, K) fp32 normaliser; (B, 0) when denom=False
    beta: Tensor  # (B,) fp32 mean write gate β of the last write (0 before the first): logged, not read


def dpfp(x: Tensor, nu: int, l2: bool = False) -> Tensor:
    """Deterministic parameter-free projection: (..., m) -> (..., 2·ν·m), non-negative features;
    l2: scaled to unit L2 norm (the ARMT reference code's F.normalize after DPFP)."""
    r = torch.cat([F.relu(x), F.relu(-x)], dim=-1)  # (..., 2m)
    phi = torch.cat([r * r.roll(j, dims=-1) for j in range(1, nu + 1)], dim=-1)  # (..., 2νm)
    return F.normalize(phi, dim=-1) if l2 else phi


def associate(a: Tensor, z: Tensor, q: Tensor) -> Tensor:
    """Read: a (B, K, D), z (B, K) or (B, 0), features q (B, n, K) -> (B, n, D)."""
    num = q @ a  # (B, n, D)
    if z.shape[-1] == 0:
        return num
    return num / (q @ z[..., None] + EPS)  # (B, n, D)


def delta_write(a: Tensor, z: Tensor, k: Tensor, v: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """Write m pairs at once: k (B, m, K), v (B, m, D), beta (B, m, 1) -> new (a, z).
    γ as the reference code: 1 − (zᵀk + ε)/‖k‖² (its `denom / ‖k‖²`), clipped, detached; 1 for a
    row whose normaliser is still 0 (the reference's first segment)."""
    v_old = associate(a, z, k)  # (B, m, D) what the memory returns for k now
    a = a + (beta * k).transpose(1, 2) @ (v - v_old)  # (B, K, D)
    if z.shape[-1] == 0:
        return a, z
    gamma = (1 - (k @ z[..., None] + EPS) / k.pow(2).sum(-1, keepdim=True).clamp_min(EPS)).clamp(0, 1)  # (B, m, 1)
    fresh = (z == 0).all(-1)[:, None, None]  # (B, 1, 1) nothing written yet
    gamma = torch.where(fresh, torch.ones_like(gamma), gamma).detach()
    return a, z + (gamma * k).sum(dim=1)  # (B, K)


class ARMTOptions(MemoryOptions):
    tokens: int = Field(16, gt=0, description="memory tokens m appended to every segment (write slots)")
    key_dim: int = Field(64, gt=0, description="DPFP input width d_mem")
    nu: int = Field(3, gt=0, description="DPFP rolls ν (features K = 2 ν key_dim)")
    denom: bool = Field(True, description="normalise reads by z (false: read Aᵀφ(q), linear in the state)")
    l2: bool = Field(True, description="L2-normalise the DPFP features (the ARMT reference code; false: the "
                                       "2024 paper code, whose reads vanish at a small model's init)")


@register("armt")
class ARMTMemory(Memory):
    """Options: tokens (m memory tokens), key_dim (d_mem), nu (DPFP order), denom (normaliser on),
    l2 (unit-norm features)."""

    Options = ARMTOptions
    cache_read = "pre"
    zero_init = ("wv.weight",)  # the reference code's torch.nn.init.zeros_(W_mv.weight)

    def __init__(self, n_head: int, head_dim: int, tokens: int = 16, key_dim: int = 64, nu: int = 3,
                 denom: bool = True, l2: bool = True):
        super().__init__(n_head, head_dim)
        if tokens < 1 or key_dim < 1 or nu < 1:
            raise ValueError(f"ARMTMemory: tokens, key_dim and nu must be >= 1, got {tokens}, {key_dim}, {nu}")
        if nu >= 2 * key_dim:
            raise ValueError(f"ARMTMemory: nu={nu} must be < 2*key_dim={2 * key_dim} (DPFP rolls)")
        d = n_head * head_dim
        self.tokens, self.key_dim, self.nu, self.denom, self.l2 = tokens, key_dim, nu, bool(denom), bool(l2)
        self.features = 2 * nu * key_dim
        self.wq = nn.Linear(d, key_dim, bias=False)
        self.wk = nn.Linear(d, key_dim, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        nn.init.zeros_(self.wv.weight)
        self.wbeta = nn.Linear(d, 1)
        self.memory_tokens = nn.Parameter(torch.zeros(tokens, d))  # (m, D)

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, key_dim={self.key_dim}, nu={self.nu}, denom={self.denom}, l2={self.l2}"

    def empty(self, batch: int, device: torch.device | str) -> ARMTState:
        d = self.n_head * self.head_dim
        a = torch.zeros(batch, self.features, d, device=device)  # (B, K, D)
        return ARMTState(a, torch.zeros(batch, self.features if self.denom else 0, device=device),
                         torch.zeros(batch, device=device))

    def slot_counts(self) -> tuple[int, int]:
        return 0, self.tokens

    def cost(self, l: int, t: int, rows: int | None = None) -> MemoryCost:
        """Read (every row, memory tokens too): W_q, φ(q) A (and φ(q) z). Write (m tokens): W_k, W_v,
        W_β, the delta rule's A-read (and z-read) and update (and the γ read of z)."""
        d, k, m, z = self.n_head * self.head_dim, self.features, self.tokens, int(self.denom)
        rows = l + m if rows is None else rows
        read = 2 * rows * (d * self.key_dim + k * d + z * k)
        write = 2 * m * (d * self.key_dim + d * d + d + k * d + z * k + k * d + z * k)
        return MemoryCost(0, read, write)

    def inject(self, state: ARMTState, batch: int) -> tuple[Tensor | None, Tensor | None]:
        return None, self.memory_tokens[None].expand(batch, -1, -1)  # (B, m, D)

    def features_of(self, proj: nn.Linear, x: Tensor) -> Tensor:
        """φ(W x): (B, n, D) fp32 -> (B, n, K)."""
        return dpfp(proj(x), self.nu, self.l2)

    def pre(self, state: ARMTState, x: Tensor) -> Tensor:
        with fp32_region(x.device.type):
            q = self.features_of(self.wq, x.float())  # (B, n, K)
            return associate(state.a, state.z, q).to(x.dtype)  # (B, n, D)

    def read(self, state: ARMTState, seg: SegmentView) -> Read:
        return Read()

    def write(self, state: ARMTState, seg: SegmentView) -> ARMTState:
        with fp32_region(state.a.device.type):
            o = seg.slots.float()  # (B, m, D) this layer's outputs at the memory tokens
            k = self.features_of(self.wk, o)  # (B, m, K)
            beta = torch.sigmoid(self.wbeta(o))  # (B, m, 1)
            return ARMTState(*delta_write(state.a, state.z, k, self.wv(o), beta), beta.detach().mean(dim=(1, 2)))

    def metrics(self, state: ARMTState) -> dict[str, Tensor]:
        return {"beta": state.beta}

    def numel(self, state: ARMTState) -> int:
        return self.features * self.n_head * self.head_dim + state.z.shape[-1] + 1  # A, z and β
