"""Memory Caching: residual/gated/soup/sparse over cached base states; FIFO cap; decoder checks."""
import pytest
import torch

from elastic_cli.memory import REGISTRY
from elastic_cli.memory.base import SegmentView
from tests.helpers.memory_checks import D, HEADS, build, check_rows_and_reset, check_streaming, check_training

ARMT = {"base": "armt", "tokens": 2, "key_dim": 4}
INF = {"base": "infinity", "basis": 8, "resample": 12}


def segments(count, b=2, l=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        q = torch.randn(b, HEADS, l, D // HEADS, generator=gen)
        out.append(SegmentView(torch.randn(b, l, D, generator=gen), q, torch.randn_like(q), torch.randn_like(q),
                               slots=torch.randn(b, 2, D, generator=gen)))
    return out


def make(seed=0, **options):
    mem = REGISTRY["caching"](HEADS, D // HEADS, **options)
    gen = torch.Generator().manual_seed(seed)
    for p in mem.parameters():
        torch.nn.init.normal_(p, std=0.3, generator=gen)
    return mem


def run(mem, segs, b=2):
    state = mem.empty(b, "cpu")
    for seg in segs:
        state = mem.write(state, seg)
    return state


def base_states(base, segs, b=2):
    states, state = [], base.empty(b, "cpu")
    for seg in segs:
        state = base.write(state, seg)
        states.append(state)
    return states


@pytest.mark.parametrize("options", [ARMT, INF])
def test_residual_over_one_cache_is_the_sum_of_two_reads(options):
    mem = make(aggregate="residual", max_caches=1, **options)
    segs, probe = segments(3), segments(1, seed=9)[0]
    s1, s2, s3 = base_states(mem.base, segs)

    def base_read(s):
        return mem.base.pre(s, probe.x) if options["base"] == "armt" else mem.base.read(s, probe).out

    def read(state):
        return mem.pre(state, probe.x) if options["base"] == "armt" else mem.read(state, probe).out

    with torch.no_grad():
        torch.testing.assert_close(read(run(mem, segs[:1])), base_read(s1))  # the cache slot is still empty
        torch.testing.assert_close(read(run(mem, segs[:2])), base_read(s2) + base_read(s1))
        torch.testing.assert_close(read(run(mem, segs)), base_read(s3) + base_read(s2))  # FIFO: s1 dropped


def test_fifo_keeps_the_newest_states_in_order():
    mem = make(aggregate="gated", max_caches=2, **ARMT)
    segs = segments(4)
    states = base_states(mem.base, segs)
    state = run(mem, segs)
    torch.testing.assert_close(mem.online(state).a, states[3].a)
    torch.testing.assert_close(mem.cached(state).a, torch.stack([states[1].a, states[2].a], dim=1))
    assert mem.valid(state).all() and state.count.tolist() == [4, 4]
    assert mem.valid(run(mem, segs[:2])).tolist() == [[False, True]] * 2
    means = [(s.x * torch.rsqrt(s.x.pow(2).mean(-1, keepdim=True) + 1e-6)).mean(1) for s in segs]
    torch.testing.assert_close(state.desc, torch.stack([means[3], means[1], means[2]], dim=1))
    assert mem.numel(state) == 3 * (mem.base.numel(mem.online(state)) + D)


def test_soup_equals_gated_for_a_linear_read_and_differs_otherwise():
    segs, probe = segments(3), segments(1, seed=8)[0]
    for denom, equal in ((False, True), (True, False)):
        gated = make(aggregate="gated", max_caches=2, denom=denom, **ARMT)
        soup = make(aggregate="soup", max_caches=2, denom=denom, **ARMT)
        soup.load_state_dict(gated.state_dict())
        with torch.no_grad():
            a, b = gated.pre(run(gated, segs), probe.x), soup.pre(run(soup, segs), probe.x)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5) == equal


def test_gated_weights_are_a_softmax_and_sparse_keeps_top_k():
    segs, probe = segments(4), segments(1, seed=7)[0]
    gated = make(aggregate="gated", max_caches=3, **INF)
    sparse = make(aggregate="sparse", max_caches=3, top_k=1, **INF)
    sparse.load_state_dict(gated.state_dict())
    with torch.no_grad():
        state = run(gated, segs)
        w = gated.weights(state, probe.x)  # (B, n, 4)
        u = gated.router(probe.x * torch.rsqrt(probe.x.pow(2).mean(-1, keepdim=True) + 1e-6))
        torch.testing.assert_close(w, (u @ state.desc.transpose(1, 2) / D**0.5).softmax(-1))
        ws = sparse.weights(state, probe.x)
        assert ((ws > 0).sum(-1) == 2).all() and (ws[..., 0] > 0).all()  # online + the best cache
        assert torch.equal(ws[..., 1:].argmax(-1), w[..., 1:].argmax(-1))
        # the top cache's share is renormalised over the kept pair
        top = w[..., 1:].max(-1).values
        torch.testing.assert_close(ws[..., 1:].max(-1).values, top / (top + w[..., 0]))
        wide = make(aggregate="sparse", max_caches=3, top_k=3, **INF)
        wide.load_state_dict(gated.state_dict())
        torch.testing.assert_close(wide.read(state, probe).out, gated.read(state, probe).out)


def test_elastic_residual_joins_all_samples_in_one_softmax():
    mem = make(base="elastic", aggregate="residual", max_caches=2, order=4, samples=3)
    segs = segments(2)
    s1, s2 = base_states(mem.base, segs)
    read = mem.read(run(mem, segs), segs[0])
    assert read.k.shape == (2, HEADS, 9, D // HEADS)
    torch.testing.assert_close(read.k[:, :, :3], mem.base.read(s2, None).k)
    torch.testing.assert_close(read.v[:, :, 6:], mem.base.read(s1, None).v)
    assert read.valid[:, :3].all() and not read.valid[:, 3:6].any() and read.valid[:, 6:].all()


def test_decoder_streaming_rows_reset():
    for options in ({"aggregate": "gated", **ARMT}, {"aggregate": "sparse", "top_k": 1, **INF, "sticky": True},
                    {"aggregate": "soup", **INF}, {"base": "elastic", "aggregate": "residual", "order": 4, "samples": 3}):
        model = build("caching", max_caches=2, boost=10.0, **options)
        check_streaming(model, atol=2e-5)
        check_rows_and_reset(model, atol=2e-5)


@pytest.mark.slow
def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    check_training(build("caching", max_caches=2, aggregate="gated", **ARMT))


def test_bad_options_are_rejected():
    for opts, msg in (({"base": "rmt"}, "base must be"), ({"aggregate": "mean"}, "aggregate"),
                      ({"base": "elastic", "aggregate": "gated", "order": 4, "samples": 3}, "only aggregate=residual"),
                      ({"max_caches": 0}, ">= 1"), ({"base": "armt", "colour": 1}, "colour")):
        with pytest.raises(ValueError, match=msg):
            REGISTRY["caching"](HEADS, D // HEADS, **opts)
