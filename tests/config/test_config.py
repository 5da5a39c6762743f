"""Recipes load; base inheritance and overrides; every config error exits 2 naming the dotted
path, the file and a "did you mean"."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from elastic_cli.build import build_model, layer_options
from elastic_cli.config import dump_yaml, load_config, memory_kinds
from elastic_cli.data.compat import check_data
from elastic_cli.errors import DataError, UsageError
from elastic_cli.memory import REGISTRY
from tests.helpers import tiny_run

RECIPES = sorted(Path("recipes").glob("*.yaml"))
OVERLAYS = sorted(Path("recipes/memory").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_every_recipe_loads_and_builds_on_meta(recipe):
    assert recipe.read_text().startswith("# "), "a recipe starts with a comment giving its command"
    cfg = load_config(recipe)
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.vocab_size == cfg.model.vocab_size


@pytest.mark.parametrize("overlay", OVERLAYS, ids=str)
def test_every_memory_overlay_applies_and_builds(overlay):
    assert overlay.read_text().startswith("# ")
    cfg = load_config(["recipes/code-32k.yaml", overlay])
    assert cfg.memory.kind == overlay.stem and cfg.run.dir == f"runs/code-32k-{overlay.stem}"
    with torch.device("meta"):
        model = build_model(cfg)
    assert [type(b.memory) for b in model.blocks if b.memory is not None] == [REGISTRY[overlay.stem]] * len(model.memory_layers)


def test_big_recipes_are_32k_windows_of_2048_and_about_100m_parameters():
    for name in ("code-32k", "books-32k"):
        cfg = load_config(f"recipes/{name}.yaml")
        assert cfg.model.segment_len * cfg.train.segments == 32768 and cfg.model.segment_len == 2048
        assert cfg.run.gpus == 8
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model(cfg).parameters())
        assert 80e6 < params < 120e6


def test_memory_kinds_match_the_registry_and_their_constructors():
    assert memory_kinds() == tuple(REGISTRY)
    for kind in memory_kinds():
        cfg = load_config("recipes/tiny.yaml", [f"memory.kind={kind}"])
        assert isinstance(cfg.memory, REGISTRY[kind].Options)  # caching: a subclass that adds the base's options
        options = type(cfg.memory).model_fields
        assert set(cfg.memory.options()) == set(options) - {"kind", "layers"}
        assert all(f.description for name, f in options.items() if name not in ("kind", "layers")), "help text"
        params = list(inspect.signature(REGISTRY[kind]).parameters)
        assert params[:2] == ["n_head", "head_dim"]
        expected = set(cfg.memory.options()) | ({"window", "long_layer", "first"} if kind == "melodi" else set())
        if kind == "caching":  # the base kind's options sit next to caching's own
            params += list(inspect.signature(REGISTRY[cfg.memory.base]).parameters)
        assert set(layer_options(cfg, 1)) == expected and expected <= set(params[2:])
        build_model(cfg)


def test_a_key_of_another_kind_is_an_error_naming_the_kinds_that_take_it(tmp_path):
    with pytest.raises(UsageError, match=r"unknown key memory.order in command line \(an option of memory.kind=elastic, not xl\)"):
        load_config("recipes/tiny.yaml", ["memory.kind=xl", "memory.order=999"])
    with pytest.raises(UsageError, match=r"unknown key memory.cahce in command line; did you mean 'memory.cache'\?"):
        load_config("recipes/tiny.yaml", ["memory.kind=xl", "memory.cahce=3"])
    with pytest.raises(UsageError, match=r"unknown key memory.sampling in .*bad.yaml: it is now memory.schedule"):
        load_config(write(tmp_path, "bad.yaml", f"base: {Path('recipes/tiny.yaml').resolve()}\nmemory: {{sampling: gauss}}\n"))


def test_switching_kind_drops_the_old_kinds_options_and_keeps_layers(tmp_path):
    cfg = load_config(["recipes/tiny.yaml", "recipes/memory/xl.yaml"], ["memory.layers=[1]"])
    assert cfg.memory.model_dump() == {"kind": "xl", "layers": [1], "cache": 64, "grad": False}
    shown = yaml.safe_load(dump_yaml(load_config("recipes/tiny.yaml", ["memory.cache=8", "memory.kind=xl"])))
    assert shown["memory"] == {"kind": "xl", "layers": "all", "cache": 8, "grad": False}  # order of overrides does not matter
    same = load_config("recipes/tiny.yaml", ["memory.kind=elastic", "memory.order=4"])
    assert same.memory.samples == 16 and same.memory.order == 4  # same kind: options merge
    base = load_config(["recipes/tiny.yaml", "recipes/memory/caching.yaml"], ["memory.base=infinity"])
    assert base.memory.model_dump() == {"kind": "caching", "layers": "all", "base": "infinity", "aggregate": "gated",
                                        "max_caches": 3, "top_k": 2, "basis": 64, "tau": 0.5, "ridge": 0.5,
                                        "resample": 256, "sticky": False, "detach": False, "stm": 0}  # caching's own options stay


def test_config_saved_before_kinds_owned_their_options_still_loads(tmp_path):
    """An old checkpoint's config.yaml holds every kind's fields, flat, and `sampling`."""
    legacy = dict(order=8, samples=8, sampling="exponential", power=2.0, cache=64, store=768, topk=32, short_tokens=32,
                  summary_tokens=16, long_layer=None, long_tokens=16, long_store=192, tokens=16, key_dim=64, nu=3,
                  denom=True, basis=64, tau=0.5, ridge=0.5, resample=256, sticky=False, base="elastic",
                  aggregate="residual", max_caches=8, top_k=2)
    tree = yaml.safe_load(dump_yaml(load_config("recipes/tiny.yaml")))
    for kind, expected in [("elastic", {"order": 8, "samples": 8, "schedule": "exponential", "power": 2.0}),
                           ("caching", {"base": "elastic", "aggregate": "residual", "max_caches": 8, "top_k": 2,
                                        "order": 8, "samples": 8, "schedule": "exponential", "power": 2.0})]:
        tree["memory"] = {"kind": kind, "layers": "all", **legacy}
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(tree))
        assert load_config(path).memory.model_dump() == {"kind": kind, "layers": "all", **expected}


def test_melodi_gets_its_window_and_one_long_layer():
    cfg = load_config("recipes/tiny.yaml", ["memory.kind=melodi", "memory.long_layer=1"])
    assert layer_options(cfg, 0)["window"] == cfg.model.segment_len
    assert [layer_options(cfg, i)["long_layer"] for i in range(2)] == [False, True]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_deep_merges_maps_and_replaces_lists(tmp_path):
    write(tmp_path, "parts/base.yaml", Path("recipes/tiny.yaml").read_text())
    child = write(tmp_path, "exp/child.yaml", "base: ../parts/base.yaml\nmodel: {d_model: 64}\n"
                                             "memory: {layers: [1]}\ntrain: {betas: [0.8, 0.9]}\n")
    over = write(tmp_path, "exp/over.yaml", "base: child.yaml\nmemory: {layers: [0]}\n")
    cfg = load_config(over, ["train.lr=1e-3", "train.compile=true"])
    assert cfg.model.d_model == 64 and cfg.model.n_layer == 2  # merged with the base's model section
    assert cfg.memory.layers == [0] and cfg.train.betas == (0.8, 0.9)  # lists replace
    assert cfg.train.lr == 1e-3 and cfg.train.compile is True  # YAML-parsed override values
    assert cfg.run.dir == "runs/over--train.compile-true--train.lr-1e-3"  # overrides that change it: its own dir


@pytest.mark.slow
def test_config_show_round_trips(tmp_path):
    out = subprocess.run([sys.executable, "-m", "elastic_cli", "config", "show", "recipes/tiny.yaml",
                          "recipes/memory/none.yaml", "train.lr=0.01"], capture_output=True, text=True,
                         env=tiny_run.env(), cwd=tiny_run.ROOT)
    assert out.returncode == 0, out.stderr
    resolved = write(tmp_path, "resolved.yaml", out.stdout)
    again = load_config(resolved)
    assert again == load_config(["recipes/tiny.yaml", "recipes/memory/none.yaml"], ["train.lr=0.01"])
    assert yaml.safe_load(out.stdout)["train"]["lr"] == 0.01 and dump_yaml(again) == out.stdout


@pytest.mark.parametrize("text, override, message", [
    ("model: {d_modle: 64}", None, r"unknown key model.d_modle in .*bad.yaml; did you mean 'model.d_model'\?"),
    ("trian: {lr: 1.0}", None, r"unknown key trian in .*bad.yaml; did you mean 'train'\?"),
    ("", "memory.kind=elastc", r"memory.kind='elastc' in command line: choose one of armt, caching, elastic, infinity, melodi, memorizing, none, rmt, xl; did you mean 'elastic'\?"),
    ("", "memory.schedule=exponentail", r"did you mean 'exponential'\?"),
    ("model: {n_layer: two}", None, r"model.n_layer='two' in .*bad.yaml: input should be a valid integer"),
    ("", "train.betas=[0.9, x]", r"train.betas\[1\]='x' in command line: input should be a valid number"),
    ("", "run.gpus=0", r"run.gpus=0 in command line: input should be greater than 0"),
    ("", "train.learning_rate=1e-3", r"unknown key train.learning_rate in command line; did you mean 'train.lr'\?$"),
    ("", "train.max_steps=10", r"did you mean 'train.steps'\?$"),
    ("", "train.segment_len=32", r"did you mean 'model.segment_len'\? \(segment_len is in section model\)"),
    ("", "train.bogus=1", r"unknown key train.bogus in command line \(keys of train: global_batch, .*, keep_last\)"),
    ("", "run.loggers=[jsonl,mlflow]", r"run.loggers\[1\]='mlflow' in command line: choose one of jsonl, tensorboard, wandb$"),
    ("", "train.curriculum=[[0, x]]", r"train.curriculum\[0\]\[1\]='x' in command line: input should be a valid integer"),
    ("", "memory.layers=[0, 5]", r"memory.layers=\[0, 5\]: need distinct layer indices in \[0, 2\) \(command line\)"),
    ("", "train.micro_batch=3", r"train.global_batch=8 is not a multiple of train.micro_batch=3 \(.*tiny.yaml\)"),
    ("", "train.bptt_segments=9", r"train.bptt_segments=9 exceeds train.segments=4"),
    ("", "memory.samples=0", r"memory.samples=0 in command line: input should be greater than 0"),
    ("", "memory.order=-1", r"memory.order=-1 .*greater than 0"),
    ("", "model.n_head=3", r"model.d_model=128 must be n_head=3 times an even head width"),
    ("", "train.lr", r"override 'train.lr' is not of the form section.key=value"),
    ("", "model.d_model.x=1", r"model.d_model is not a section"),
    ("memory: {kind: melodi, long_layer: 3}", None, r"memory.long_layer=3 is not one of the memory layers \[0, 1\] \(.*bad.yaml\)"),
])
def test_config_errors_name_path_file_and_suggestion(tmp_path, text, override, message):
    bad = write(tmp_path, "bad.yaml", "base: " + str(Path("recipes/tiny.yaml").resolve()) + "\n" + text + "\n")
    with pytest.raises(UsageError, match=message):
        load_config(bad, [override] if override else [])


def test_missing_keys_cycles_and_bad_yaml(tmp_path):
    with pytest.raises(UsageError, match=r"missing key model.vocab_size"):
        load_config(write(tmp_path, "m.yaml", "model: {d_model: 8}\ndata: {path: x}\ntrain: {}\n"))
    a = write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(UsageError, match="cycle"):
        load_config(a)
    with pytest.raises(UsageError, match=r"y.yaml: invalid YAML"):
        load_config(write(tmp_path, "y.yaml", "model: [\n"))
    with pytest.raises(UsageError, match="cannot read recipe"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.slow
def test_config_error_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "elastic_cli", "train", "recipes/tiny.yaml", "train.lrr=1"],
                          capture_output=True, text=True, env=tiny_run.env(), cwd=tiny_run.ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown key train.lrr in command line; did you mean 'train.lr'?"


def test_data_checks_are_data_errors(tmp_path):
    import hashlib

    cfg = load_config("recipes/tiny.yaml", [f"data.tokenizer={write(tmp_path, 't.model', 'spm')}",
                                            f"data.path={tmp_path / 'none'}"])
    with pytest.raises(DataError, match="model.vocab_size=8000 but d/meta.json has vocab_size=4096"):
        check_data(cfg, {"vocab_size": 4096, "tokenizer_sha256": None}, "d")
    with pytest.raises(DataError, match=r"d was prepared with books-8k.model \(sha256 000000000000\), but the "
                                        r"model's tokenizer is \S+/t.model \(sha256 [0-9a-f]{12}\)"):
        check_data(cfg, {"vocab_size": 8000, "tokenizer_sha256": "0" * 64, "tokenizer": "books-8k.model"}, "d")
    assert check_data(cfg, {"vocab_size": 8000, "tokenizer_sha256": hashlib.sha256(b"spm").hexdigest()}, "d") is None
    unnamed = load_config("recipes/tiny.yaml", ["data.tokenizer=null", f"data.path={tmp_path / 'none'}"])
    assert "records no tokenizer" in check_data(unnamed, {"vocab_size": 8000, "tokenizer_sha256": "0" * 64}, "d")


def test_memory_option_checks():
    with pytest.raises(UsageError, match=r"memory.topk=9 exceeds memory.store=8"):
        load_config("recipes/tiny.yaml", ["memory.kind=memorizing", "memory.topk=9", "memory.store=8"])
    with pytest.raises(UsageError, match=r"memory.long_tokens=0 must be in \[1, memory.long_store=192\]"):
        load_config("recipes/tiny.yaml", ["memory.kind=melodi", "memory.long_layer=0", "memory.long_tokens=0"])
    with pytest.raises(UsageError, match=r"memory.cache=-1 in command line: input should be greater than or equal to 0"):
        load_config("recipes/tiny.yaml", ["memory.kind=xl", "memory.cache=-1"])
    with pytest.raises(UsageError, match=r"memory.base='xl' in command line: choose one of armt, elastic, infinity"):
        load_config("recipes/tiny.yaml", ["memory.kind=caching", "memory.base=xl"])
    bad = load_config("recipes/tiny.yaml", ["memory.kind=caching", "memory.base=elastic"])  # valid fields, rejected combination
    with pytest.raises(UsageError, match=r"memory.kind=caching: .*only aggregate=residual applies"):
        build_model(bad)
