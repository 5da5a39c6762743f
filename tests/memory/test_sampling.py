"""Where the memory polynomial is read: sample points and the sampling matrix (elastic_cli.memory.sampling)."""
import numpy as np
import pytest
import torch

from elastic_cli.memory import sampling


@pytest.mark.parametrize("schedule", sampling.SCHEDULES)
@pytest.mark.parametrize("t", [0, 1, 2, 37, 100000])
def test_sample_points_bounds_and_order(schedule, t):
    for m in (1, 2, 7, 64):
        s = sampling.sample_points(schedule, m, t)
        assert s.shape == (m,) and s.dtype == torch.float64
        assert (s >= 0).all() and (s <= 1).all()
        assert (s[1:] > s[:-1]).all() or (schedule == "exponential" and t <= 2 and (s[1:] >= s[:-1]).all())


def test_sample_points_closed_forms():
    torch.testing.assert_close(sampling.sample_points("uniform", 4, 10), torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64))
    torch.testing.assert_close(sampling.sample_points("power", 9, 10, power=1.0), sampling.sample_points("uniform", 9, 10))
    nodes, _ = np.polynomial.legendre.leggauss(33)
    np.testing.assert_allclose(sampling.sample_points("gauss", 33, 5).numpy(), (nodes + 1) / 2, rtol=0, atol=1e-14)
    # exponential: distances 1000, 100, 10, 1 tokens from the present
    torch.testing.assert_close(sampling.sample_points("exponential", 4, 1000),
                               torch.tensor([0.0, 0.9, 0.99, 0.999], dtype=torch.float64))


@pytest.mark.parametrize("schedule,options", [("exponential", {}), ("power", {"power": 3.0})])
def test_recency_dense_schedules(schedule, options):
    m = 32
    s = sampling.sample_points(schedule, m, 4096, **options)
    u = sampling.sample_points("uniform", m, 4096)
    assert s.median() > u.median() and (s > 0.9).sum() > (u > 0.9).sum()
    assert (s[-1] - s[-2]) < (u[-1] - u[-2])


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="uniform, exponential, gauss, power"):
        sampling.sample_points("cubic", 4, 10)


@pytest.mark.parametrize("order", [16, 1024])
def test_exponential_sampling_rows_equal_the_reference(order):
    ts = [0, 1, 2, 5, 1000, 10**9]
    for m in (1, 7, 64):
        rows = sampling.exponential_sampling_rows(torch.tensor(ts), m, order)  # (B, M, N)
        for i, t in enumerate(ts):
            ref = sampling.sampling_matrix("exponential", m, t, order)
            torch.testing.assert_close(rows[i], ref, rtol=0, atol=1e-12 * max(1, order))
