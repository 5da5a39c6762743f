"""Decoder: equivalences (none vs plain, segments vs streaming, batch rows), gradients, precision."""
import math

import pytest
import torch
import torch.nn.functional as F

from elastic_cli.memory import REGISTRY
from elastic_cli.memory.base import detach_state
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights
from tests.helpers.memory_checks import D, HEADS, HIDDEN, LAYERS, SEG, V, by_segments, by_steps, check_fast_equals_reference, tokens


def build(kind="elastic", layers=(0, 1), tie=True, **options):
    opts = {"order": 8, "samples": 5, **options} if kind == "elastic" else {}
    memories = {i: REGISTRY[kind](HEADS, D // HEADS, **opts) for i in layers}
    model = Decoder(DecoderShape(V, D, LAYERS, HEADS, HIDDEN, SEG, tie_embeddings=tie), memories)
    init_weights(model, seed=0)
    return model


def plain_decoder(model, toks):
    """A one-segment causal transformer written out from the model's weights (complex-number RoPE)."""
    def rms(x, w):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def rope(x):  # x (B, H, l, d): channel i pairs with i + d/2, rotated by pos * base^(-2i/d)
        half = x.shape[-1] // 2
        freq = 10000.0 ** (-torch.arange(half) * 2 / x.shape[-1])
        rot = torch.polar(torch.ones(x.shape[-2], half), torch.arange(x.shape[-2])[:, None] * freq)
        z = torch.complex(x[..., :half], x[..., half:]) * rot
        return torch.cat([z.real, z.imag], dim=-1)

    b, l = toks.shape
    x = model.embed.weight[toks]
    for blk in model.blocks:
        h = rms(x, blk.attn_norm.weight)
        wq, wk, wv = blk.attn.wqkv.weight.chunk(3)  # the fused projection's rows [wq ; wk ; wv]
        q, k, v = ((h @ w.T).view(b, l, HEADS, -1).transpose(1, 2) for w in (wq, wk, wv))
        att = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(D // HEADS)
        att = att.masked_fill(torch.ones(l, l).triu(1).bool(), float("-inf")).softmax(-1)
        x = x + blk.attn.wo((att @ v).transpose(1, 2).reshape(b, l, D))
        h = rms(x, blk.mlp_norm.weight)
        w1, w3 = blk.mlp.w13.weight.chunk(2)  # rows [w1 ; w3]
        x = x + blk.mlp.w2(F.silu(h @ w1.T) * (h @ w3.T))
    return rms(x, model.norm.weight) @ model.embed.weight.T


@pytest.mark.parametrize("layers", [(0, 1), ()])
def test_none_equals_plain_decoder(layers):
    model = build("none", layers)
    toks = tokens(2, SEG)
    logits, _ = model(toks, model.empty_states(2, "cpu"))
    torch.testing.assert_close(logits, plain_decoder(model, toks), rtol=1e-5, atol=1e-5)
    # the elastic model on its first segment (empty memory) is the same function
    elastic = build("elastic")
    elastic.load_state_dict(model.state_dict())
    torch.testing.assert_close(elastic(toks, elastic.empty_states(2, "cpu"))[0], logits, rtol=1e-5, atol=1e-5)


def test_parameters_match_between_elastic_and_none():
    elastic, none = build("elastic"), build("none")
    assert sum(p.numel() for p in elastic.parameters()) == sum(p.numel() for p in none.parameters())
    assert elastic.state_dict().keys() == none.state_dict().keys()
    states = elastic.empty_states(1, "cpu")
    assert elastic.numel(states) == LAYERS * 2 * HEADS * 8 * (D // HEADS) and none.numel(none.empty_states(1, "cpu")) == 0


@pytest.mark.parametrize("layers,schedule", [((0, 1), "exponential"), ((1,), "uniform")])
def test_segments_equal_streaming_token_by_token(layers, schedule):
    model = build("elastic", layers, schedule=schedule)
    toks = tokens(2, 4 * SEG + 3, seed=1)
    with torch.no_grad():
        expected, states = by_segments(model, toks)
        steps, stream = by_steps(model, toks)
        chunked, _ = model.step(toks[:, :SEG + 2], model.start_stream(2, "cpu"))
    torch.testing.assert_close(steps, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, expected[:, : SEG + 2], rtol=0, atol=1e-5)
    # the stream holds only the current (partial) segment, and memory saw every full segment
    assert stream.pos == 3 and stream.past[0].qkv.shape[1] == SEG  # buffers of one segment, 3 rows written
    assert stream.states[0].t.tolist() == [4 * SEG] * 2 and states[0].t.tolist() == [4 * SEG + 3] * 2


def test_batch_rows_are_independent_also_after_a_reset():
    model = build("elastic", schedule="exponential")
    a, b = tokens(1, 3 * SEG, seed=2), tokens(1, 3 * SEG, seed=3)
    with torch.no_grad():
        both, _ = by_segments(model, torch.cat([a, b]))
        torch.testing.assert_close(both[0:1], by_segments(model, a)[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(both[1:2], by_segments(model, b)[0], rtol=0, atol=1e-5)
        # row 1 starts a new document after 2 segments: rows now have t = 12 and t = 0
        states = model.empty_states(2, "cpu")
        _, states = by_segments(model, torch.cat([a, b])[:, : 2 * SEG], states)
        states = model.reset_states(states, torch.tensor([False, True]))
        assert states[0].t.tolist() == [2 * SEG, 0]
        rest, _ = by_segments(model, torch.cat([a[:, 2 * SEG :], b[:, :SEG]]), states)
        torch.testing.assert_close(rest[0:1], both[0:1, 2 * SEG :], rtol=0, atol=1e-5)
        torch.testing.assert_close(rest[1:2], by_segments(model, b[:, :SEG])[0], rtol=0, atol=1e-5)


def test_fast_attention_equals_reference_path():
    model = build("elastic", schedule="gauss", tie=False)
    check_fast_equals_reference(model, tokens(3, 3 * SEG, seed=4))


def test_gradients_reach_segment_zero_through_memory():
    model = build("elastic")
    toks = tokens(2, 3 * SEG, seed=5)
    states = model.empty_states(2, "cpu")
    _, after0 = model(toks[:, :SEG], states)
    grads = {}
    for carry in ("through", "detached"):
        model.zero_grad()
        states = after0 if carry == "through" else detach_state(after0)
        _, states = model(toks[:, SEG : 2 * SEG], states)
        logits, _ = model(toks[:, 2 * SEG :], states)
        loss = F.cross_entropy(logits.reshape(-1, V), toks[:, 2 * SEG :].reshape(-1))
        grad_state = torch.autograd.grad(loss, after0[0].c, retain_graph=True, allow_unused=True)[0]
        loss.backward(retain_graph=True)
        _, wk_grad, wv_grad = model.blocks[0].attn.wqkv.weight.grad.chunk(3)  # rows [wq ; wk ; wv]
        grads[carry] = (wk_grad.clone(), wv_grad.clone(), grad_state)
    wk, wv, g_state = grads["through"]
    assert g_state is not None and g_state.abs().sum() > 0
    # segment 0's key/value projections get gradient only via the memory: the two runs differ
    assert (wk - grads["detached"][0]).abs().max() > 1e-6 and (wv - grads["detached"][1]).abs().max() > 1e-6


def test_read_schedule_changes_outputs_not_parameters():
    uniform, expo = build("elastic", schedule="uniform"), build("elastic", schedule="exponential")
    expo.load_state_dict(uniform.state_dict())
    toks = tokens(1, 2 * SEG, seed=6)
    with torch.no_grad():
        a, b = by_segments(uniform, toks)[0], by_segments(expo, toks)[0]
    torch.testing.assert_close(a[:, :SEG], b[:, :SEG])  # segment 0: no memory yet
    assert (a[:, SEG:] - b[:, SEG:]).abs().max() > 1e-4


def test_bf16_autocast_keeps_states_fp32():
    model = build("elastic")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, states = by_segments(model, tokens(2, 2 * SEG, seed=7))
        stream = model.step(tokens(2, SEG + 1, seed=8), model.start_stream(2, "cpu"))[1]
    assert logits.dtype == torch.bfloat16
    for s in states + stream.states:
        assert s.ck.dtype == s.cv.dtype == torch.float32 and s.t.dtype == torch.long


def test_init_is_deterministic_and_scaled():
    a, b = build("elastic"), build("none")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    wo = a.blocks[0].attn.wo.weight
    assert abs(wo.std().item() - 0.02 / math.sqrt(2 * LAYERS)) < 0.004
    assert torch.equal(a.norm.weight, torch.ones(D))


def test_bad_construction_is_rejected():
    with pytest.raises(ValueError, match="outside"):
        Decoder(DecoderShape(V, D, LAYERS, HEADS, HIDDEN, SEG), {5: REGISTRY["none"](HEADS, D // HEADS)})
    with pytest.raises(ValueError, match="built for"):
        Decoder(DecoderShape(V, D, LAYERS, HEADS, HIDDEN, SEG), {0: REGISTRY["none"](4, 4)})
    model = build("none")
    with pytest.raises(ValueError, match="segment_len"):
        model(tokens(1, SEG + 1), model.empty_states(1, "cpu"))


@pytest.mark.gpu
def test_cuda_streaming_and_bf16_states():
    model = build("elastic", schedule="exponential").cuda()
    toks = tokens(2, 3 * SEG + 2, seed=9).cuda()
    with torch.no_grad():
        expected, _ = by_segments(model, toks, model.empty_states(2, "cuda"))
        steps, _ = by_steps(model, toks, "cuda")
        torch.testing.assert_close(steps, expected, rtol=0, atol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, states = by_segments(model, toks, model.empty_states(2, "cuda"))
    assert all(s.ck.dtype == torch.float32 and s.ck.is_cuda for s in states)


def test_checkpoints_with_separate_projections_load_into_the_fused_ones():
    """State dicts written before the fused projections (wq, wk, wv; w1, w3) load, rows stacked in order."""
    model = build("elastic")
    old = {}
    for key, value in model.state_dict().items():
        fused = {"attn.wqkv.weight": ("wq", "wk", "wv"), "mlp.w13.weight": ("w1", "w3")}
        parts = next((names for suffix, names in fused.items() if key.endswith(suffix)), None)
        if parts is None:
            old[key] = value.clone()
            continue
        stem = key.rsplit(".", 2)[0]
        for name, rows in zip(parts, value.chunk(len(parts))):
            old[f"{stem}.{name}.weight"] = rows.clone()
    fresh = build("elastic")
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    fresh.load_state_dict(old)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_a_forked_stream_steps_independently():
    """Stream caches are written in place: a fork continues from the same point, the original is untouched."""
    model = build("elastic")
    toks = tokens(1, SEG + 3, seed=11)
    with torch.no_grad():
        _, stream = model.step(toks, model.start_stream(1, "cpu"))
        a, _ = model.step(toks[:, :1], stream.fork())
        b, _ = model.step(toks[:, 1:2], stream.fork())
        again, _ = model.step(toks[:, :1], stream.fork())
    torch.testing.assert_close(a, again, rtol=0, atol=0)
    assert (a - b).abs().max() > 1e-4


def test_single_token_steps_decode_through_the_joint_cache():
    """After one single-token step in a segment, an elastic layer's keys sit behind the memory slots."""
    model = build("elastic")
    with torch.no_grad():
        _, stream = model.step(tokens(1, SEG + 2, seed=12), model.start_stream(1, "cpu"))
        assert all(c.kj is None for c in stream.past)  # a chunk of two tokens: the merged path
        _, stream = model.step(tokens(1, 1, seed=13), stream)
    assert all(c.kj is not None and c.kj.shape[-1] == 2 * (D // HEADS) for c in stream.past)


@pytest.mark.slow
def test_compiled_blocks_give_the_eager_losses_and_gradients():
    """`compile_blocks` (train.compile): whole segments through the compiled blocks (the eager backend:
    dynamo's tracing, graph breaks and guards, without a C++ toolchain) equal eager; streaming stays eager."""
    model = build("elastic")
    toks = tokens(2, 2 * SEG, seed=14)

    def loss_and_grads():
        model.zero_grad()
        logits, _ = by_segments(model, toks)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), toks[:, 1:].reshape(-1))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    expected = loss_and_grads()
    model.compile_blocks(backend="eager")
    torch._dynamo.utils.counters.clear()
    got = loss_and_grads()
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0  # the blocks ran compiled
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-6)
    for a, b in zip(got[1], expected[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert model.state_dict().keys() == build("elastic").state_dict().keys()  # the wrappers are not modules of it
