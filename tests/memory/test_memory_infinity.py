"""∞-former: RBF regression, unbounded update, continuous attention, sticky points, KL; decoder checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from elastic_cli.memory import REGISTRY
from elastic_cli.memory.base import SegmentView
from elastic_cli.memory.infinity import (KL_SIGMA0, InfinityMemory, design, gaussian, midpoints, rbf_basis,
                                         regression, sticky_points)
from tests.helpers.memory_checks import D, HEADS, build, by_segments, check_rows_and_reset, check_streaming, check_training

N = 8


def view(x, q=None):
    b, l, _ = x.shape
    q = torch.zeros(b, HEADS, l, D // HEADS) if q is None else q
    return SegmentView(x, q, torch.zeros_like(q), torch.zeros_like(q))


def test_regression_reproduces_a_signal_in_the_span_of_the_basis():
    t = midpoints(3 * N, 0, 1)
    coef = torch.randn(N, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    signal = design(t, N) @ coef  # (P, 5) exactly representable
    torch.testing.assert_close(regression(t, N, 0.0) @ signal, coef, rtol=0, atol=1e-7)
    # ridge: the normal equations (F Fᵀ + λI) B = F X hold
    f, b = design(t, N).T, regression(t, N, 0.5) @ signal
    torch.testing.assert_close((f @ f.T + 0.5 * torch.eye(N, dtype=f.dtype)) @ b, f @ signal)


def test_basis_is_gaussian_densities_on_two_widths():
    centres, widths = rbf_basis(N)
    torch.testing.assert_close(centres, torch.tensor([0, 1 / 3, 2 / 3, 1] * 2, dtype=torch.float64))
    torch.testing.assert_close(widths, torch.tensor([1 / 3] * 4 + [2 / 3] * 4, dtype=torch.float64))
    torch.testing.assert_close(design(torch.tensor([0.25], dtype=torch.float64), N)[0],
                               torch.exp(-0.5 * (0.25 - centres) ** 2 / widths**2) / (widths * math.sqrt(2 * math.pi)))


@pytest.mark.parametrize("sticky", [False, True])
def test_writes_equal_explicit_float64_regressions(sticky):
    gen = torch.Generator().manual_seed(1)
    mem = InfinityMemory(HEADS, D // HEADS, basis=N, tau=0.75, ridge=0.5, resample=20, sticky=sticky)
    for p in mem.parameters():
        torch.nn.init.normal_(p, std=0.5, generator=gen)
    x1, x2 = torch.randn(2, 3, 7, D, generator=gen, dtype=torch.float64)
    q2 = torch.randn(3, HEADS, 7, D // HEADS, generator=gen)
    s1 = mem.write(mem.empty(3, "cpu"), view(x1.float()))
    s2 = mem.write(s1, view(x2.float(), q2))
    coef1 = regression(midpoints(7, 0, 1), N, 0.5) @ x1  # (B, N, D)
    torch.testing.assert_close(s1.coef.double(), coef1, rtol=1e-4, atol=1e-5)
    if sticky:
        mu, var = mem.density(s1.coef, q2)
        u = sticky_points(mu, var, 20).double()  # (B, S)
    else:
        u = midpoints(20, 0, 1).expand(3, -1)
    old = design(u, N) @ coef1  # (B, S, D) the old signal sampled, then squeezed into [0, τ]
    points = torch.cat([midpoints(20, 0, 0.75), midpoints(7, 0.75, 1)])
    expected = regression(points, N, 0.5) @ torch.cat([old, x2], dim=1)
    torch.testing.assert_close(s2.coef.double(), expected, rtol=1e-4, atol=1e-4)
    assert s2.t.tolist() == [14] * 3


def test_sticky_points_follow_the_attention_mass():
    mu = torch.full((2, 1, 3), 0.3)
    mu[1] = 0.7
    narrow = sticky_points(mu, torch.full((2, 1, 3), 1e-8), 16)
    assert (narrow[0] - 0.3).abs().max() < 1 / 128 and (narrow[1] - 0.7).abs().max() < 1 / 128
    flat = sticky_points(torch.full((1, 1, 1), 0.5), torch.full((1, 1, 1), 1e6), 16)  # ~uniform density
    torch.testing.assert_close(flat[0], midpoints(16, 0, 1).float(), rtol=0, atol=1e-3)
    assert (flat.diff(dim=-1) > 0).all()


def test_continuous_attention_closed_form_equals_quadrature():
    centres, widths = (a.float() for a in rbf_basis(N))
    mu, var = torch.tensor([0.2, 0.55, 0.9]), torch.tensor([0.01, 0.003, 0.05])
    closed = gaussian(mu[:, None], centres, widths**2 + var[:, None])  # (3, N)
    t = torch.linspace(-3, 4, 200001, dtype=torch.float64)
    dens = gaussian(t, mu[:, None].double(), var[:, None].double())  # (3, T)
    quad = torch.trapezoid(dens[:, None, :] * design(t, N).T[None], t, dim=-1)  # (3, N)
    torch.testing.assert_close(closed.double(), quad, rtol=1e-5, atol=1e-6)


def test_tiny_variance_reads_the_value_signal_at_mu():
    gen = torch.Generator().manual_seed(2)
    mem = InfinityMemory(HEADS, D // HEADS, basis=N, ridge=0.5)
    for p in mem.parameters():
        torch.nn.init.normal_(p, std=0.5, generator=gen)
    with torch.no_grad():
        mem.sigma.weight.zero_()
        mem.sigma.bias.fill_(-25.0)  # σ² = softplus(-25) ≈ 1.4e-11
        state = mem.write(mem.empty(2, "cpu"), view(torch.randn(2, 9, D, generator=gen)))
        q = torch.randn(2, HEADS, 4, D // HEADS, generator=gen)
        out = mem.read(state, view(torch.zeros(2, 4, D), q)).out  # (2, 4, D)
        mu, _ = mem.density(state.coef, q)  # (2, H, 4)
        values = mem.split(mem.wv(state.coef))  # (2, H, N, d)
        at_mu = design(mu, N) @ values  # (2, H, 4, d): the value signal evaluated at μ
        expected = mem.wo(at_mu.transpose(1, 2).reshape(2, 4, D))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert mem.read(mem.empty(2, "cpu"), view(torch.zeros(2, 4, D), q)).out.abs().max() == 0  # empty reads 0


def test_kl_regulariser_closed_form():
    mem = InfinityMemory(HEADS, D // HEADS, basis=N)
    with torch.no_grad():
        mem.sigma.weight.zero_()
        mem.sigma.bias.fill_(-4.0)
        x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(3))
        s1 = mem.write(mem.empty(2, "cpu"), view(x))
        s2 = mem.write(mem.reset(s1, torch.tensor([False, True])), view(x))
    var = F.softplus(torch.tensor(-4.0))
    kl = math.log(KL_SIGMA0) - 0.5 * torch.log(var) + var / (2 * KL_SIGMA0**2) - 0.5
    assert mem.aux_loss(s1).tolist() == [0.0, 0.0]  # nothing was attended yet
    torch.testing.assert_close(mem.aux_loss(s2), torch.stack([kl, torch.tensor(0.0)]))


def test_decoder_streaming_rows_reset_numel():
    for sticky in (False, True):
        model = build("infinity", basis=N, resample=16, sticky=sticky, boost=10.0)
        check_streaming(model)
        check_rows_and_reset(model)
    assert model.numel(model.empty_states(1, "cpu")) == 2 * (N * D + 1)


@pytest.mark.slow
def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    model = build("infinity", basis=N, resample=16, sticky=True)
    losses = check_training(model, aux_weight=1e-3)
    assert all(math.isfinite(v) for v in losses)


def test_bad_options_are_rejected():
    for opts, msg in (({"basis": 7}, "even"), ({"tau": 1.0}, "tau"), ({"ridge": -1.0}, "ridge"), ({"resample": 0}, "resample")):
        with pytest.raises(ValueError, match=msg):
            REGISTRY["infinity"](HEADS, D // HEADS, **opts)


def test_decoder_aux_loss_sums_the_layers_kl():
    model = build("infinity", basis=N, resample=16)
    toks = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(5))
    _, s1 = model(toks[:, :6], model.empty_states(2, "cpu"))
    assert model.aux_loss(s1).item() == 0.0  # segment 0 attended an empty memory
    _, s2 = model(toks[:, 6:], s1)
    expected = sum(mem.aux_loss(s).mean() for mem, s in zip(model._memories(), s2))
    torch.testing.assert_close(model.aux_loss(s2), expected)
    assert model.aux_loss(s2).item() > 0 and model.aux_loss(s2).requires_grad
    elastic = build("elastic", order=4, samples=3)
    assert elastic.aux_loss(by_segments(elastic, toks)[1]).item() == 0.0


def test_detach_stops_gradients_into_the_long_term_memory_only():
    """detach=True (the paper): a read in segment 2 sends no gradient to what segment 1 wrote (its layer
    inputs x); detach=False does. The forward values are the same."""
    from elastic_cli.memory.base import SegmentView
    from elastic_cli.memory.infinity import InfinityMemory

    g = torch.Generator().manual_seed(0)
    B, H, d, l = 2, 2, 4, 5
    x1 = torch.randn(B, l, H * d, generator=g)
    q1, q2 = torch.randn(B, H, l, d, generator=g), torch.randn(B, H, l, d, generator=g)
    grads, outs = {}, {}
    for detach in (False, True):
        torch.manual_seed(1)
        mem = InfinityMemory(H, d, basis=8, resample=12, detach=detach)
        x = x1.clone().requires_grad_(True)
        state = mem.write(mem.empty(B, "cpu"), SegmentView(x, q1, q1, q1, None, None))
        state = mem.write(state, SegmentView(x.detach() * 0.5, q1, q1, q1, None, None))  # one carried update too
        out = mem.read(state, SegmentView(x1, q2, q2, q2, None, None)).out  # (B, l, D)
        out.square().sum().backward()
        grads[detach], outs[detach] = 0.0 if x.grad is None else x.grad.abs().max().item(), out.detach()
    assert grads[True] == 0.0 and grads[False] > 1e-6
    torch.testing.assert_close(outs[True], outs[False])
