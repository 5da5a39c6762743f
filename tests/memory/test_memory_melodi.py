"""MELODI memory (`melodi`): token mixing closed forms, the long-term FIFO, the gated long read."""
import math

import pytest
import torch

from elastic_cli.memory.base import SegmentView
from elastic_cli.memory.melodi import MelodiMemory
from elastic_cli.model.decoder import Decoder
from elastic_cli.model.init import init_weights

B, H, DH, W, S, U, L, C = 2, 2, 4, 5, 3, 2, 2, 5


def memory(long_layer=True, seed=0):
    mem = MelodiMemory(H, DH, window=W, short_tokens=S, summary_tokens=U, long_layer=long_layer,
                       long_tokens=L, long_store=C)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mem.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return mem


def view(gen, l=W):
    q, k, v = (torch.randn(B, H, l, DH, generator=gen) for _ in range(3))
    return SegmentView(torch.zeros(B, l, H * DH), q, k, v)


def test_token_mixing_shapes_and_closed_form():
    mem, gen = memory(), torch.Generator().manual_seed(1)
    assert mem.mix_short.shape == (S, S + W) and mem.mix_summary.shape == (U, W) and mem.mix_long.shape == (L, W)
    state = mem.empty(B, "cpu")
    for l in (W, W, 3):  # the last window is partial: the first l columns of the maps
        seg = view(gen, l)
        new = mem.write(state, seg)
        for x, z, zn, un in ((seg.k, state.zk, new.zk, new.uk), (seg.v, state.zv, new.zv, new.uv)):
            for b in range(B):
                for h in range(H):  # z_k = A_z[:, :S] z_{k-1} + A_z[:, S:S+l] X_k,  u_k = A_u[:, :l] X_k
                    expected = mem.mix_short[:, :S] @ z[b, h] + mem.mix_short[:, S : S + l] @ x[b, h]
                    torch.testing.assert_close(zn[b, h], expected, rtol=1e-5, atol=1e-6)
                    torch.testing.assert_close(un[b, h], mem.mix_summary[:, :l] @ x[b, h], rtol=1e-5, atol=1e-6)
        assert new.zk.shape == (B, H, S, DH) and new.uk.shape == (B, H, U, DH) and new.lk.shape == (B, H, C, DH)
        state = new
    assert state.t.tolist() == [2 * W + 3] * B
    with pytest.raises(ValueError, match="exceeds window"):
        mem.write(state, view(gen, W + 1))


def test_long_term_fifo_evicts_oldest_first():
    mem, gen = memory(), torch.Generator().manual_seed(2)
    state, incs = mem.empty(B, "cpu"), []
    for step in range(4):
        seg = view(gen)
        state = mem.write(state, seg)
        incs.append(torch.einsum("lw,bhwd->bhld", mem.mix_long, seg.k))  # m_k = A_m X_k, (B, H, L, d)
        assert state.n.tolist() == [min(L * (step + 1), C)] * B
    # 4 increments of 2 = 8 entries; the store keeps the newest 5, oldest first
    torch.testing.assert_close(state.lk, torch.cat(incs, dim=2)[:, :, -C:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.lk[:, :, -L:], torch.einsum("lw,bhwd->bhld", mem.mix_long, seg.k))


def test_read_short_memory_positions_and_gated_long_cross_attention():
    mem, gen = memory(), torch.Generator().manual_seed(3)
    state = mem.write(mem.empty(B, "cpu"), view(gen))  # 2 of 5 long entries live
    state = mem.reset(state, torch.tensor([False, True]))
    q = torch.randn(B, H, 4, DH, generator=gen)
    read = mem.read(state, SegmentView(None, q, None, None))
    torch.testing.assert_close(read.k, torch.cat([state.zk, state.uk], dim=2))
    assert read.pos.tolist() == list(range(-(S + U), 0))
    assert read.valid.tolist() == [[True] * (S + U), [False] * (S + U)]
    # row 0: softmax over the 2 live long entries, no positions; gate sigmoid(a) per head and channel
    logits = q[0] @ state.lk[0, :, -2:].transpose(-1, -2) / math.sqrt(DH)  # (H, n, 2)
    torch.testing.assert_close(read.heads[0], logits.softmax(-1) @ state.lv[0, :, -2:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(read.gate[0, :, 0], torch.sigmoid(mem.long_gate))
    assert (read.gate[1] == 0).all() and torch.isfinite(read.heads).all()  # empty row: local only


def test_short_layer_has_no_long_memory():
    mem = memory(long_layer=False)
    state = mem.write(mem.empty(B, "cpu"), view(torch.Generator().manual_seed(4)))
    read = mem.read(state, None)
    assert read.heads is None and state.lk.shape[2] == 0 and not hasattr(mem, "mix_long")
    assert mem.numel(state) == 2 * H * DH * (S + U)
    assert memory().numel(state) == 2 * H * DH * (S + U + C)


def test_gradient_flows_through_the_recurrence():
    mems = {i: MelodiMemory(H, DH, window=W, short_tokens=S, summary_tokens=U, long_layer=i == 0,
                            long_tokens=L, long_store=C) for i in range(2)}
    model = Decoder(37, H * DH, 2, H, 16, W, mems)
    init_weights(model, seed=0)
    toks = torch.randint(0, 37, (B, 3 * W), generator=torch.Generator().manual_seed(5))
    states = model.empty_states(B, "cpu")
    _, after0 = model(toks[:, :W], states)
    _, states = model(toks[:, W : 2 * W], after0)
    logits, _ = model(toks[:, 2 * W :], states)
    grads = torch.autograd.grad(logits.square().sum(), (after0[0].zk, after0[0].lk))
    assert all(g.abs().sum() > 0 for g in grads)  # segment 0's memories reach segment 2's output


@pytest.mark.parametrize("options,match", [
    ({"window": 0, "short_tokens": 2}, "window"),
    ({"window": 4, "short_tokens": 0}, "short_tokens"),
    ({"window": 4, "short_tokens": 2, "summary_tokens": -1}, "summary_tokens"),
    ({"window": 4, "short_tokens": 2, "long_layer": True, "long_tokens": 3, "long_store": 2}, "long_tokens"),
    ({"window": 4, "short_tokens": 2, "long_layer": True}, "long_tokens"),
])
def test_bad_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        MelodiMemory(H, DH, **options)
