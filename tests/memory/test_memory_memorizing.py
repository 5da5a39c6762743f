"""Memorizing Transformer memory (`memorizing`): kNN read, FIFO store, gate, no gradient into the store."""
import math

import pytest
import torch
import torch.nn.functional as F

from elastic_cli.memory import REGISTRY
from elastic_cli.memory.base import Read, SegmentView
from elastic_cli.memory.memorizing import MemorizingMemory
from elastic_cli.model.attention import Attention
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights

B, H, DH = 2, 2, 4


def view(gen, l, grad=False):
    q, k, v = (torch.randn(B, H, l, DH, generator=gen, requires_grad=grad) for _ in range(3))
    return SegmentView(torch.zeros(B, l, H * DH), q, k, v)


def filled(mem, gen, lengths):
    state = mem.empty(B, "cpu")
    for l in lengths:
        state = mem.write(state, view(gen, l))
    return state


def dense(mem, state, q, keep=None):
    """Dense twin: softmax over every valid stored pair (or only those in `keep`), cosine logits."""
    qn, kn = q / q.norm(dim=-1, keepdim=True), state.k / state.k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    logits = math.sqrt(DH) * mem.log_scale.exp()[None, :, None, None] * (qn @ kn.transpose(-1, -2))
    allowed = mem.valid(state)[:, None, None, :] if keep is None else keep
    return logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ state.v


def test_topk_equal_to_store_is_dense_attention_over_the_store():
    gen = torch.Generator().manual_seed(0)
    mem = MemorizingMemory(H, DH, store=6, topk=6)
    with torch.no_grad():
        mem.log_scale.copy_(torch.tensor([0.3, -0.2]))
    for lengths in ((4,), (4, 5)):  # partly filled (2 invalid slots), then full with eviction
        state = filled(mem, gen, lengths)
        q = torch.randn(B, H, 3, DH, generator=gen)
        read = mem.read(state, SegmentView(None, q, None, None))
        torch.testing.assert_close(read.heads, dense(mem, state, q), rtol=1e-5, atol=1e-6)


def test_topk_attends_over_exactly_the_k_nearest_stored_keys():
    gen = torch.Generator().manual_seed(1)
    mem = MemorizingMemory(H, DH, store=8, topk=3)
    state = filled(mem, gen, (5, 5))
    q = torch.randn(B, H, 4, DH, generator=gen)
    sim = F.normalize(q, dim=-1) @ state.k.transpose(-1, -2)  # (B, H, n, S) cosine, all 8 slots valid
    keep = torch.zeros_like(sim, dtype=torch.bool)
    for idx in torch.cartesian_prod(*(torch.arange(s) for s in sim.shape[:3])):
        b, h, i = idx.tolist()
        order = sorted(range(8), key=lambda j: -sim[b, h, i, j].item())
        keep[b, h, i, order[:3]] = True
    got = mem.read(state, SegmentView(None, q, None, None)).heads
    torch.testing.assert_close(got, dense(mem, state, q, keep), rtol=1e-5, atol=1e-6)


def test_store_is_a_fifo_of_the_last_entries_without_gradient():
    gen = torch.Generator().manual_seed(2)
    mem, state, ks, vs = MemorizingMemory(H, DH, store=7, topk=2), None, [], []
    state = mem.empty(B, "cpu")
    for l in (3, 3, 3):
        seg = view(gen, l, grad=True)
        state = mem.write(state, seg)
        ks.append(F.normalize(seg.k.detach(), dim=-1))
        vs.append(seg.v.detach())
    assert not state.k.requires_grad and not state.v.requires_grad
    assert state.n.tolist() == [7, 7]
    torch.testing.assert_close(state.k, torch.cat(ks, dim=2)[:, :, -7:], rtol=0, atol=0)
    torch.testing.assert_close(state.v, torch.cat(vs, dim=2)[:, :, -7:], rtol=0, atol=0)
    torch.testing.assert_close(state.k.norm(dim=-1), torch.ones(B, H, 7))
    assert mem.numel(state) == 2 * 7 * H * DH


def test_gate_mixes_per_head_before_the_output_projection():
    gen = torch.Generator().manual_seed(3)
    attn = Attention(H * DH, H)
    with torch.no_grad():
        attn.wo.weight.copy_(torch.eye(H * DH))  # read the per-head outputs directly
    q, k, v = (torch.randn(B, H, 5, DH, generator=gen) for _ in range(3))
    heads = torch.randn(B, H, 5, DH, generator=gen)
    gate = torch.tensor([0.25, 0.9])[None, :, None, None]
    local = attn.output(q, k, v, Read(), 0)
    mixed = attn.output(q, k, v, Read(heads=heads, gate=gate), 0)
    expected = gate * heads + (1 - gate) * local.view(B, 5, H, DH).transpose(1, 2)  # (B, H, n, d)
    torch.testing.assert_close(mixed, expected.transpose(1, 2).reshape(B, 5, H * DH), rtol=1e-5, atol=1e-6)


def test_empty_store_reads_local_attention_only_and_gate_starts_at_half():
    mem = REGISTRY["memorizing"](H, DH, store=4, topk=2)
    gen = torch.Generator().manual_seed(4)
    state = filled(mem, gen, (3,))
    state = mem.reset(state, torch.tensor([True, False]))
    read = mem.read(state, view(gen, 2))
    assert read.gate[:, :, 0, 0].tolist() == [[0.0, 0.0], [0.5, 0.5]]
    assert torch.isfinite(read.heads).all() and state.n.tolist() == [0, 3]
    # on a model: the first segment (empty store) equals the same weights without memory
    mems = {1: mem}
    m = Decoder(DecoderShape(37, H * DH, 2, H, 12, 5), mems)
    init_weights(m, seed=0)
    none = Decoder(DecoderShape(37, H * DH, 2, H, 12, 5), {1: REGISTRY["none"](H, DH)})
    none.load_state_dict(m.state_dict(), strict=False)
    toks = torch.randint(0, 37, (B, 5), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(m(toks, m.empty_states(B, "cpu"))[0], none(toks, none.empty_states(B, "cpu"))[0])


def test_retrieval_logits_carry_gradient_to_queries_and_parameters():
    mem = MemorizingMemory(H, DH, store=5, topk=2)
    gen = torch.Generator().manual_seed(5)
    state = filled(mem, gen, (5,))
    q = torch.randn(B, H, 3, DH, generator=gen, requires_grad=True)
    read = mem.read(state, SegmentView(None, q, None, None))
    (read.heads.square().sum() + read.gate.sum()).backward()
    assert q.grad.abs().sum() > 0 and mem.log_scale.grad.abs().sum() > 0 and mem.gate_bias.grad.abs().sum() > 0


@pytest.mark.parametrize("options,match", [({"store": 0, "topk": 1}, "store"), ({"store": 4, "topk": 0}, "topk"),
                                           ({"store": 4, "topk": 5}, "exceeds")])
def test_bad_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        MemorizingMemory(H, DH, **options)
