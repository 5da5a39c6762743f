"""The memory contract as checks of one registered kind on a tiny decoder (a helper module, not tests):
batch rows independent, segments equal streaming (teacher forcing), reset at document start, numel =
floats of the state, fast attention equals the reference path, a few Adam steps lower the loss, bf16
autocast keeps float states fp32. tests/memory/test_memory_contract.py runs them for every kind,
tests/memory/test_new_kind.py for a kind from outside the package."""

import torch
import torch.nn.functional as F

from elastic_cli.memory import REGISTRY, LayerContext
from elastic_cli.memory import options as memory_options
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights
from tests.helpers.memory_checks import D, HEADS, HIDDEN, LAYERS, SEG, V, by_segments, by_steps, check_fast_equals_reference, tokens

# constructor options per kind and layer, chosen to reach interesting paths; a kind not listed is
# built from its declared Options' defaults
OPTIONS = {
    "none": lambda layer: {},
    "elastic": lambda layer: {"order": 8, "samples": 5, "schedule": "exponential"},
    "xl": lambda layer: {"cache": 9},  # more than one segment
    "memorizing": lambda layer: {"store": 10, "topk": 3},
    "melodi": lambda layer: {"window": SEG, "short_tokens": 3, "summary_tokens": 2, "long_layer": layer == 1, "first": layer == 0,
                             "long_tokens": 2, "long_store": 5},
    "infinity": lambda layer: {"basis": 8, "resample": 12, "sticky": True},
    "armt": lambda layer: {"tokens": 2, "key_dim": 4},
    "caching": lambda layer: {"base": "infinity", "aggregate": "sparse", "top_k": 1, "max_caches": 2, "basis": 8,
                              "resample": 12},
    "rmt": lambda layer: {"tokens": 2},
}
KINDS = sorted(REGISTRY)
# options that change a kind's state or read: name -> (kind, options per layer); checked like the kinds
# (test_memory_contract_options.py)
VARIANTS = {
    "armt-raw-features": ("armt", lambda layer: {**OPTIONS["armt"](layer), "l2": False}),
    "infinity-stm": ("infinity", lambda layer: {**OPTIONS["infinity"](layer), "stm": 4, "sticky": False}),
    "infinity-stm-detached": ("infinity", lambda layer: {**OPTIONS["infinity"](layer), "stm": 9, "detach": True}),
    "memorizing-xl-cache": ("memorizing", lambda layer: {**OPTIONS["memorizing"](layer), "cache": 8}),
    "melodi-no-summary": ("melodi", lambda layer: {**OPTIONS["melodi"](layer), "summary_tokens": 0}),
    "caching-armt-soup": ("caching", lambda layer: {"base": "armt", "aggregate": "soup", "max_caches": 2,
                                                    "tokens": 2, "key_dim": 4}),
}


def options(kind, layer):
    if kind in OPTIONS:
        return OPTIONS[kind](layer)
    return memory_options.validate({"kind": kind}).memory_kwargs(LayerContext(layer, tuple(range(LAYERS)), LAYERS, SEG))


def build(kind, seed=0):
    """A tiny decoder with `kind` on every layer; a VARIANTS name adds its options to the kind's."""
    kind, opts = VARIANTS.get(kind, (kind, lambda layer: options(kind, layer)))
    memories = {i: REGISTRY[kind](HEADS, D // HEADS, **opts(i)) for i in range(LAYERS)}
    model = Decoder(DecoderShape(V, D, LAYERS, HEADS, HIDDEN, SEG), memories)
    init_weights(model, seed=seed)
    return model


def leaves_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def batch_rows_are_independent(kind):
    model = build(kind)
    a, b = tokens(1, 3 * SEG, seed=2), tokens(1, 3 * SEG, seed=3)
    with torch.no_grad():
        both, _ = by_segments(model, torch.cat([a, b]))
        torch.testing.assert_close(both[0:1], by_segments(model, a)[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(both[1:2], by_segments(model, b)[0], rtol=0, atol=1e-5)


def segments_equal_streaming_generation(kind):
    model = build(kind)
    toks = tokens(2, 3 * SEG + 2, seed=1)
    with torch.no_grad():
        expected, _ = by_segments(model, toks)
        steps, stream = by_steps(model, toks)  # teacher forcing, one token at a time
        chunked, _ = model.step(toks[:, : 2 * SEG - 1], model.start_stream(2, "cpu"))
        ragged = model.step(toks[:, SEG + 2 :], model.step(toks[:, : SEG + 2], model.start_stream(2, "cpu"))[1])[0]
    torch.testing.assert_close(steps, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, expected[:, : 2 * SEG - 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(ragged, expected[:, SEG + 2 :], rtol=0, atol=1e-5)
    assert stream.pos == 2


def reset_at_document_start(kind):
    model = build(kind)
    a, b = tokens(2, 2 * SEG, seed=4), tokens(2, SEG, seed=5)
    with torch.no_grad():
        _, states = by_segments(model, a)
        reset = model.reset_states(states, torch.tensor([False, True]))
        empty = model.empty_states(2, "cpu")
        for old, new, fresh in zip(states, reset, empty):
            assert leaves_equal([x[0] for x in new], [x[0] for x in old])  # row 0 untouched
            assert leaves_equal([x[1] for x in new], [x[1] for x in fresh])  # row 1 empty
        out, _ = model(b, reset)
        torch.testing.assert_close(out[1], model(b[1:], model.empty_states(1, "cpu"))[0][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(out[0], model(b[:1], tuple(type(s)(*(x[:1] for x in s)) for s in states))[0][0],
                                   rtol=0, atol=1e-5)


def numel_counts_the_floats_of_the_state(kind):
    model = build(kind)
    for batch in (1, 3):
        _, states = by_segments(model, tokens(batch, 2 * SEG, seed=6))
        floats = sum(leaf.numel() // batch for s in states for leaf in s if leaf.is_floating_point())
        assert model.numel(states) == floats
        assert all(leaf.shape[0] == batch for s in states for leaf in s)
    if kind != "none":
        assert model.numel(states) > 0


def fast_attention_equals_reference(kind):
    model = build(kind)
    check_fast_equals_reference(model, tokens(2, 3 * SEG, seed=7))


def a_few_adam_steps_lower_the_loss(kind):
    torch.manual_seed(0)
    model = build(kind, seed=1)
    toks = tokens(2, 3 * SEG + 1, seed=8)
    inputs, targets = toks[:, :-1], toks[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, reached = [], set()
    for step in range(12):
        logits, _ = by_segments(model, inputs)
        loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        reached |= {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        if step == 1:  # every memory parameter is on the gradient path by the second step (a zero-initialised
            #            value projection, as ARMT's W_v, opens the others after one update)
            missing = [name for name, _p in model.named_parameters() if ".memory." in name and name not in reached]
            assert not missing, missing
        opt.step()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def bf16_autocast_keeps_float_states_fp32(kind):
    model = build(kind)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, states = by_segments(model, tokens(2, 2 * SEG + 1, seed=9))
        stream = model.step(tokens(2, SEG + 1, seed=10), model.start_stream(2, "cpu"))[1]
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    for leaf in [x for s in states + stream.states for x in s]:
        assert leaf.dtype in (torch.float32, torch.long)


CHECKS = (batch_rows_are_independent, segments_equal_streaming_generation, reset_at_document_start, numel_counts_the_floats_of_the_state, fast_attention_equals_reference, a_few_adam_steps_lower_the_loss, bf16_autocast_keeps_float_states_fp32)
