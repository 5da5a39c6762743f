"""MELODI memory (`melodi`): token mixing closed forms over the window and its learned summary tokens,
the long-term FIFO, the gated long read, summary tokens that attend within the window."""
import math

import pytest
import torch

from elastic_cli.memory.base import SegmentView
from elastic_cli.memory.melodi import MelodiMemory
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights
from tests.helpers.memory_checks import check_rows_and_reset, check_streaming

B, H, DH, W, S, U, L, C = 2, 2, 4, 6, 3, 2, 2, 5  # W = memory_checks.SEG


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
    return SegmentView(torch.zeros(B, l, H * DH), q, k, v, slot_kv=torch.randn(B, U, 2, H, DH, generator=gen))


def summary_kv(seg):
    return seg.slot_kv[:, :, 0].transpose(1, 2), seg.slot_kv[:, :, 1].transpose(1, 2)  # (B, H, U, d) each


def test_token_mixing_closed_form_over_memory_window_and_summary_tokens():
    mem, gen = memory(), torch.Generator().manual_seed(1)
    assert mem.mix_short.shape == (S, S + W + U) and mem.mix_long.shape == (L, W + U)
    assert mem.summary_embed.shape == (U, H * DH) and mem.slot_counts() == (0, U)
    state = mem.empty(B, "cpu")
    for l in (W, W, 3):  # the last window is partial: the first l window columns
        seg = view(gen, l)
        new = mem.write(state, seg)
        for x, u, z, zn in ((seg.k, summary_kv(seg)[0], state.zk, new.zk), (seg.v, summary_kv(seg)[1], state.zv, new.zv)):
            for b in range(B):
                for h in range(H):  # z_k = A_z[:, :S] z_{k-1} + A_z[:, S:S+l] X_k + A_z[:, S+W:] U_k
                    expected = (mem.mix_short[:, :S] @ z[b, h] + mem.mix_short[:, S : S + l] @ x[b, h]
                                + mem.mix_short[:, S + W :] @ u[b, h])
                    torch.testing.assert_close(zn[b, h], expected, rtol=1e-5, atol=1e-6)
        assert new.zk.shape == (B, H, S, DH) and new.lk.shape == (B, H, C, DH)
        state = new
    assert state.t.tolist() == [2 * W + 3] * B
    with pytest.raises(ValueError, match="exceeds window"):
        mem.write(state, view(gen, W + 1))
    with pytest.raises(ValueError, match="slot_kv"):
        mem.write(state, view(gen)._replace(slot_kv=None))


def test_long_term_fifo_evicts_oldest_first():
    mem, gen = memory(), torch.Generator().manual_seed(2)
    state, incs = mem.empty(B, "cpu"), []
    for step in range(4):
        seg = view(gen)
        state = mem.write(state, seg)
        uk = summary_kv(seg)[0]  # m_k = A_m [X_k ; U_k], (B, H, L, d)
        incs.append(torch.einsum("lw,bhwd->bhld", mem.mix_long, torch.cat([seg.k, uk], dim=2)))
        assert state.n.tolist() == [min(L * (step + 1), C)] * B
    # 4 increments of 2 = 8 entries; the store keeps the newest 5, oldest first
    torch.testing.assert_close(state.lk, torch.cat(incs, dim=2)[:, :, -C:], rtol=1e-5, atol=1e-6)


def test_read_short_memory_positions_and_gated_long_cross_attention():
    mem, gen = memory(), torch.Generator().manual_seed(3)
    state = mem.write(mem.empty(B, "cpu"), view(gen))  # 2 of 5 long entries live
    state = mem.reset(state, torch.tensor([False, True]))
    q = torch.randn(B, H, 4, DH, generator=gen)
    read = mem.read(state, SegmentView(None, q, None, None))
    torch.testing.assert_close(read.k, state.zk)
    assert read.pos.tolist() == list(range(-S, 0))
    assert read.valid.tolist() == [[True] * S, [False] * S]
    # row 0: softmax over the 2 live long entries, no positions; gate sigmoid(a) per head and channel
    logits = q[0] @ state.lk[0, :, -2:].transpose(-1, -2) / math.sqrt(DH)  # (H, n, 2)
    torch.testing.assert_close(read.heads[0], logits.softmax(-1) @ state.lv[0, :, -2:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(read.gate[0, :, 0], torch.sigmoid(mem.long_gate))
    assert (read.gate[1] == 0).all() and torch.isfinite(read.heads).all()  # empty row: local only


def test_short_layer_has_no_long_memory_and_only_the_lowest_layer_injects():
    mem = memory(long_layer=False)
    state = mem.write(mem.empty(B, "cpu"), view(torch.Generator().manual_seed(4)))
    read = mem.read(state, None)
    assert read.heads is None and state.lk.shape[2] == 0 and not hasattr(mem, "mix_long")
    assert mem.numel(state) == 2 * H * DH * S  # the summary tokens are part of the window, not the state
    assert memory().numel(state) == 2 * H * DH * (S + C)
    upper = MelodiMemory(H, DH, window=W, short_tokens=S, summary_tokens=U, first=False)
    assert not hasattr(upper, "summary_embed") and upper.inject(None, B) == (None, None)
    assert upper.slot_counts() == (0, U)  # its layer still mixes the summary rows that pass through it


def decoder(summary=U, seed=0):
    mems = {i: MelodiMemory(H, DH, window=W, short_tokens=S, summary_tokens=summary, long_layer=i == 0,
                            long_tokens=L, long_store=C, first=i == 0) for i in range(2)}
    model = Decoder(DecoderShape(37, H * DH, 2, H, 16, W), mems)
    init_weights(model, seed=seed)
    return model


def test_gradient_flows_through_the_recurrence():
    model = decoder()
    toks = torch.randint(0, 37, (B, 3 * W), generator=torch.Generator().manual_seed(5))
    states = model.empty_states(B, "cpu")
    _, after0 = model(toks[:, :W], states)
    _, states = model(toks[:, W : 2 * W], after0)
    logits, _ = model(toks[:, 2 * W :], states)
    grads = torch.autograd.grad(logits.square().sum(), (after0[0].zk, after0[0].lk, model.blocks[0].memory.summary_embed))
    assert all(g.abs().sum() > 0 for g in grads)  # segment 0's memories (and the summary tokens) reach segment 2


def test_summary_tokens_attend_within_the_window_and_tokens_never_see_them():
    model = decoder()
    with torch.no_grad():
        for i in range(2):  # memory = A_zu U_k only: what enters it is what the summary tokens took from the window
            model.blocks[i].memory.mix_short[:, : S + W].zero_()
            model.blocks[i].memory.mix_long[:, :W].zero_() if i == 0 else None
        a = torch.randint(0, 37, (1, W), generator=torch.Generator().manual_seed(6))
        b = a.clone()
        b[0, 1] = (b[0, 1] + 1) % 37  # one token of the window changed
        la, sa = model(a, model.empty_states(1, "cpu"))
        lb, sb = model(b, model.empty_states(1, "cpu"))
        assert (sa[1].zk - sb[1].zk).abs().max() > 1e-6  # the summary tokens read the window's content
        model.blocks[0].memory.summary_embed.add_(1.0)  # other summary tokens: the window's logits do not move
        lc, sc = model(a, model.empty_states(1, "cpu"))
    torch.testing.assert_close(lc, la, rtol=0, atol=0)
    assert (sc[1].zk - sa[1].zk).abs().max() > 1e-6


def test_decoder_streaming_rows_reset():
    model = decoder(seed=1)
    with torch.no_grad():  # large mixing maps and summary tokens, so the memory changes the logits
        for name, p in model.named_parameters():
            if ".memory." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.5)
    assert (model.front, model.back) == (0, U)
    check_streaming(model)
    check_rows_and_reset(model)


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
