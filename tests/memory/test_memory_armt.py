"""ARMT: associative memory closed forms (DPFP, delta rule, normaliser) and the decoder checks."""
import pytest
import torch

from elastic_cli.memory import REGISTRY
from elastic_cli.memory.armt import EPS, ARMTMemory, associate, delta_write, dpfp
from elastic_cli.memory.base import SegmentView
from tests.helpers.memory_checks import D, HEADS, build, by_segments, check_rows_and_reset, check_streaming, check_training, tokens


def slots_view(o):
    b = o.shape[0]
    z = torch.zeros(b, 1, D)
    zq = torch.zeros(b, HEADS, 1, D // HEADS)
    return SegmentView(z, zq, zq, zq, slots=o)


def test_dpfp_is_the_sum_of_rolled_relu_products():
    x = torch.tensor([[0.5, -2.0, 1.5]], dtype=torch.float64)
    r = torch.tensor([0.5, 0.0, 1.5, 0.0, 2.0, 0.0], dtype=torch.float64)  # [relu(x), relu(-x)]
    expected = torch.cat([r * torch.roll(r, 1), r * torch.roll(r, 2)])
    torch.testing.assert_close(dpfp(x, 2)[0], expected)
    assert (dpfp(torch.randn(4, 3), 3) >= 0).all() and dpfp(torch.randn(4, 3), 3).shape == (4, 18)


def test_orthogonal_keys_are_stored_and_read_back_exactly():
    k = torch.zeros(1, 2, 6, dtype=torch.float64)
    k[0, 0, :3], k[0, 1, 3:] = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 0.0, 1.0])  # orthogonal features
    v = torch.randn(1, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, z = torch.zeros(1, 6, 4, dtype=torch.float64), torch.zeros(1, 6, dtype=torch.float64)
    a, z = delta_write(a, z, k[:, :1], v[:, :1], torch.ones(1, 1, 1, dtype=torch.float64))
    a, z = delta_write(a, z, k[:, 1:], v[:, 1:], torch.ones(1, 1, 1, dtype=torch.float64))
    # γ = 1 for the first write (z = 0), then 1 − (zᵀk + ε)/‖k‖² = 1 − ε/‖k‖² (orthogonal keys: zᵀk = 0)
    torch.testing.assert_close(z, k[:, 0] + (1 - EPS / k[:, 1].pow(2).sum()) * k[:, 1])
    read = associate(a, z, k)  # (1, 2, 4)
    norms = k.pow(2).sum(-1, keepdim=True)
    gammas = torch.tensor([1.0, 1 - EPS / norms[0, 1, 0]], dtype=torch.float64)[None, :, None]
    torch.testing.assert_close(read, v * norms / (gammas * norms + EPS))  # = v up to ε
    torch.testing.assert_close(read, v, rtol=0, atol=1e-5)


def test_delta_rule_overwrites_a_rewritten_key_and_keeps_the_normaliser():
    gen = torch.Generator().manual_seed(1)
    k = dpfp(torch.randn(1, 1, 4, dtype=torch.float64, generator=gen), 3)  # (1, 1, 24)
    v1, v2 = torch.randn(2, 1, 1, 5, dtype=torch.float64, generator=gen)
    a, z = torch.zeros(1, 24, 5, dtype=torch.float64), torch.zeros(1, 24, dtype=torch.float64)
    one = torch.ones(1, 1, 1, dtype=torch.float64)
    a, z = delta_write(a, z, k, v1, one)
    a2, z2 = delta_write(a, z, k, v2, one)
    c = k.pow(2).sum() / (k.pow(2).sum() + EPS)  # what the ε of the denominator leaves of a stored value
    # A = k v1ᵀ + k (v2 − c v1)ᵀ, so the read is c v2 + c (1 − c) v1: overwritten, not averaged
    torch.testing.assert_close(associate(a2, z2, k), c * v2 + c * (1 - c) * v1)
    torch.testing.assert_close(associate(a2, z2, k), v2, rtol=0, atol=1e-3)
    torch.testing.assert_close(z2, z)  # γ = 1 − zᵀk/‖k‖² = 0 for a known key
    # half strength: the read moves half way from v1 to v2
    a3, z3 = delta_write(a, z, k, v2, 0.5 * one)
    torch.testing.assert_close(associate(a3, z3, k), c * (v1 + 0.5 * (v2 - c * v1)))


def test_module_write_then_pre_read_returns_the_value():
    mem = ARMTMemory(HEADS, D // HEADS, tokens=1, key_dim=4, nu=2)
    with torch.no_grad():
        mem.wk.weight.normal_(generator=torch.Generator().manual_seed(2))
        mem.wq.weight.copy_(mem.wk.weight)
        mem.wv.weight.normal_(generator=torch.Generator().manual_seed(3))
        mem.wbeta.weight.zero_()
        mem.wbeta.bias.fill_(30.0)  # β = 1
        o = 3 * torch.randn(2, 1, D, generator=torch.Generator().manual_seed(4))
        state = mem.write(mem.empty(2, "cpu"), slots_view(o))
        # unit features (l2): the read of the stored key is ‖k‖² v / (‖k‖² + ε) = v / (1 + ε)
        torch.testing.assert_close(mem.pre(state, o), mem.wv(o) / (1 + EPS), rtol=1e-6, atol=1e-6)
        assert torch.equal(mem.pre(mem.empty(2, "cpu"), o), torch.zeros(2, 1, D))  # empty memory reads 0
    assert state.a.dtype == torch.float32 and mem.numel(state) == 2 * 2 * 4 * D + 2 * 2 * 4 + 1  # A, z, β
    torch.testing.assert_close(state.beta, torch.ones(2))  # the logged gate of the write


def test_state_stays_fp32_under_bf16_autocast():
    model = build("armt", tokens=2, key_dim=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, states = by_segments(model, tokens(2, 2 * model.segment_len))
    assert all(s.a.dtype == s.z.dtype == s.beta.dtype == torch.float32 for s in states)
    assert states[0].z.abs().sum() > 0
    assert states[0].a.abs().sum() == 0  # W_v starts at zero (init_weights applies zero_init): A = Σ β k (0 − 0)ᵀ


def test_decoder_streaming_rows_reset():
    model = build("armt", tokens=2, key_dim=4, boost=20.0)
    assert (model.front, model.back) == (0, 2)
    check_streaming(model)
    check_rows_and_reset(model)
    nodenom = build("armt", tokens=2, key_dim=4, denom=False, boost=20.0)
    check_streaming(nodenom)
    assert nodenom.numel(nodenom.empty_states(1, "cpu")) == 2 * (2 * 3 * 4 * D + 1)


def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    check_training(build("armt", tokens=2, key_dim=4))


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match=">= 1"):
        REGISTRY["armt"](HEADS, D // HEADS, tokens=0)
    with pytest.raises(ValueError, match="nu"):
        REGISTRY["armt"](HEADS, D // HEADS, key_dim=1, nu=2)
