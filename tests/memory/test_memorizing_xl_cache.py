"""Memorizing Transformer with the paper's XL cache beside the kNN store (`memory.cache`): with the
gate closed it is exactly `xl` on that layer; the store and the cache fill independently."""
import torch
import torch.nn.functional as F

from elastic_cli.memory.base import SegmentView
from elastic_cli.memory.memorizing import MemorizingMemory
from tests.helpers.memory_checks import D, HEADS, SEG, build, by_segments, check_rows_and_reset, check_streaming, tokens

DH = D // HEADS


def test_gate_closed_it_is_xl_with_the_same_cache():
    mem = build("memorizing", layers=(1,), store=10, topk=3, cache=9)
    xl = build("xl", layers=(1,), cache=9)
    with torch.no_grad():
        xl.load_state_dict({k: v for k, v in mem.state_dict().items() if ".memory." not in k})
        mem.blocks[1].memory.gate_bias.fill_(-1e4)  # g = sigmoid(b) = 0: the local (segment + cache) output only
        toks = tokens(2, 4 * SEG, seed=4)
        torch.testing.assert_close(by_segments(mem, toks)[0], by_segments(xl, toks)[0], rtol=0, atol=1e-6)
        mem.blocks[1].memory.gate_bias.fill_(0.0)  # g = 1/2: the kNN output moves the logits
        assert (by_segments(mem, toks)[0] - by_segments(xl, toks)[0]).abs().max() > 1e-4


def test_store_and_cache_hold_their_own_windows():
    gen = torch.Generator().manual_seed(0)
    mem = MemorizingMemory(HEADS, DH, store=7, topk=2, cache=3)
    state, ks = mem.empty(2, "cpu"), []
    for l in (4, 5):
        q, k, v = (torch.randn(2, HEADS, l, DH, generator=gen) for _ in range(3))
        state = mem.write(state, SegmentView(torch.zeros(2, l, D), q, k, v))
        ks.append(k)
    every = torch.cat(ks, dim=2)  # (B, H, 9, d)
    torch.testing.assert_close(state.ck, every[:, :, -3:])  # the cache: the last 3 tokens, raw keys
    torch.testing.assert_close(state.k, every[:, :, -7:] / every[:, :, -7:].norm(dim=-1, keepdim=True))  # store: 7, normalised
    assert state.n.tolist() == [7, 7] and state.t.tolist() == [9, 9]
    q = torch.randn(2, HEADS, 2, DH, generator=gen)
    read = mem.read(state, SegmentView(None, q, None, None))
    assert read.pos.tolist() == [-3, -2, -1]  # the cache's keys sit just before the segment
    assert read.valid.tolist() == [[True] * 3] * 2  # 9 tokens written: all 3 cache slots hold one, in both rows
    assert torch.equal(read.k, state.ck) and torch.equal(read.v, state.cv)  # the cache beside the store, as keys
    scale = DH ** 0.5 * mem.log_scale.detach().exp()[None, :, None, None]  # the kNN read, written out: top-2 softmax
    logits = scale * F.normalize(q, dim=-1) @ state.k.transpose(-1, -2)  # (B, H, 2, 7)
    top = logits.topk(2, dim=-1)
    want = torch.einsum("bhnk,bhnkd->bhnd", top.values.softmax(-1),
                        state.v[:, :, None].expand(-1, -1, 2, -1, -1).gather(3, top.indices[..., None].expand(-1, -1, -1, -1, DH)))
    torch.testing.assert_close(read.heads, want)
    assert mem.numel(state) == 2 * (7 + 3) * D


def test_decoder_streaming_rows_reset():
    model = build("memorizing", layers=(1,), store=10, topk=3, cache=8, boost=10.0)
    check_streaming(model)
    check_rows_and_reset(model)
