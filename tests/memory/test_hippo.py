"""HiPPO-LegS math: segmentation invariance, closed forms, the fast banks (elastic_cli.memory.hippo)."""
import math

import numpy as np
import pytest
import torch

from elastic_cli.memory import hippo
from elastic_cli.memory.bounded_lru import BoundedLRU

T_HIST, ORDER, CHANNELS = 3000, 24, 3


def rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return ((a - b).norm() / b.norm()).item()


def direct_projection(x: np.ndarray, order: int) -> np.ndarray:
    """c_n = sum_k x_k ∫_{(k-1)/T}^{k/T} g_n, with numpy's Legendre series (independent of hippo)."""
    big_t = x.shape[0]
    r = np.arange(big_t + 1) / big_t
    cols = []
    for n in range(order):
        antideriv = np.polynomial.Legendre.basis(n, domain=[0, 1]).integ(lbnd=0)  # ∫_0^r P_n(2s-1) ds
        cols.append(math.sqrt(2 * n + 1) * np.diff(antideriv(r)))
    return np.stack(cols) @ x  # (N, D)


def random_pieces(total: int, gen: torch.Generator) -> list[int]:
    cuts = sorted(set(torch.randint(1, total, (40,), generator=gen).tolist()))
    return [b - a for a, b in zip([0] + cuts, cuts + [total])]


def absorb_pieces(c, x, pieces):
    t = 0
    for l in pieces:
        c = hippo.absorb(c, t, x[t : t + l])
        t += l
    return c


@pytest.fixture(scope="module")
def history():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T_HIST, CHANNELS, generator=gen, dtype=torch.float64)
    return x, direct_projection(x.numpy(), ORDER), random_pieces(T_HIST, gen)


@pytest.mark.slow
def test_segmentation_invariance_float64(history):
    x, direct, pieces = history
    c0 = torch.zeros(ORDER, CHANNELS, dtype=torch.float64)
    one = hippo.absorb(c0, 0, x)
    by_token = c0
    for k in range(T_HIST):
        by_token = hippo.absorb(by_token, k, x[k : k + 1])
    reference = hippo.absorb_reference(c0, 0, x)
    pieced = absorb_pieces(c0, x, pieces)
    errors = {"one_vs_direct": rel(one, direct), "token_vs_one": rel(by_token, one),
              "reference_vs_one": rel(reference, one), "pieces_vs_one": rel(pieced, one),
              "pieces_vs_direct": rel(pieced, direct)}
    print("float64 invariance errors:", errors)
    assert max(errors.values()) < 1e-10


@pytest.mark.slow
def test_segmentation_invariance_float32(history):
    x, direct, pieces = history
    c0, x32 = torch.zeros(ORDER, CHANNELS), x.float()
    one = hippo.absorb(c0, 0, x32)
    by_token = c0
    for k in range(T_HIST):
        by_token = hippo.absorb(by_token, k, x32[k : k + 1])
    pieced = absorb_pieces(c0, x32, pieces)
    assert one.dtype == by_token.dtype == pieced.dtype == torch.float32
    errors = {"one_vs_direct": rel(one, direct), "token_vs_direct": rel(by_token, direct),
              "pieces_vs_direct": rel(pieced, direct)}
    print("float32 invariance errors:", errors)
    assert max(errors.values()) < 1e-4


def test_batched_t_groups_rows_like_single_rows():
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 5, 17, 5])
    c = torch.randn(4, 2, 6, 3, generator=gen, dtype=torch.float64)  # (B, H, N, d)
    x = torch.randn(4, 2, 7, 3, generator=gen, dtype=torch.float64)  # (B, H, l, d)
    out = hippo.absorb(c, t, x)
    for b in range(4):
        torch.testing.assert_close(out[b], hippo.absorb(c[b], int(t[b]), x[b]), rtol=0, atol=1e-14)
    # t = 0 ignores c (even NaN)
    nan = hippo.absorb(torch.full((6, 3), float("nan"), dtype=torch.float64), 0, x[0, 0])
    torch.testing.assert_close(nan, out[0, 0])


def test_constant_history_is_const_e0():
    gen = torch.Generator().manual_seed(2)
    const = torch.tensor([1.5, -0.25], dtype=torch.float64)
    x = const.expand(1000, 2)
    c = absorb_pieces(torch.zeros(16, 2, dtype=torch.float64), x, random_pieces(1000, gen))
    expected = torch.zeros(16, 2, dtype=torch.float64)
    expected[0] = const
    torch.testing.assert_close(c, expected, rtol=0, atol=1e-12)


def test_polynomial_reconstructed_to_cell_averaging_error():
    """x_k = p(s_k) at cell midpoints, deg p < N. The step function differs from p by e with
    ||e||_2^2 = Σ_k ∫_cell (p(s_k) - p(s))^2 ds; projection is an L2 contraction and
    |Σ_n c_n g_n(s)| <= sqrt(Σ_n g_n(s)^2) ||c|| <= N ||c||, so max_k |p̂(s_k) - p(s_k)| <= N ||e||_2."""
    order, big_t = 12, 2000
    p = np.polynomial.Polynomial([0.3, -1.0, 2.0, 0.5, -3.0, 1.2, 0.7], domain=[0, 1], window=[-1, 1])
    mid = (np.arange(big_t) + 0.5) / big_t
    x = torch.tensor(p(mid), dtype=torch.float64)[:, None]  # (T, 1)
    c = absorb_pieces(torch.zeros(order, 1, dtype=torch.float64), x, [700, 1, 299, 1000])
    recon = (hippo.legendre_basis(torch.tensor(mid), order) @ c)[:, 0].numpy()
    nodes, weights = np.polynomial.legendre.leggauss(8)  # exact for the degree-12 integrand
    s = mid[:, None] + nodes[None, :] / (2 * big_t)  # (T, 8) points inside each cell
    e2 = ((p(mid)[:, None] - p(s)) ** 2 * weights / (2 * big_t)).sum()
    bound = order * math.sqrt(e2)
    err = np.abs(recon - p(mid)).max()
    print(f"polynomial: max midpoint error {err:.3e}, bound {bound:.3e}")
    assert err <= bound < 1e-2


@pytest.mark.slow
def test_high_order_finite_and_float32_matches_float64():
    order = 1024
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1536, 2, generator=gen, dtype=torch.float64)
    c64 = absorb_pieces(torch.zeros(order, 2, dtype=torch.float64), x, [512, 512, 512])
    c32 = absorb_pieces(torch.zeros(order, 2), x.float(), [512, 512, 512])
    assert torch.isfinite(c64).all() and torch.isfinite(c32).all()
    print("order 1024 float32 vs float64:", rel(c32, c64))
    assert rel(c32, c64) < 1e-4


def test_transition_is_legs_flow():
    """R(ρ) = expm(-A ln(1/ρ)). torch's matrix_exp is itself only good to ~3e-12 near ρ = 1 (its
    semigroup error there is 5e-12), so it is checked to 1e-11, and to 1e-14 against a Taylor series."""
    order = 8
    a, _ = hippo.legs_A_B(order)
    for rho in (0.05, 0.3, 0.9, 0.999):
        generator = -a * math.log(1 / rho)
        r = hippo.transition(rho, order)
        torch.testing.assert_close(r, torch.linalg.matrix_exp(generator), rtol=0, atol=1e-11)
        assert (r - torch.tril(r)).abs().max() < 1e-14
        if rho > 0.5:
            series, term = torch.eye(order, dtype=torch.float64), torch.eye(order, dtype=torch.float64)
            for k in range(1, 40):
                term = term @ generator / k
                series = series + term
            torch.testing.assert_close(r, series, rtol=0, atol=1e-14)
    r = hippo.transition(0.6, order)
    torch.testing.assert_close(r @ r, hippo.transition(0.36, order), rtol=0, atol=1e-14)


def test_legs_A_B_closed_form():
    a, b = hippo.legs_A_B(3)
    s3, s5 = math.sqrt(3), math.sqrt(5)
    expected = torch.tensor([[1, 0, 0], [s3, 2, 0], [s5, s3 * s5, 3]], dtype=torch.float64)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(b, torch.tensor([1, s3, s5], dtype=torch.float64))


def test_legendre_basis_orthonormal_at_high_order():
    order = 1100
    x, w = hippo.gauss_legendre(order + 1)
    g = hippo.legendre_basis((x + 1) / 2, order)  # (K, N)
    gram = g.T @ (w[:, None] / 2 * g)
    assert (gram - torch.eye(order, dtype=torch.float64)).abs().max() < 1e-10


def test_first_token_and_injection_columns():
    w = hippo.injection(0, 1, 5)
    torch.testing.assert_close(w, torch.eye(5, 1, dtype=torch.float64))
    # the columns of W(0, T) integrate g_n over the whole of [0, 1]: sum over tokens is e_0
    torch.testing.assert_close(hippo.injection(0, 100, 5).sum(1), torch.eye(5, dtype=torch.float64)[0])


def test_absorb_keeps_fp32_under_bf16_autocast():
    c = torch.zeros(2, 8, 4)
    x = torch.randn(2, 16, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = hippo.absorb(c, torch.tensor([0, 3]), x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[1], hippo.absorb(c[1], 3, x[1].float()))


# ---------------------------------------------------------------- the fast banks and their bounded cache

@pytest.mark.parametrize("order", [1, 2, 16, 64])
def test_segment_banks_equal_the_float64_reference(order):
    ts = [0, 1, 7, 4096, 123457, 10**9]
    for l in (1, 64, 2048):
        r, w = hippo.segment_banks(torch.tensor(ts), l, order)  # every row at once
        for i, t in enumerate(ts):
            ref_r = hippo.transition(t / (t + l), order) if t else torch.zeros(order, order, dtype=torch.float64)
            ref_w = hippo.injection(t, l, order)
            torch.testing.assert_close(r[i], ref_r, rtol=0, atol=1e-13)
            torch.testing.assert_close(w[i], ref_w, rtol=0, atol=1e-15)
            assert (w[i] - ref_w).abs().max() <= 1e-6 * ref_w.abs().max()  # relative too, even at t = 1e9


@pytest.mark.parametrize("t", [3, 10**9])
def test_segment_banks_equal_the_reference_at_order_1024(t):
    order, l = 1024, 512
    r, w = hippo.segment_banks(torch.tensor([t]), l, order)
    torch.testing.assert_close(r[0], hippo.transition(t / (t + l), order), rtol=0, atol=1e-12)
    ref_w = hippo.injection(t, l, order)
    torch.testing.assert_close(w[0], ref_w, rtol=0, atol=1e-14)
    assert (w[0] - ref_w).abs().max() <= 1e-6 * ref_w.abs().max()


def test_absorb_at_a_billion_tokens_equals_the_token_by_token_reference():
    gen = torch.Generator().manual_seed(5)
    c = torch.randn(2, 16, 3, generator=gen, dtype=torch.float64)  # (B, N, D)
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)  # (B, l, D)
    t = torch.tensor([10**9, 10**9 + 12345])
    out = hippo.absorb(c, t, x)
    for b in range(2):
        torch.testing.assert_close(out[b], hippo.absorb_reference(c[b], int(t[b]), x[b]), rtol=0, atol=1e-13)


def test_rows_at_distinct_unsorted_t_get_their_own_banks():
    gen = torch.Generator().manual_seed(6)
    t = torch.tensor([17, 0, 5])
    c = torch.randn(3, 2, 6, 3, generator=gen, dtype=torch.float64)  # (B, H, N, d)
    x = torch.randn(3, 2, 7, 3, generator=gen, dtype=torch.float64)  # (B, H, l, d)
    out = hippo.absorb(c, t, x)
    for b in range(3):
        torch.testing.assert_close(out[b], hippo.absorb(c[b], int(t[b]), x[b]), rtol=0, atol=1e-14)


def test_bank_cache_stays_within_its_bound_and_evicts_the_least_recently_used():
    """A document of many new t never grows the cache past its entries; revisited t come back equal
    to a fresh build; the least recently used entry goes first; a bank over the entry size is not
    kept (it is built at every write). Rows at two t: one entry per call (no look-ahead)."""
    cache = BoundedLRU(3, 4 * 2 * 8 * 16)  # three entries of at most one fp32 step bank of two rows, N=8
    real = hippo.BANKS
    hippo.BANKS = cache
    try:
        for t in range(1000, 1050):  # 50 never-seen t
            hippo.step_bank(torch.tensor([t, t + 1]), 4, 8)
            assert len(cache.entries) <= 3
        assert cache.bytes == 3 * 4 * 2 * 8 * 16
        assert [k[3] for k in cache.entries] == [(t, t + 1) for t in (1047, 1048, 1049)]  # keyed by the rows' t
        bank = cache.get(("step", 8, 4, (1047, 1048), torch.float32))[0]
        torch.testing.assert_close(bank[0, :, :8].double(), hippo.transition(1047 / 1051, 8), rtol=0, atol=1e-7)
        torch.testing.assert_close(bank[1, :, :8].double(), hippo.transition(1048 / 1052, 8), rtol=0, atol=1e-7)
        hippo.step_bank(torch.tensor([2000, 2001]), 4, 8)  # evicts 1048: 1047 was used last
        assert [k[3] for k in cache.entries][:1] == [(1049, 1050)]
        hippo.step_bank(torch.tensor([3000, 3001]), 4, 9)  # N = 9: over the entry size
        assert all(k[1] == 8 for k in cache.entries) and len(cache.entries) == 3
    finally:
        hippo.BANKS = real


def test_a_miss_builds_the_next_segments_banks_too():
    """Rows sharing t: one call builds t, t + l, ..., t + (AHEAD-1) l, each equal to a build of its own."""
    hippo.BANKS.clear()
    first = hippo.step_bank(torch.tensor([64, 64]), 64, 16)
    assert first.shape == (1, 16, 32)
    for k in range(hippo.AHEAD):
        t = 64 + 64 * k
        cached = hippo.BANKS.get(("step", 16, 64, (t, t), torch.float32))[0]
        consts = hippo.BankConstants(*(x.numpy() for x in hippo.bank_constants(16)))
        fresh = torch.from_numpy(hippo._step_banks(np.array([t]), 64, 16, consts)).float()
        torch.testing.assert_close(cached, fresh, rtol=0, atol=0)
    assert hippo.BANKS.get(("step", 16, 64, (64 + 64 * hippo.AHEAD,) * 2, torch.float32)) is None


@pytest.mark.parametrize("t,l,order", [(0, 64, 16), (64, 64, 16), (1000, 7, 8), (3, 5, 64), (10**6, 2048, 64),
                                       (10**9, 2048, 64), pytest.param(12345, 1, 1024, marks=pytest.mark.slow)])
def test_transplanted_injection_equals_the_closed_forms(t, l, order):
    """The write's route: [R | (1-ρ)A] on the host, then W = (1-ρ) A W(0, l), equals the reference banks
    (float64: R to 1e-13 absolute, W to 1e-6 relative, as the closed-form fast banks are held)."""
    bank = hippo.write_bank(hippo.step_bank(torch.tensor([t]), l, order, dtype=torch.float64),
                            hippo.base_injection(l, order))[0]
    torch.testing.assert_close(bank[:, :order], hippo.transition(t / (t + l), order), rtol=0, atol=1e-13)
    w = hippo.injection(t, l, order)
    assert (bank[:, order:] - w).abs().max() <= 1e-6 * w.abs().max()


def test_cached_write_equals_a_fresh_one():
    gen = torch.Generator().manual_seed(8)
    c = torch.randn(2, 3, 16, 4, generator=gen)  # (B, H, N, d)
    x = torch.randn(2, 3, 64, 4, generator=gen)  # (B, H, l, d)
    t = torch.tensor([192, 64])
    hippo.BANKS.clear()
    fresh = hippo.absorb(c, t, x)
    assert len(hippo.BANKS.entries) == 1
    torch.testing.assert_close(hippo.absorb(c, t, x), fresh, rtol=0, atol=0)  # a hit
    for b in range(2):
        torch.testing.assert_close(fresh[b].double(), hippo.absorb_reference(c[b].double(), int(t[b]), x[b].double()).double(),
                                   rtol=0, atol=1e-5)


def test_absorb_from_empty_rows_is_the_injection_alone():
    """Every row at t = 0 (the CPU shortcut skips R @ C): exactly W(0, l) @ X, whatever C holds."""
    gen = torch.Generator().manual_seed(9)
    c = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    out = hippo.absorb(c, torch.zeros(2, dtype=torch.long), x)
    torch.testing.assert_close(out, hippo.injection(0, 5, 6) @ x, rtol=0, atol=1e-15)
