"""Decoder-level checks shared by the comparison-memory tests (tiny CPU model)."""
import torch
import torch.nn.functional as F

from elastic_cli.memory import REGISTRY
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights

V, D, LAYERS, HEADS, HIDDEN, SEG = 37, 16, 2, 2, 24, 6


def build(kind, layers=(0, 1), seed=0, boost=1.0, **options):
    """A tiny decoder; `boost` scales the memory parameters so that memory effects are large at init
    (and, boost != 1, draws the ones that start at zero, such as ARMT's W_v, as N(0, 0.02 boost))."""
    memories = {i: REGISTRY[kind](HEADS, D // HEADS, **options) for i in layers}
    model = Decoder(DecoderShape(V, D, LAYERS, HEADS, HIDDEN, SEG), memories)
    init_weights(model, seed=seed)
    if boost != 1:
        draw_zero_init(model, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".memory." in name:
                p.mul_(boost)
    return model


def draw_zero_init(model, seed=0, std=0.02):
    """Draw the memory parameters that start at zero (a memory's `zero_init`, e.g. ARMT's W_v) as
    N(0, std), so that the memory carries something from the first segment on (tests of what the
    memory does, not of its initialisation)."""
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".memory." in name and p.dim() >= 2 and not p.any():
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def tokens(b, n, seed=0):
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


def by_segments(model, toks, states=None):
    states = model.empty_states(toks.shape[0], "cpu") if states is None else states
    out = []
    for s in range(0, toks.shape[1], SEG):
        logits, states = model(toks[:, s : s + SEG], states)
        out.append(logits)
    return torch.cat(out, dim=1), states


def by_steps(model, toks, device="cpu"):
    """Teacher-forced streaming, one token per Decoder.step: logits (B, n, V) and the final stream."""
    stream, steps = model.start_stream(toks.shape[0], device), []
    for i in range(toks.shape[1]):
        logits, stream = model.step(toks[:, i : i + 1], stream)
        steps.append(logits)
    return torch.cat(steps, dim=1), stream


def check_fast_equals_reference(model, toks):
    """The SDPA fast attention path gives the explicit-softmax reference path's logits."""
    with torch.no_grad():
        fast, _ = by_segments(model, toks)
        for blk in model.blocks:
            blk.attn.reference = True
        slow, _ = by_segments(model, toks)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def check_streaming(model, atol=1e-5):
    """Teacher-forced streaming (token by token and in uneven chunks) equals segment-wise forward."""
    toks = tokens(2, 4 * SEG + 3, seed=1)
    with torch.no_grad():
        expected, _ = by_segments(model, toks)
        steps, _ = by_steps(model, toks)
        stream, chunks = model.start_stream(2, "cpu"), []
        for a, b in ((0, 4), (4, SEG + 5), (SEG + 5, 4 * SEG + 3)):
            logits, stream = model.step(toks[:, a:b], stream)
            chunks.append(logits)
    torch.testing.assert_close(steps, expected, rtol=0, atol=atol)
    torch.testing.assert_close(torch.cat(chunks, dim=1), expected, rtol=0, atol=atol)
    # memory is used: later segments differ from a model whose memory is reset every segment
    with torch.no_grad():
        fresh = torch.cat([model(toks[:, s : s + SEG], model.empty_states(2, "cpu"))[0]
                           for s in range(0, toks.shape[1], SEG)], dim=1)
    assert (fresh[:, SEG:] - expected[:, SEG:]).abs().max() > 1e-4


def check_rows_and_reset(model, atol=1e-5):
    """Batch rows are independent; a reset row behaves like a fresh document, the other is untouched."""
    a, b = tokens(1, 3 * SEG, seed=2), tokens(1, 3 * SEG, seed=3)
    with torch.no_grad():
        both, _ = by_segments(model, torch.cat([a, b]))
        torch.testing.assert_close(both[0:1], by_segments(model, a)[0], rtol=0, atol=atol)
        torch.testing.assert_close(both[1:2], by_segments(model, b)[0], rtol=0, atol=atol)
        _, states = by_segments(model, torch.cat([a, b])[:, : 2 * SEG])
        states = model.reset_states(states, torch.tensor([False, True]))
        rest, _ = by_segments(model, torch.cat([a[:, 2 * SEG :], b[:, :SEG]]), states)
        torch.testing.assert_close(rest[0:1], both[0:1, 2 * SEG :], rtol=0, atol=atol)
        torch.testing.assert_close(rest[1:2], by_segments(model, b[:, :SEG])[0], rtol=0, atol=atol)


def check_training(model, steps=25, lr=1e-2, aux_weight=0.0):
    """A few Adam steps on a fixed batch of 3-segment documents: the loss falls, memory parameters learn."""
    toks = tokens(4, 3 * SEG + 1, seed=4)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        states, loss = model.empty_states(4, "cpu"), 0.0
        for s in range(0, 3 * SEG, SEG):
            logits, states = model(toks[:, s : s + SEG], states)
            loss = loss + F.cross_entropy(logits.reshape(-1, V), toks[:, s + 1 : s + SEG + 1].reshape(-1))
            loss = loss + aux_weight * model.aux_loss(states)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for n, p in model.named_parameters() if ".memory." in n]
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    return losses
