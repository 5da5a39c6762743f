"""The one place weights are initialised."""
from __future__ import annotations

import math

import torch
from torch import nn

_INPUT = ("attn.wqkv.weight", "mlp.w13.weight")  # fused: drawn part by part (wq, wk, wv; w1, w3), as when separate
_OUTPUT = ("attn.wo.weight", "mlp.w2.weight")


@torch.no_grad()
def init_weights(model: nn.Module, seed: int | torch.Generator) -> None:
    """Initialise every parameter of a Decoder from `seed`, independent of its device.

    | parameter                                  | init                          |
    |--------------------------------------------|-------------------------------|
    | embed.weight (also the output if tied)     | N(0, 0.02)                    |
    | attn.wqkv, mlp.w13 (fused input projections) | N(0, 0.02)                  |
    | attn.wo, mlp.w2 (residual outputs)         | N(0, 0.02 / sqrt(2 n_layer))  |
    | lm_head.weight (untied)                    | N(0, 0.02)                    |
    | RMSNorm weights                            | 1                             |
    | prev_embed.weight (model.prev_embed)       | N(0, 0.02)                    |
    | memory parameters: >= 2-D / 1-D            | N(0, 0.02) / 0                |
    | a memory's `zero_init` parameters          | 0 (drawn, then zeroed)        |

    Residual-output scaling as in GPT-2 (Radford et al. 2019, §2.3). Draws happen on the CPU in
    `named_parameters` order, so the result is the same on every device; a zeroed parameter is drawn
    too, so the others do not depend on which start at zero.
    """
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    n_layer = len(model.blocks)
    zeroed = {f"{prefix}.{name}".lstrip(".") for prefix, module in model.named_modules()
              for name in getattr(module, "zero_init", ())}  # e.g. blocks.0.memory.wv.weight (ARMT's W_v)
    for name, p in model.named_parameters():
        if ".memory." in name:
            std = 0.02 if p.dim() >= 2 else 0.0
        elif name in ("embed.weight", "lm_head.weight", "prev_embed.weight") or name.endswith(_INPUT):
            std = 0.02
        elif name.endswith(_OUTPUT):
            std = 0.02 / math.sqrt(2 * n_layer)
        elif name.endswith("norm.weight"):
            p.fill_(1.0)
            continue
        else:
            raise ValueError(f"init_weights: no rule for parameter {name}")
        if name.endswith(_INPUT):  # one draw per former projection, in their order: the same weights as unfused
            parts = 3 if name.endswith("wqkv.weight") else 2
            p.copy_(torch.cat([torch.randn(rows.shape, generator=gen) * std for rows in p.chunk(parts, dim=0)]))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        if name in zeroed:
            p.zero_()
