"""Memory contract, `none` and Elastic Memory (elastic_cli.memory)."""
import pytest
import torch

from elastic_cli.memory import REGISTRY, hippo, sampling
from elastic_cli.memory.base import Read, SegmentView, detach_state
from elastic_cli.memory.elastic import ElasticMemory, ElasticState

H, D_HEAD, ORDER, SAMPLES = 2, 4, 6, 5


def view(k, v):
    b, h, l, d = k.shape
    return SegmentView(torch.zeros(b, l, h * d), torch.zeros_like(k), k, v)


def random_view(gen, b=3, l=7, dtype=torch.float32):
    k = torch.randn(b, H, l, D_HEAD, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(b, H, l, D_HEAD, generator=gen, dtype=torch.float64).to(dtype)
    return view(k, v)


def test_registry_builds_both_kinds():
    assert {"none", "elastic"} <= set(REGISTRY)
    mem = REGISTRY["elastic"](H, D_HEAD, order=ORDER, samples=SAMPLES, schedule="gauss")
    assert isinstance(mem, ElasticMemory) and sum(p.numel() for p in mem.parameters()) == 0
    none = REGISTRY["none"](H, D_HEAD)
    state = none.empty(2, "cpu")
    read = none.read(state, random_view(torch.Generator().manual_seed(0), b=2))
    assert read.k is None and read.v is None and read.valid is None and read.out is None
    assert none.numel(state) == 0 and none.write(state, None) == state


def test_empty_state_and_numel():
    mem = ElasticMemory(H, D_HEAD, ORDER, SAMPLES)
    state = mem.empty(3, "cpu")
    assert state.ck.shape == state.cv.shape == (3, H, ORDER, D_HEAD)
    assert state.ck.dtype == torch.float32 and state.t.dtype == torch.long and (state.t == 0).all()
    assert mem.numel(state) == 2 * H * ORDER * D_HEAD
    view = random_view(torch.Generator().manual_seed(0))
    assert mem.read(state, view) == Read()  # every row empty (free to know on the CPU): nothing is read
    half = mem.reset(mem.write(state, view), torch.tensor([False, True, False]))  # row 1 empty again
    read = mem.read(half, view)
    assert read.k.shape == (3, H, SAMPLES, D_HEAD) and read.valid is None and read.rows.tolist() == [True, False, True]
    assert mem.read(mem.write(state, view), view).rows is None  # every row has a history: no mask to apply
    assert half.t.device.type == "cpu"  # t lives on the host (also with the coefficients on a device)


def test_write_is_the_projection_of_all_keys_and_values():
    gen = torch.Generator().manual_seed(1)
    mem = ElasticMemory(H, D_HEAD, ORDER, SAMPLES)
    state = mem.empty(3, "cpu")
    views = [random_view(gen, l=l, dtype=torch.float64) for l in (7, 3, 11)]
    for seg in views:
        state = mem.write(state, seg)
    keys = torch.cat([s.k for s in views], dim=2)  # (B, H, 21, d)
    values = torch.cat([s.v for s in views], dim=2)
    assert (state.t == 21).all()
    zero = torch.zeros(3, H, ORDER, D_HEAD, dtype=torch.float64)
    torch.testing.assert_close(state.ck.double(), hippo.absorb(zero, 0, keys), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.cv.double(), hippo.absorb(zero, 0, values), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", sampling.SCHEDULES)
def test_constant_history_reads_back_the_constant(schedule):
    mem = ElasticMemory(H, D_HEAD, ORDER, SAMPLES, schedule=schedule, power=3.0)
    const = torch.randn(1, H, 1, D_HEAD)
    state = mem.write(mem.empty(1, "cpu"), view(const.expand(1, H, 50, D_HEAD), 2 * const.expand(1, H, 50, D_HEAD)))
    read = mem.read(state, None)
    torch.testing.assert_close(read.k, const.expand(1, H, SAMPLES, D_HEAD), rtol=0, atol=1e-5)
    torch.testing.assert_close(read.v, 2 * const.expand(1, H, SAMPLES, D_HEAD), rtol=0, atol=1e-5)
    assert read.valid is None  # the one row has a history: every sample is valid


def test_read_is_samples_of_the_polynomial_per_row():
    gen = torch.Generator().manual_seed(2)
    mem = ElasticMemory(H, D_HEAD, ORDER, SAMPLES, schedule="exponential")
    state = mem.write(mem.empty(3, "cpu"), random_view(gen, l=40))
    state = mem.reset(state, torch.tensor([False, True, False]))
    state = mem.write(state, random_view(gen, l=9))  # t = 49, 9, 49
    assert state.t.tolist() == [49, 9, 49]
    read = mem.read(state, None)
    for b, t in enumerate(state.t.tolist()):
        s = sampling.sampling_matrix("exponential", SAMPLES, t, ORDER).float()  # (M, N)
        torch.testing.assert_close(read.k[b], s @ state.ck[b])
        torch.testing.assert_close(read.v[b], s @ state.cv[b])
    assert not torch.allclose(read.k[0, 0], read.k[1, 0])


def test_reset_empties_only_masked_rows_and_detach():
    gen = torch.Generator().manual_seed(3)
    mem = ElasticMemory(H, D_HEAD, ORDER, SAMPLES)
    state = mem.write(mem.empty(3, "cpu"), random_view(gen))
    reset = mem.reset(state, torch.tensor([True, False, True]))
    assert isinstance(reset, ElasticState)
    assert (reset.ck[[0, 2]] == 0).all() and (reset.cv[[0, 2]] == 0).all() and reset.t.tolist() == [0, 7, 0]
    assert torch.equal(reset.ck[1], state.ck[1])
    states = (state, (reset,))
    detached = detach_state(states)
    assert isinstance(detached[0], ElasticState) and not detached[1][0].ck.requires_grad


def test_write_is_differentiable_and_fp32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(4)
    mem = ElasticMemory(H, D_HEAD, ORDER, SAMPLES)
    seg = random_view(gen)
    k = seg.k.clone().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = mem.write(mem.empty(3, "cpu"), view(k, seg.v.bfloat16()))
        read = mem.read(state, None)
    assert state.ck.dtype == state.cv.dtype == read.k.dtype == torch.float32
    read.k.sum().backward()
    assert k.grad is not None and k.grad.abs().sum() > 0


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        ElasticMemory(H, D_HEAD, ORDER, SAMPLES, schedule="cubic")
    with pytest.raises(ValueError, match=">= 1"):
        ElasticMemory(H, D_HEAD, 0, SAMPLES)
