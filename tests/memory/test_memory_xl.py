"""Transformer-XL cache (`xl`) and positioned memory keys (`Read.pos`)."""
import math

import pytest
import torch

from elastic_cli.memory import REGISTRY
from elastic_cli.memory.base import Read, SegmentView
from elastic_cli.memory.xl import XLMemory
from elastic_cli.model.attention import attend, attend_reference, rope_at
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights
from elastic_cli.model.layers import Rotary
from tests.helpers.memory_checks import D, HEADS, HIDDEN, SEG, V, tokens
B, H, DH = 2, 2, 8


def model(kind, layers=2, seg=SEG, **options):
    memories = {i: REGISTRY[kind](HEADS, D // HEADS, **options) for i in range(layers)}
    m = Decoder(DecoderShape(V, D, layers, HEADS, HIDDEN, seg), memories)
    init_weights(m, seed=0)
    return m


def run(m, toks):
    states, out = m.empty_states(toks.shape[0], "cpu"), []
    for s in range(0, toks.shape[1], m.segment_len):
        logits, states = m(toks[:, s : s + m.segment_len], states)
        out.append(logits)
    return torch.cat(out, dim=1), states


def kv(gen, l):
    return (torch.randn(B, H, l, DH, generator=gen) for _ in range(3))


def test_rope_at_equals_rotary_on_contiguous_positions():
    rotary, x = Rotary(DH), torch.randn(B, H, 5, DH, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rope_at(rotary, x, torch.arange(3, 8)), rotary(x, 3))
    # RoPE is relative: shifting query and key positions together keeps the logits
    q = torch.randn(B, H, 1, DH)
    a = rope_at(rotary, q, torch.tensor([2])) @ rope_at(rotary, x, torch.arange(-5, 0)).transpose(-1, -2)
    b = rope_at(rotary, q, torch.tensor([9])) @ rope_at(rotary, x, torch.arange(2, 7)).transpose(-1, -2)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,start", [(4, 0), (1, 5), (3, 2)])
def test_positioned_memory_fast_equals_reference(n, start):
    gen = torch.Generator().manual_seed(n + start)
    q = torch.randn(B, H, n, DH, generator=gen)
    k, v = torch.randn(B, H, start + n, DH, generator=gen), torch.randn(B, H, start + n, DH, generator=gen)
    read = Read(k=torch.randn(B, H, 4, DH, generator=gen), v=torch.randn(B, H, 4, DH, generator=gen),
                valid=torch.tensor([[True] * 4, [False, False, True, True]]), pos=torch.arange(-4, 0))
    rotary = Rotary(DH)
    torch.testing.assert_close(attend(q, k, v, read, rotary, start), attend_reference(q, k, v, read, rotary, start),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cache", [2, 4, 7])
def test_two_segments_equal_attention_over_the_concatenation_in_the_window(cache):
    """Segment 2 with the cache of segment 1 = causal attention over [seg1 ; seg2] at absolute
    positions 0..2l-1, where query l+i sees the last `cache` keys of seg1 (and seg2 up to itself)."""
    l, gen = 4, torch.Generator().manual_seed(cache)
    mem, rotary = XLMemory(H, DH, cache), Rotary(DH)
    q1, k1, v1 = kv(gen, l)
    q2, k2, v2 = kv(gen, l)
    state = mem.write(mem.empty(B, "cpu"), SegmentView(torch.zeros(B, l, H * DH), q1, k1, v1))
    read = mem.read(state, None)
    got = attend(q2, k2, v2, read, rotary, 0)
    keys, values = torch.cat([k1, k2], dim=2), torch.cat([v1, v2], dim=2)  # (B, H, 2l, d)
    logits = rotary(q2, l) @ rotary(keys, 0).transpose(-1, -2) / math.sqrt(DH)  # (B, H, l, 2l)
    i, j = torch.arange(l)[:, None], torch.arange(2 * l)[None, :]
    visible = (j <= l + i) & (j >= l - min(cache, l))
    expected = logits.masked_fill(~visible, float("-inf")).softmax(-1) @ values
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attend_reference(q2, k2, v2, read, rotary, 0), expected, rtol=1e-5, atol=1e-5)


def test_one_layer_with_full_cache_equals_one_long_segment():
    """With one layer and cache = segment length, segment 2 sees all of segment 1: the model is a
    causal transformer over both segments at once."""
    xl, long = model("xl", layers=1, cache=SEG), model("none", layers=1, seg=2 * SEG)
    long.load_state_dict(xl.state_dict())
    toks = tokens(2, 2 * SEG, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(run(xl, toks)[0], run(long, toks)[0], rtol=1e-5, atol=1e-5)


def test_cache_zero_equals_none():
    xl, none = model("xl", cache=0), model("none")
    none.load_state_dict(xl.state_dict())
    toks = tokens(2, 3 * SEG + 1, seed=2)
    with torch.no_grad():
        a, states = run(xl, toks)
        torch.testing.assert_close(a, run(none, toks)[0], rtol=0, atol=0)
    assert xl.numel(states) == 0


def test_cache_is_a_detached_fifo_of_the_last_keys():
    mem, gen = XLMemory(H, DH, 5), torch.Generator().manual_seed(3)
    state, seen_k, seen_v = mem.empty(B, "cpu"), [], []
    for l in (3, 1, 4):
        _, k, v = kv(gen, l)
        k.requires_grad_(True)
        state = mem.write(state, SegmentView(torch.zeros(B, l, H * DH), k, k, v))
        seen_k.append(k.detach())
        seen_v.append(v)
        filled = min(sum(x.shape[2] for x in seen_k), 5)
        assert state.n.tolist() == [filled] * B
        assert mem.read(state, None).valid[0].tolist() == [False] * (5 - filled) + [True] * filled
    assert not state.k.requires_grad
    torch.testing.assert_close(state.k, torch.cat(seen_k, dim=2)[:, :, -5:], rtol=0, atol=0)
    torch.testing.assert_close(state.v, torch.cat(seen_v, dim=2)[:, :, -5:], rtol=0, atol=0)
    assert mem.read(state, None).pos.tolist() == [-5, -4, -3, -2, -1]
    assert mem.numel(state) == 2 * 5 * H * DH


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="cache"):
        XLMemory(H, DH, -1)
    with pytest.raises(ValueError, match="cache"):
        XLMemory(H, DH, 2.5)


def test_grad_option_lets_gradients_into_the_cache_and_changes_nothing_else():
    """grad=False (the paper): a read in the next segment sends no gradient to the keys/values written;
    grad=True (the ablation) does. Forward values are equal."""
    from elastic_cli.memory.base import SegmentView
    from elastic_cli.memory.xl import XLMemory

    g = torch.Generator().manual_seed(0)
    k1, v1 = torch.randn(2, 2, 3, 4, generator=g), torch.randn(2, 2, 3, 4, generator=g)
    out, grads = {}, {}
    for grad in (False, True):
        mem = XLMemory(2, 4, cache=5, grad=grad)
        k, v = k1.clone().requires_grad_(True), v1.clone().requires_grad_(True)
        state = mem.write(mem.empty(2, "cpu"), SegmentView(None, k, k, v, None, None))
        read = mem.read(state, None)
        loss = read.k.square().sum() + read.v.sum()
        if loss.requires_grad:  # with the paper's stop-gradient nothing before the cache is in the graph
            loss.backward()
        out[grad] = (read.k.detach(), read.v.detach())
        grads[grad] = (k.grad, v.grad)
    assert grads[False] == (None, None)
    torch.testing.assert_close(grads[True][0], 2 * k1)
    torch.testing.assert_close(grads[True][1], torch.ones_like(v1))
    assert all(torch.equal(a, b) for a, b in zip(out[False], out[True]))
