"""`elastic bench`: Elastic Memory's write and read against plain matmuls of the same FLOPs, and a
write at a never-seen history length t against a write at a t seen before."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from elastic_cli.bench import measure
from elastic_cli.memory.base import SegmentView
from elastic_cli.memory.elastic import ElasticMemory


class KernelShapes(NamedTuple):
    batch: int
    heads: int
    head_dim: int
    order: int  # N
    samples: int  # M
    segment: int  # l


def kernel_fns(memory: ElasticMemory, shapes: KernelShapes, device: torch.device) -> dict[str, Callable[[], object]]:
    """Elastic Memory write and read, each beside a plain matmul with exactly its FLOPs.

    write_fresh: a new t at every call (a long document: every segment meets a new t);
    write_cached: the same t at every call (training windows revisit the same t). On the CPU small
    banks come from `hippo.BANKS` when seen before (the recipe's shape); the N=64, l=2048 banks are
    over its entry size and built at both, so there the two should cost the same.
    A write of K and V is C <- R C + W X twice: 2 * 2 N (N + l) (B H d) FLOPs, the same as one
    (N, N + l) @ (N + l, 2 B H d) matmul; each call also makes its bank [R | W] (in a model once per
    segment for all layers: the host's [R | (1-ρ)A] and the device's (1-ρ)A @ W(0, l), 2 N^2 l more). A read is S @ C_K and S @ C_V: one (M, N) @ (N, 2 B H d).
    """
    b, h, d, n, m, l = shapes
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(b, h, n, d, generator=gen).to(device)  # (B, H, N, d)
    x = torch.randn(b, h, l, d, generator=gen).to(device)  # (B, H, l, d)
    seg = SegmentView(x=torch.zeros(b, l, h * d, device=device), q=x, k=x, v=x)
    base = 10 * l
    state = memory.empty(b, device)._replace(c=torch.stack([c, c], dim=2).transpose(1, 3).contiguous(),  # (B, N, 2, H, d)
                                             t=torch.full((b,), base, device=device))
    counter = iter(range(base + l, 2**62, l))
    write_a = torch.randn(n, n + l, generator=gen).to(device)  # (N, N + l)
    write_b = torch.randn(n + l, 2 * b * h * d, generator=gen).to(device)  # (N + l, 2BHd)
    read_a = torch.randn(m, n, generator=gen).to(device)  # (M, N)
    read_b = torch.randn(n, 2 * b * h * d, generator=gen).to(device)  # (N, 2BHd)
    return {
        "write_fresh": lambda: memory.write(state._replace(t=torch.full((b,), next(counter), device=device)), seg),
        "write_cached": lambda: memory.write(state, seg),
        "write_floor": lambda: write_a @ write_b,
        "read": lambda: memory.read(state, seg),
        "read_floor": lambda: read_a @ read_b,
    }


def kernel_ratios(times: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per-repeat ratios of each Elastic Memory kernel to its matmul floor."""
    return {
        "absorb_vs_matmul_floor": measure.paired_ratios(times["write_fresh"], times["write_floor"]),
        "absorb_cached_vs_matmul_floor": measure.paired_ratios(times["write_cached"], times["write_floor"]),
        "sampling_vs_matmul_floor": measure.paired_ratios(times["read"], times["read_floor"]),
        "write_new_t_vs_seen_t": measure.paired_ratios(times["write_fresh"], times["write_cached"]),
    }
