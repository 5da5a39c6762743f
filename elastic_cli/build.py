"""The only place where config becomes modules: `build_model(cfg) -> Decoder`."""
from __future__ import annotations

from elastic_cli import precision
from elastic_cli.config import RunConfig, layer_context, memory_layers
from elastic_cli.errors import UsageError
from elastic_cli.memory import REGISTRY
from elastic_cli.model.decoder import Decoder, DecoderShape


def build_model(cfg: RunConfig) -> Decoder:
    """A Decoder with one `memory.kind` memory on each of `memory.layers` (kind `none` included,
    so the baseline runs the identical code path). Weights are left as constructed: call
    `model.init.init_weights(model, seed)` for a fresh model, or load a checkpoint."""
    m = cfg.model
    head_dim = m.d_model // m.n_head
    try:
        memories = {i: REGISTRY[cfg.memory.kind](m.n_head, head_dim, **layer_options(cfg, i)) for i in memory_layers(cfg)}
        shape = DecoderShape(vocab_size=m.vocab_size, d_model=m.d_model, n_layer=m.n_layer, n_head=m.n_head,
                             mlp_hidden=m.mlp_hidden, segment_len=m.segment_len, rope_base=m.rope_base,
                             tie_embeddings=m.tie_embeddings, prev_embed=m.prev_embed)
        return Decoder(shape, memories)
    except ValueError as e:  # a combination the modules reject (e.g. caching over elastic with gating)
        raise UsageError(f"memory.kind={cfg.memory.kind}: {e}") from None


def layer_options(cfg: RunConfig, layer: int) -> dict:
    """Constructor options of the memory on `layer`, as the kind's Options derive them (e.g. melodi
    adds its window, the segment, and whether this layer holds the long-term FIFO)."""
    return cfg.memory.memory_kwargs(layer_context(cfg, layer))


def describe(cfg: RunConfig, world: int) -> dict[str, int | float | str]:
    """Sizes for `elastic train --dry-run`: the model is built on the meta device (no memory used).

    Per process (`state_bytes`): the weights, gradients and AdamW moments (fp32: 4, 4 and 8 bytes per
    parameter), all of them under `train.parallel=ddp`, a 1/world shard of the transformer's under
    `fsdp` (the memories' parameters are replicated), plus what FSDP gathers while it computes. The
    memory estimate adds activations kept for one BPTT chunk of one micro-batch: per token and
    layer about 10 d_model + 3 mlp_hidden values, the M extra keys and values each memory layer's
    attention reads per segment (its `cost(...).keys`), and the logits (fp32 copy and its gradient)."""
    import torch

    with torch.device("meta"):
        model = build_model(cfg)
        memory_floats = model.numel(model.empty_states(1, "meta"))
    params = sum(p.numel() for p in model.parameters())
    m, t = cfg.model, cfg.train
    micro = 1 if t.micro_batch == "auto" else t.micro_batch  # auto is chosen at start: the estimate is for 1
    bf16 = precision.uses_bf16("cpu" if cfg.run.device == "cpu" else "cuda", t.dtype)
    act_bytes = 2 if bf16 else 4
    chunk_tokens = micro * t.bptt_segments * m.segment_len
    costs = [block.memory.cost(m.segment_len, m.segment_len) for block in model.blocks if block.memory is not None]
    keys = sum(c.keys for c in costs if c is not None)  # extra keys/values per segment, all memory layers
    per_token = m.n_layer * (10 * m.d_model + 3 * m.mlp_hidden) * act_bytes + m.vocab_size * (act_bytes + 8)
    per_segment = 2 * keys * m.d_model * act_bytes * micro
    activations = chunk_tokens * per_token + t.bptt_segments * per_segment
    state = state_bytes(model, world if t.parallel == "fsdp" else 1, bf16)
    return {"parameters": params, "memory_floats_per_sequence": memory_floats, "processes": world,
            "parallel": t.parallel if world > 1 else f"{t.parallel} (one process: nothing to shard)",
            "tokens_per_step": t.global_batch * t.segments * m.segment_len,
            "accumulation": "auto" if t.micro_batch == "auto" else t.global_batch // (t.micro_batch * world),
            **{f"{k}_memory_per_process": int(v) for k, v in state.items()},
            "memory_gib": (sum(state.values()) + activations) / 2**30}


def state_bytes(model, shards: int, bf16: bool) -> dict[str, float]:
    """Bytes of parameters, gradients and optimizer state (AdamW: two fp32 moments) one process holds
    while training `model`, sharded `shards` ways as train/fsdp.py does (1: DDP or one process, all of
    it). FSDP shards each parameter of the transformer by rows (padded to a multiple of `shards`) and
    replicates the memories'; while computing it holds the root's parameters (embeddings, final norm)
    and two blocks' (the one running, the next one prefetched) gathered, in bf16 under bf16 mixed
    precision, and a block's whole gradient (fp32) until it is reduce-scattered."""
    memory = {id(p) for block in model.blocks if block.memory is not None for p in block.memory.parameters()}
    if shards == 1:
        n = sum(p.numel() for p in model.parameters())
        return {"weights": 4.0 * n, "gradients": 4.0 * n, "optimizer": 8.0 * n}
    owned = lambda module: [p for p in module.parameters() if id(p) not in memory]  # noqa: E731
    shard = lambda p: -(-p.shape[0] // shards) * (p.numel() // max(p.shape[0], 1)) if p.dim() else p.numel()  # noqa: E731
    local = sum(shard(p) for p in model.parameters() if id(p) not in memory) + \
        sum(p.numel() for p in model.parameters() if id(p) in memory)
    block = max((sum(p.numel() for p in owned(b)) for b in model.blocks), default=0)
    root = sum(p.numel() for p in owned(model)) - sum(p.numel() for b in model.blocks for p in owned(b))
    gathered = (root + 2 * block) * (2 if bf16 else 4)
    return {"weights": 4.0 * local + gathered, "gradients": 4.0 * local + 4.0 * max(block, root),
            "optimizer": 8.0 * local}
