"""A memory kind is one file: `tests/helpers/toy_kind.py` (outside elastic_cli/, registered by
importing it) gets config validation, the memory contract, FLOPs/MFU, caching, and trains, evaluates
and generates through the CLI's own functions, with no edit anywhere else."""
import json
import math

import pytest
import torch
import yaml

from elastic_cli import flops
from elastic_cli.build import build_model
from elastic_cli.config import dump_yaml, load_config
from elastic_cli.errors import UsageError
from elastic_cli.memory import REGISTRY, SegmentView, register
from tests.helpers import contract_checks, tiny_run
from tests.helpers.cli_run import run_cli


@pytest.fixture(scope="module", autouse=True)
def toy():
    from tests.helpers import toy_kind  # registers `toy`

    register("toy")(toy_kind.ToyMemory)  # again, in case an earlier test module removed it
    yield toy_kind
    REGISTRY.pop("toy")  # other modules see the built-in kinds only


def test_toy_options_are_validated_and_shown_alone(tmp_path):
    cfg = load_config("recipes/tiny.yaml", ["memory.kind=toy", "memory.rate=0.25"])
    assert yaml.safe_load(dump_yaml(cfg))["memory"] == {"kind": "toy", "layers": "all", "rate": 0.25, "floor": 0.0}
    with pytest.raises(UsageError, match=r"unknown key memory.order in command line \(an option of memory.kind=elastic"):
        load_config("recipes/tiny.yaml", ["memory.kind=toy", "memory.order=4"])
    with pytest.raises(UsageError, match=r"unknown key memory.rat in command line; did you mean 'memory.rate'\?"):
        load_config("recipes/tiny.yaml", ["memory.kind=toy", "memory.rat=4"])
    with pytest.raises(UsageError, match=r"memory.rate=2 in command line: input should be less than or equal to 1"):
        load_config("recipes/tiny.yaml", ["memory.kind=toy", "memory.rate=2"])
    with pytest.raises(UsageError, match=r"memory.floor=0.5 must be below memory.rate=0.5 \(command line\)"):
        load_config("recipes/tiny.yaml", ["memory.kind=toy", "memory.floor=0.5"])
    caching = load_config("recipes/tiny.yaml", ["memory.kind=caching", "memory.base=toy", "memory.aggregate=residual",
                                                "memory.rate=0.25"])
    assert build_model(caching).blocks[0].memory.base.rate == 0.25


def test_toy_average_is_the_token_by_token_moving_average(toy):
    mem = toy.ToyMemory(2, 4, rate=0.25)
    x = torch.randn(3, 2, 5, 4)  # (B, H, l, d)
    state = mem.write(mem.write(mem.empty(3, "cpu"), SegmentView(None, None, x[:, :, :2], x[:, :, :2])),
                      SegmentView(None, None, x[:, :, 2:], x[:, :, 2:]))
    m = torch.zeros(3, 2, 1, 4)
    for i in range(5):
        m = 0.75 * m + 0.25 * x[:, :, i : i + 1]
    torch.testing.assert_close(state.k, m)
    assert state.t.tolist() == [5, 5, 5]


@pytest.mark.parametrize("check", contract_checks.CHECKS, ids=lambda f: f.__name__)
def test_toy_meets_the_memory_contract(check):
    check("toy")  # built from its Options' defaults: the contract test needs no entry for it


@pytest.mark.slow
def test_toy_trains_evaluates_and_generates_through_the_cli(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "recipes/tiny.yaml", *tiny_run.overrides(
        tiny_corpus, run, "memory.kind=toy", "memory.rate=0.25", "train.steps=3"))
    assert code == 0, err
    losses = [r["loss"] for r in tiny_run.metrics(run) if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert yaml.safe_load((run / "config.yaml").read_text())["memory"] == {"kind": "toy", "layers": "all", "rate": 0.25,
                                                                           "floor": 0.0}
    code, out, err = run_cli(capsys, "eval", "--ckpt", run, "--json", "-")
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    assert result["memory"] == {"kind": "toy", "rate": 0.25, "floor": 0.0} and math.isfinite(result["loss"])
    args = ["generate", "--ckpt", run, "--prompt", "def f_1_2(x, y=2):", "--max-new-tokens", "20", "--seed", "1"]
    code, first, err = run_cli(capsys, *args)
    assert code == 0, err
    assert run_cli(capsys, *args)[1] == first  # same seed, same text


def test_an_installed_package_registers_its_kind_by_entry_point(monkeypatch):
    import importlib
    import sys

    import elastic_cli.memory as memory

    REGISTRY.pop("toy")
    sys.modules.pop("tests.helpers.toy_kind")
    seen = []
    plugin = type("EntryPoint", (), {"load": staticmethod(lambda: importlib.import_module("tests.helpers.toy_kind"))})
    monkeypatch.setattr(memory, "entry_points", lambda group: seen.append(group) or [plugin])
    memory.load_plugins()
    assert seen == ["elastic.memory"] and "toy" in REGISTRY
    assert load_config("recipes/tiny.yaml", ["memory.kind=toy"]).memory.kind == "toy"


def test_toy_has_a_flop_count_so_mfu_is_reported():
    model = build_model(load_config("recipes/tiny.yaml", ["memory.kind=toy"]))
    per_layer = [b.memory.cost(64, 64) for b in model.blocks]
    assert all(c.keys == 1 and c.flops == 0 for c in per_layer)
    plain = build_model(load_config("recipes/tiny.yaml", ["memory.kind=none"]))
    # its one memory key per layer is attended by every query: more FLOPs than the same model without memory
    assert flops.train_step_flops(model, batch=1, segments=2, l=64) > flops.train_step_flops(plain, batch=1, segments=2, l=64)
