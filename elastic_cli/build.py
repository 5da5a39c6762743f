"""The only place where config becomes modules: `build_model(cfg) -> Decoder`."""
from __future__ import annotations

from elastic_cli.config import RunConfig, long_layer, memory_layers
from elastic_cli.errors import UsageError
from elastic_cli.memory import REGISTRY
from elastic_cli.model.decoder import Decoder


def build_model(cfg: RunConfig) -> Decoder:
    """A Decoder with one `memory.kind` memory on each of `memory.layers` (kind `none` included,
    so the baseline runs the identical code path). Weights are left as constructed: call
    `model.init.init_weights(model, seed)` for a fresh model, or load a checkpoint."""
    m = cfg.model
    head_dim = m.d_model // m.n_head
    try:
        memories = {i: REGISTRY[cfg.memory.kind](m.n_head, head_dim, **layer_options(cfg, i)) for i in memory_layers(cfg)}
        return Decoder(vocab_size=m.vocab_size, d_model=m.d_model, n_layer=m.n_layer, n_head=m.n_head,
                       mlp_hidden=m.mlp_hidden, segment_len=m.segment_len, memories=memories,
                       rope_base=m.rope_base, tie_embeddings=m.tie_embeddings)
    except ValueError as e:  # a combination the modules reject (e.g. caching over elastic with gating)
        raise UsageError(f"memory.kind={cfg.memory.kind}: {e}") from None


def layer_options(cfg: RunConfig, layer: int) -> dict:
    """Constructor options of the memory on `layer`: the kind's config fields, plus what melodi
    derives from the model (its mixing window is the segment; one layer holds the long-term FIFO)."""
    options = cfg.memory.options()
    if cfg.memory.kind == "melodi":
        options.update(window=cfg.model.segment_len, long_layer=layer == long_layer(cfg))
    return options


def describe(cfg: RunConfig, world: int) -> dict[str, int | float]:
    """Sizes for `elastic train --dry-run`: the model is built on the meta device (no memory used).

    The memory estimate per process is rough: 16 bytes per parameter (fp32 weights, gradients and
    two AdamW moments) plus activations kept for one BPTT chunk of one micro-batch: per token and
    layer about 10 d_model + 3 mlp_hidden values, M memory samples of keys and values per segment
    and layer, and the logits (fp32 copy and its gradient)."""
    import torch

    with torch.device("meta"):
        model = build_model(cfg)
        memory_floats = model.numel(model.empty_states(1, "meta"))
    params = sum(p.numel() for p in model.parameters())
    m, t = cfg.model, cfg.train
    act_bytes = 2 if t.dtype == "bf16" or (t.dtype == "auto" and cfg.run.device != "cpu") else 4
    chunk_tokens = t.micro_batch * t.bptt_segments * m.segment_len
    mem = cfg.memory
    samples = {"elastic": mem.samples, "xl": mem.cache, "memorizing": mem.topk,
               "melodi": mem.short_tokens + mem.summary_tokens}.get(mem.kind, 0)  # extra keys/values per segment
    per_token = m.n_layer * (10 * m.d_model + 3 * m.mlp_hidden) * act_bytes + m.vocab_size * (act_bytes + 8)
    per_segment = len(memory_layers(cfg)) * 2 * samples * m.d_model * act_bytes * t.micro_batch
    activations = chunk_tokens * per_token + t.bptt_segments * per_segment
    return {"parameters": params, "memory_floats_per_sequence": memory_floats, "processes": world,
            "tokens_per_step": t.global_batch * t.segments * m.segment_len,
            "accumulation": t.global_batch // (t.micro_batch * world),
            "memory_gib": (16 * params + activations) / 2**30}
