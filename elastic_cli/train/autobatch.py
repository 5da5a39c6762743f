"""`train.micro_batch: auto`: the largest micro-batch that fills the accelerator, chosen before step 1.

A micro-batch must divide each rank's share of the global batch (`global_batch / world`). On a CPU
memory is not what limits a step, so auto is the whole share (one forward per rank and step). On
CUDA it is the largest divisor whose estimated step memory (`build.describe`: weights, gradients,
AdamW moments and one BPTT chunk's activations) stays under FILL of the device's memory and, when a
probe is given, whose first window really runs (a CUDA out-of-memory error steps down to the next
divisor). Every rank picks the same value: the smallest over ranks.
"""
from __future__ import annotations

from typing import Callable

import torch

from elastic_cli.train import distributed
from elastic_cli.config import RunConfig
from elastic_cli.build import describe
from elastic_cli.train.step import segment_nll

FILL = 0.85  # of the device's memory the estimate may use (the allocator's fragmentation and workspaces take the rest)


def is_auto(cfg: RunConfig) -> bool:
    return cfg.train.micro_batch == "auto"


def with_micro_batch(cfg: RunConfig, micro_batch: int) -> RunConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"micro_batch": micro_batch})})


def divisors(n: int) -> list[int]:
    """Divisors of n, largest first."""
    return [d for d in range(n, 0, -1) if n % d == 0]


def largest_fitting(share: int, fits: Callable[[int], bool]) -> int:
    """The largest divisor of `share` for which fits(m) holds; 1 when none does (the step then reports
    the out-of-memory error itself)."""
    return next((m for m in divisors(share) if fits(m)), 1)


def estimated_bytes(cfg: RunConfig, world: int, micro_batch: int) -> float:

    return describe(with_micro_batch(cfg, micro_batch), world)["memory_gib"] * 2**30


def resolve(cfg: RunConfig, world: int, device: torch.device,
            probe: Callable[[int], bool] | None = None) -> RunConfig:
    """cfg with an integer train.micro_batch (unchanged when the recipe gives one). probe(m): True when a
    window of m rows runs on the device (CUDA only)."""
    if not is_auto(cfg):
        return cfg
    share = cfg.train.global_batch // world
    if device.type != "cuda":
        return with_micro_batch(cfg, share)
    capacity = torch.cuda.get_device_properties(device).total_memory
    chosen = largest_fitting(share, lambda m: estimated_bytes(cfg, world, m) <= FILL * capacity
                             and (probe is None or probe(m)))
    return with_micro_batch(cfg, int(distributed.all_reduce_min(chosen)))


def window_probe(cfg: RunConfig, model, autocast, device: torch.device) -> Callable[[int], bool]:
    """probe(m): one BPTT chunk of m random windows, forward and backward, on the device; False on a
    CUDA out-of-memory error. Gradients and the allocator's cache are released after each try."""

    m_cfg, t = cfg.model, cfg.train

    def probe(m: int) -> bool:
        tokens = torch.randint(0, m_cfg.vocab_size, (m, t.bptt_segments, m_cfg.segment_len), device=device)
        try:
            states, total = model.empty_states(m, device), 0
            with autocast:
                for s in range(t.bptt_segments):
                    nll, states = segment_nll(model, tokens[:, s], tokens[:, s], states)
                    total = total + nll
            total.backward()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    return probe
