"""The accelerator-path counts of `elastic bench` (bench_gpu_path.py): the counter counts what it
says on ops with known answers, and the tiny recipe's Elastic Memory meets issue 24's CPU bars."""
import pytest
import torch

from elastic_cli.bench.gpu_path import META, count, gpu_path, segment_counts, traced
from elastic_cli.bench.train import kind_configs
from elastic_cli.build import build_model


def test_counter_counts_launches_f64_and_host_syncs():
    a = torch.zeros(4, 3, device=META)
    assert count(lambda: a + 1).ops == 1  # one kernel
    assert count(lambda: a.view(12)[2:].view(2, 5).t()).ops == 0  # views launch nothing
    assert count(lambda: torch.empty(5, device=META)).ops == 0  # an allocation without a fill
    f64 = count(lambda: a.double() * 2)
    assert (f64.ops, f64.f64) == (2, 2)  # the cast writes float64, the product reads it
    assert count(lambda: torch.zeros(3) + 1).ops == 0  # host work is not a device launch
    syncs = count(lambda: (a.sum().item(), bool(a.any()), a.tolist(), a.cpu()))
    assert syncs.syncs == 4
    assert count(lambda: torch.zeros(3).to(META)).syncs == 0  # an upload does not wait for the device


@pytest.fixture(scope="module")
def counts():
    return gpu_path(kind_configs("recipes/tiny.yaml", [], ["none", "elastic"]))


@pytest.mark.slow
def test_elastic_write_is_one_product_per_layer(counts):
    """cat([C ; X]) and one bmm per layer, plus what the 2 layers share once per segment: the upload of
    [R | (1-ρ)A], its product with W(0, l) and the concatenation into [R | W]."""
    assert counts["gpu_path_ops_per_write_layer"] == 2 + 3 / 2
    assert counts["gpu_path"]["none"]["ops_per_write_layer"] == 0


@pytest.mark.slow
def test_issue_24_cpu_bars(counts):
    assert counts["gpu_path_f64_ops_per_segment"] == 0
    assert counts["gpu_path_ops_per_token"]["none"] <= 150
    assert counts["gpu_path_ops_per_token"]["elastic"] <= 1.2 * counts["gpu_path_ops_per_token"]["none"]
    assert counts["host_syncs_per_train_step"] <= 2


def test_float64_would_be_counted():
    """The same trace with a float64 memory state counts the write's float64 launches (the bar can fail)."""
    cfg = kind_configs("recipes/tiny.yaml", [], ["elastic"])["elastic"]
    model = traced(build_model(cfg))
    for block in model.blocks:  # states in float64: every write and read touches float64
        block.memory.empty = (lambda batch, device, _e=block.memory.empty: _e(batch, device)._replace(
            c=_e(batch, device).c.double()))
        block.memory.fixed_sampling = block.memory.fixed_sampling.double()
    with_write, _ = segment_counts(model)
    assert with_write.f64 > 0
