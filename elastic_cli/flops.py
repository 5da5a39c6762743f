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

from .memory.base import MemoryCost


def segment_flops(model: nn.Module, l: int, t: int, write: bool = True) -> int | None:
    """Forward FLOPs of one sequence's segment of l tokens after t tokens of its document
    (write=False: without the memory writes, as `Decoder.forward(..., write=False)`)."""
    d = model.embed.weight.shape[1]
    vocab = model.embed.weight.shape[0]
    n = l + model.front + model.back  # rows: tokens and memory-token slots
    total = 2 * l * d * vocab  # output head
    for block in model.blocks:
        hidden = block.mlp.hidden
        cost = MemoryCost(0, 0, 0) if block.memory is None else block.memory.cost(l, t)
        if cost is None:
            return None
        total += 4 * 2 * n * d * d + 3 * 2 * n * d * hidden + 2 * 2 * n * (n + cost.keys) * d + cost.read
        total += cost.write if write else 0
    return total


def train_step_flops(model: nn.Module, batch: int, segments: int, l: int) -> int | None:
    """FLOPs of one train step: `batch` windows of `segments` segments of l tokens, each window
    starting with empty memory; forward + backward (3 x forward). The window's last segment writes
    no memory (`step.train_step` drops that state; with an auxiliary loss it is written, a few
    more FLOPs than counted here)."""
    per_window = 0
    for s in range(segments):
        flops = segment_flops(model, l, s * l, write=s < segments - 1)
        if flops is None:
            return None
        per_window += flops
    return 3 * batch * per_window


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
