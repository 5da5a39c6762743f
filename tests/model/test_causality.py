"""Causality for every memory kind, on both paths (the segment forward and streaming `step`, token
by token and in ragged chunks): changing token j changes no logit before j, and (for every kind with
memory) does change logits in a later segment; without memory later segments are untouched."""
from __future__ import annotations

import pytest
import torch

from elastic_cli.build import build_model
from elastic_cli.config import load_config
from elastic_cli.memory import REGISTRY
from elastic_cli.model.init import init_weights
from tests.helpers.eval_run import TINY
from tests.helpers.memory_checks import draw_zero_init

L, SEGMENTS = 16, 4
J = L + 5  # the perturbed token: segment 1, position 5


def model_of(kind: str):
    cfg = load_config(["recipes/tiny.yaml", f"recipes/memory/{kind}.yaml"], TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    init_weights(model, 0)
    draw_zero_init(model)  # ARMT's W_v starts at zero: draw it, so the memory carries the change forward
    return model.eval()


def by_segments(model, toks):
    states, out = model.empty_states(1, "cpu"), []
    for s in range(0, toks.shape[1], L):
        logits, states = model(toks[:, s:s + L], states)  # (1, L, V)
        out.append(logits)
    return torch.cat(out, 1)  # (1, n, V)


def by_chunks(model, toks, sizes):
    stream, out, i = model.start_stream(1, "cpu"), [], 0
    while i < toks.shape[1]:
        n = sizes[len(out) % len(sizes)]
        logits, stream = model.step(toks[:, i:i + n], stream)  # (1, n, V)
        out.append(logits)
        i += n
    return torch.cat(out, 1)  # (1, n, V)


PATHS = {"segments": by_segments, "tokens": lambda m, t: by_chunks(m, t, [1]),
         "ragged": lambda m, t: by_chunks(m, t, [3, 7, 1, 12, 5])}


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_no_logit_sees_a_later_token_and_memory_carries_it_forward(kind):
    model = model_of(kind)
    toks = torch.randint(5, 8000, (1, SEGMENTS * L), generator=torch.Generator().manual_seed(3))
    other = toks.clone()
    other[0, J] = (toks[0, J] + 1234) % 8000
    with torch.no_grad():
        for name, path in PATHS.items():
            a, b = path(model, toks), path(model, other)
            diff = (a - b).abs().amax(-1)[0]  # (n,) largest logit change per position
            assert diff[:J].max() <= 1e-6, (kind, name, diff[:J].max().item())
            assert diff[J] > 1e-4, (kind, name)  # the token itself is read at its own position
            later = diff[(J // L + 1) * L:]  # every position of the later segments
            if kind == "none":
                assert later.max() == 0, (name, later.max().item())
            else:
                assert later.min() > 1e-9, (kind, name, later.min().item())
            if name != "segments":
                torch.testing.assert_close(a, PATHS["segments"](model, toks), rtol=1e-5, atol=1e-5)
