"""Eval metrics from closed forms, the scoring loop against a per-document reference, and the
`elastic eval` command on a tiny trained run."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elastic_cli.evaluate import Tally, bits_per_byte, perplexity, score
from elastic_cli.memory import REGISTRY
from elastic_cli.model.decoder import Decoder
from elastic_cli.model.init import init_weights


def test_perplexity_and_bits_per_byte_closed_forms():
    assert perplexity(7 * math.log(13), 7) == pytest.approx(13)
    # a uniform byte model (256 choices per byte, one token per byte) costs exactly 8 bits per byte
    assert bits_per_byte(100 * math.log(256), 100) == pytest.approx(8.0)
    # 3 tokens of 2 nats each over 12 bytes: 6 / (12 ln 2) bits per byte
    assert bits_per_byte(6.0, 12) == pytest.approx(6 / (12 * math.log(2)))


class Successor:
    """Predicts token+1 (mod V) with logit c, but only once its memory (tokens read) is non-empty;
    before that, uniform logits. Closed-form NLLs: ln V, or with c = ln(V-1): ln 2 (hit), ln(2(V-1)) (miss)."""

    def __init__(self, vocab, segment_len):
        self.V, self.segment_len, self.c = vocab, segment_len, math.log(vocab - 1)

    def empty_states(self, batch, device):
        return (torch.zeros(batch, dtype=torch.long, device=device),)

    def __call__(self, tokens, states):
        (seen,) = states
        logits = torch.zeros(*tokens.shape, self.V)
        hit = F.one_hot((tokens + 1) % self.V, self.V).float() * self.c
        logits += hit * (seen > 0).float()[:, None, None]
        return logits, (seen + tokens.shape[1],)


def test_score_closed_form_segments_reset_and_exact_match():
    V, L = 10, 4
    a = np.arange(10)  # every next token is token+1: hits once memory is non-empty
    b = np.full(6, 5)  # next token is always 5, the model predicts 6: misses
    answers = [(5, 8), (2, 4)]  # a's answer lies in segment 1 (argmax right); b's in segment 0 (uniform: argmax 0)
    for batch in (1, 2):
        t = score(Successor(V, L), [a, b], answers, batch, torch.device("cpu"))
        ln2, miss = math.log(2), math.log(2 * (V - 1))
        # segment 0: 4 + 4 targets at ln V; segment 1: a's 4 hits + b's 1 miss; segment 2: a's last target
        assert t.seg_tokens == [8, 5, 1]
        assert t.loss_by_segment() == pytest.approx([math.log(V), (4 * ln2 + miss) / 5, ln2])
        assert t.tokens == 14 and t.nll == pytest.approx(8 * math.log(V) + 5 * ln2 + miss)
        assert (t.answers, t.exact) == (2, 1)


def test_tally_skips_masked_tokens():
    t = Tally()
    nll = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    t.add_segment(1, nll, nll < 50)
    assert (t.nll, t.tokens, t.seg_tokens, t.loss_by_segment()) == (6.0, 3, [0, 3], [None, 2.0])


def test_score_of_batched_documents_equals_one_document_at_a_time():
    V, D, SEG = 29, 16, 5
    mems = {i: REGISTRY["elastic"](2, D // 2, order=6, samples=4) for i in range(2)}
    m = Decoder(V, D, 2, 2, 24, SEG, mems).eval()
    init_weights(m, seed=1)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, V, n) for n in (3, 17, 11, 5, 23)]
    got = score(m, docs, [None] * 5, 3, torch.device("cpu"))
    nll, per_seg = 0.0, {}
    with torch.no_grad():
        for d in docs:
            x = torch.from_numpy(d)[None]
            states = m.empty_states(1, "cpu")
            for s in range(0, len(d), SEG):
                logits, states = m(x[:, s : s + SEG], states)
                tgt = x[0, s + 1 : s + SEG + 1]
                lp = -torch.log_softmax(logits[0, : len(tgt)].double(), -1)[torch.arange(len(tgt)), tgt]
                nll += lp.sum().item()
                per_seg.setdefault(s // SEG, []).extend(lp.tolist())
    assert got.tokens == sum(len(d) - 1 for d in docs)
    assert got.nll == pytest.approx(nll, rel=1e-5)
    assert got.loss_by_segment() == pytest.approx([np.mean(per_seg[i]) for i in sorted(per_seg)], rel=1e-5)
