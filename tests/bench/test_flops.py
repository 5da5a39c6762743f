"""FLOP counts against a hand count and against torch's own FlopCounterMode; the peak table; MFU."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from elastic_cli import flops
from elastic_cli.memory import REGISTRY
from elastic_cli.memory.base import Memory
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights

V, D, LAYERS, HEADS, HIDDEN, SEG = 10, 8, 2, 2, 12, 4


def build(kind, order=3, samples=2, layers=(0, 1)):
    opts = {"order": order, "samples": samples} if kind == "elastic" else {}
    model = Decoder(DecoderShape(V, D, LAYERS, HEADS, HIDDEN, SEG), {i: REGISTRY[kind](HEADS, D // HEADS, **opts) for i in layers})
    init_weights(model, seed=0)
    for block in model.blocks:
        block.attn.reference = True  # explicit matmuls: the counter sees the math, not the SDPA packing
    return model


def test_hand_count_none():
    # per layer: qkvo 4*2*4*8*8 = 2048, MLP 3*2*4*8*12 = 2304, attention 2*2*4*4*8 = 512 -> 4864
    # two layers 9728, head 2*4*8*10 = 640 -> 10368
    assert flops.segment_flops(build("none"), SEG, 0) == 10368
    assert flops.segment_flops(build("none"), SEG, 40) == 10368


def test_hand_count_elastic():
    model = build("elastic", order=3, samples=2, layers=(1,))
    # t = 0: no read; the write [R | W] @ [C ; X] 2 * 2*3*(3+4)*8 = 672 (R = 0 is multiplied too), and its
    # bank's product (1-ρ)A @ W(0, l) 2*3*3*4 = 72, once per segment
    assert flops.segment_flops(model, SEG, 0) == 10368 + 672 + 72
    # t > 0: attention over 2 more keys 2*2*4*2*8 = 256, read 2*2*2*3*8 = 192
    assert flops.segment_flops(model, SEG, 4) == 10368 + 672 + 72 + 256 + 192
    # rows at one t share the bank: counted once
    assert flops.segment_flops(model, SEG, 4, rows=3) == 3 * (10368 + 672 + 256 + 192) + 72


def test_train_step_is_three_forwards_over_the_window_without_its_last_write():
    model = build("elastic")
    window = sum(flops.segment_flops(model, SEG, s * SEG, rows=5) for s in range(3))
    plan = model.blocks[0].memory.plan_flops(SEG, 2 * SEG)  # one bank for every layer and row of a segment
    last_write = 5 * sum(b.memory.cost(SEG, 2 * SEG).write for b in model.blocks) + plan  # the state train_step drops
    assert last_write > plan > 0
    assert flops.segment_flops(model, SEG, 2 * SEG, write=False, rows=5) == \
        flops.segment_flops(model, SEG, 2 * SEG, rows=5) - last_write
    assert flops.train_step_flops(model, batch=5, segments=3, l=SEG) == 3 * (window - last_write)


def counted(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_none_forward_and_backward_match_torch_counter():
    model = build("none")
    toks = torch.randint(0, V, (3, SEG), generator=torch.Generator().manual_seed(0))

    def step():
        logits, _ = model(toks, model.empty_states(3, "cpu"))
        F.cross_entropy(logits.flatten(0, 1), toks.flatten()).backward()

    assert counted(step) == flops.train_step_flops(model, batch=3, segments=1, l=SEG)


@pytest.mark.parametrize("layers", [(0, 1), (1,)])
def test_elastic_forward_after_history_matches_torch_counter(layers):
    model = build("elastic", order=5, samples=3, layers=layers)
    toks = torch.randint(0, V, (2, 2 * SEG), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, states = model(toks[:, :SEG], model.empty_states(2, "cpu"))
        model(toks[:, SEG:], states)  # warm-up; the R/W banks are built in numpy on the CPU: not model FLOPs
        assert counted(lambda: model(toks[:, SEG:], states)) == flops.segment_flops(model, SEG, SEG, rows=2)
        assert counted(lambda: model(toks[:, SEG:], states, write=False)) == flops.segment_flops(model, SEG, SEG,
                                                                                                 write=False, rows=2)


def test_unknown_memory_kind_has_no_count():
    class Other(Memory):
        pass

    model = build("none")
    model.blocks[0].memory = Other(HEADS, D // HEADS)
    assert flops.segment_flops(model, SEG, 0) is None
    assert flops.train_step_flops(model, 1, 2, SEG) is None


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A10", 125e12), ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", 362e12), ("NVIDIA H200", 989e12), ("Tesla V100-SXM2-16GB", None), ("NVIDIA L40", None),
])
def test_peak_table(name, peak):
    assert flops.peak_flops(name) == peak


def test_mfu():
    assert flops.mfu(3e12, 2.0, 3e12) == pytest.approx(0.5)
    assert flops.mfu(3e12, 2.0, None) is None


# every registered kind counts its own FLOPs (Memory.cost), so MFU is reported for each of them
KIND_OPTIONS = [
    ("elastic", {"order": 3, "samples": 2}), ("xl", {"cache": 3}), ("memorizing", {"store": 5, "topk": 2}),
    ("melodi", {"short_tokens": 3, "summary_tokens": 2, "long_tokens": 2, "long_store": 5}),
    ("rmt", {"tokens": 2}), ("armt", {"tokens": 2, "key_dim": 3, "nu": 2}),
    ("armt", {"tokens": 2, "key_dim": 3, "nu": 2, "denom": False}),
    ("infinity", {"basis": 4, "resample": 6}), ("infinity", {"basis": 4, "resample": 6, "sticky": True}),
    ("caching", {"base": "armt", "aggregate": "gated", "max_caches": 2, "tokens": 2, "key_dim": 3, "nu": 2}),
    ("caching", {"base": "armt", "aggregate": "residual", "max_caches": 2, "tokens": 2, "key_dim": 3, "nu": 2}),
    ("caching", {"base": "infinity", "aggregate": "sparse", "max_caches": 2, "top_k": 1, "basis": 4, "resample": 6}),
    ("caching", {"base": "elastic", "aggregate": "residual", "max_caches": 2, "order": 3, "samples": 2}),
    ("caching", {"base": "armt", "aggregate": "soup", "max_caches": 2, "tokens": 2, "key_dim": 3, "nu": 2}),
    ("caching", {"base": "infinity", "aggregate": "soup", "max_caches": 2, "basis": 4, "resample": 6}),
]


def test_every_kind_has_a_count():
    assert {kind for kind, _ in KIND_OPTIONS} | {"none"} == set(REGISTRY)


@pytest.mark.parametrize("kind, options", KIND_OPTIONS, ids=lambda v: v if isinstance(v, str) else "")
def test_every_kind_forward_after_history_matches_torch_counter(kind, options):
    layers = (0,) if kind == "rmt" else (0, 1)  # rmt: a decoder-level memory on the first layer
    memories = {i: REGISTRY[kind](HEADS, D // HEADS, **options, **({"window": SEG, "long_layer": i == 1}
                                                                   if kind == "melodi" else {})) for i in layers}
    model = Decoder(DecoderShape(V, D, LAYERS, HEADS, HIDDEN, SEG), memories)
    init_weights(model, seed=0)
    for block in model.blocks:
        block.attn.reference = True
    toks = torch.randint(0, V, (2, 3 * SEG), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, states = model(toks[:, :SEG], model.empty_states(2, "cpu"))
        _, states = model(toks[:, SEG : 2 * SEG], states)
        model(toks[:, 2 * SEG :], states)  # fill cached regression maps (banks: numpy on the CPU): not model FLOPs
        assert counted(lambda: model(toks[:, 2 * SEG :], states)) == flops.segment_flops(model, SEG, 2 * SEG, rows=2)
