"""Model FLOPs of a segment-recurrent Decoder and model FLOPs utilisation (MFU).

Convention (PaLM, Chowdhery et al. 2022, Appendix B; nanoGPT `estimate_mfu`): a multiply-add is
2 FLOPs; only matrix products are counted (norms, softmax, RoPE, the optimizer are not); causal
attention is counted as the full l x l square; backward = 2 x forward, so a train step is
3 x forward. Memory FLOPs are each kind's own count (`Memory.cost`, e.g. Elastic Memory's read
2 * 2 M N D and write 2 (2 N l D + 2 N^2 D), docs/memory.md): nothing is read at t = 0, although
an implementation may compute (and mask) an empty read there.

Per layer, for one segment of l tokens of one sequence, n = l + memory-token slots rows (D model
width, F MLP hidden, M memory keys read in the softmax, H heads x d head width = D):
  projections q, k, v, o      4 * 2 n D^2
  SwiGLU MLP                  3 * 2 n D F
  attention logits + values   2 * 2 n (n + M) D
  memory read + write         Memory.cost(l, t)
plus the output head 2 l D V once per segment.
"""
from __future__ import annotations

import re

from torch import nn

from elastic_cli.memory.base import MemoryCost


def segment_flops(model: nn.Module, l: int, t: int, write: bool = True, rows: int = 1) -> int | None:
    """Forward FLOPs of `rows` sequences' segments of l tokens after t tokens of their documents
    (write=False: without the memory writes, as `Decoder.forward(..., write=False)`). The work a
    write plan shares (`Memory.write_plan`: once per segment for the layers with one plan key, and for
    all rows at one t) is counted once; a plan a layer makes for itself once per layer."""
    d = model.embed.weight.shape[1]
    vocab = model.embed.weight.shape[0]
    n = l + model.front + model.back  # rows: tokens and memory-token slots
    total, plans, own = 2 * l * d * vocab, {}, 0  # output head
    for block in model.blocks:
        hidden = block.mlp.hidden
        cost = MemoryCost(0, 0, 0) if block.memory is None else block.memory.cost(l, t)
        if cost is None:
            return None
        total += 4 * 2 * n * d * d + 3 * 2 * n * d * hidden + 2 * 2 * n * (n + cost.keys) * d + cost.read
        total += cost.write if write else 0
        if write and block.memory is not None:
            if block.memory.plan_key() is not None:
                plans[block.memory.plan_key()] = block.memory.plan_flops(l, t)
            else:  # a plan the layer's write makes for itself (once for all rows)
                own += block.memory.plan_flops(l, t)
    return rows * total + sum(plans.values()) + own


def train_step_flops(model: nn.Module, batch: int, segments: int, l: int) -> int | None:
    """FLOPs of one train step: `batch` windows of `segments` segments of l tokens, each window
    starting with empty memory; forward + backward (3 x forward). The window's last segment writes
    no memory (`step.train_step` drops that state; with an auxiliary loss it is written, a few
    more FLOPs than counted here)."""
    total = 0
    for s in range(segments):  # the rows of a micro-batch are at the same t (a window starts empty)
        flops = segment_flops(model, l, s * l, write=s < segments - 1, rows=batch)
        if flops is None:
            return None
        total += flops
    return 3 * total


# bf16 dense tensor-core peak FLOP/s from the vendors' datasheets, matched against
# torch.cuda.get_device_name() in this order (more specific names first).
PEAK_BF16: tuple[tuple[str, float], ...] = (
    (r"H100.*NVL", 835e12),
    (r"H100.*PCIe", 756e12),
    (r"H100", 989e12),
    (r"H200", 989e12),
    (r"B200", 2250e12),
    (r"A100", 312e12),
    (r"L40S", 362e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),
)


def peak_flops(device_name: str) -> float | None:
    """bf16 dense peak of a GPU by name, or None when it is not in the table (report "n/a")."""
    for pattern, peak in PEAK_BF16:
        if re.search(pattern, device_name):
            return peak
    return None


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the device peak; None when the peak is unknown."""
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / peak
