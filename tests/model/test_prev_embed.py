"""model.prev_embed: x_i = E[t_i] + P[t_{i-1}] inside a segment. Checked against the formula, against
the plain model (P = 0 changes nothing), and streaming (token by token, ragged chunks) against the
segment forward."""
from __future__ import annotations

import pytest
import torch

from elastic_cli.memory import REGISTRY
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights

V, D, SEG = 37, 16, 8


def model(prev: bool, kind: str = "elastic", scale: float = 1.0) -> Decoder:
    opts = {"elastic": {"order": 6, "samples": 5}, "xl": {"cache": 8}}[kind]
    m = Decoder(DecoderShape(V, D, 2, 2, 32, SEG, prev_embed=prev), {i: REGISTRY[kind](2, D // 2, **opts) for i in range(2)})
    init_weights(m, 5)
    if prev:
        with torch.no_grad():
            m.prev_embed.weight.mul_(scale)
    return m.eval()


def by_segments(m, toks):
    states, out = m.empty_states(toks.shape[0], "cpu"), []
    for s in range(0, toks.shape[1], SEG):
        logits, states = m(toks[:, s:s + SEG], states)
        out.append(logits)
    return torch.cat(out, 1)  # (B, n, V)


def test_embedding_is_the_formula_and_the_first_token_of_a_segment_is_plain():
    m = model(True)
    toks = torch.tensor([[3, 9, 4, 4, 30]])
    e, p = m.embed.weight[toks[0]], m.prev_embed.weight[toks[0]]  # (5, D) each
    x, last = m._embed(toks)
    want = torch.cat([e[:1], e[1:] + p[:-1]])
    torch.testing.assert_close(x[0], want, rtol=0, atol=0)
    assert last.tolist() == [30]
    x2, _ = m._embed(toks[:, 2:], last=toks[:, 1])  # a chunk continuing the segment after token 9
    torch.testing.assert_close(x2[0], want[2:], rtol=0, atol=0)


def test_a_zero_table_is_the_plain_model():
    toks = torch.randint(0, V, (2, 3 * SEG), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(by_segments(model(True, scale=0.0), toks), by_segments(model(False), toks),
                                   rtol=0, atol=0)
        assert (by_segments(model(True), toks) - by_segments(model(False), toks)).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["elastic", "xl"])
@pytest.mark.parametrize("sizes", [[1], [3, 5, 2], [SEG]])
def test_streaming_equals_the_segment_forward(kind, sizes):
    m = model(True, kind, scale=5.0)
    toks = torch.randint(0, V, (2, 3 * SEG + 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = by_segments(m, toks)
        stream, out, i = m.start_stream(2, "cpu"), [], 0
        while i < toks.shape[1]:
            n = sizes[len(out) % len(sizes)]
            logits, stream = m.step(toks[:, i:i + n], stream)
            out.append(logits)
            i += n
    torch.testing.assert_close(torch.cat(out, 1), want, rtol=1e-5, atol=1e-5)
