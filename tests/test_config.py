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

import tiny_run
from elastic_cli.build import build_model, layer_options
from elastic_cli.config import MEMORY_KINDS, MEMORY_OPTIONS, check_data, dump_yaml, load_config
from elastic_cli.errors import DataError, UsageError
from elastic_cli.memory import REGISTRY

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
    assert set(MEMORY_KINDS) == set(REGISTRY) == set(MEMORY_OPTIONS)
    for kind in MEMORY_KINDS:
        cfg = load_config("recipes/tiny.yaml", [f"memory.kind={kind}", "memory.long_layer=1"])
        params = list(inspect.signature(REGISTRY[kind]).parameters)
        assert params[:2] == ["n_head", "head_dim"]
        expected = set(MEMORY_OPTIONS[kind]) | ({"window", "long_layer"} if kind == "melodi" else set())
        if kind == "caching":  # nested: the base kind's options ride along
            expected |= set(MEMORY_OPTIONS[cfg.memory.base])
            params += list(inspect.signature(REGISTRY[cfg.memory.base]).parameters)
        assert set(layer_options(cfg, 1)) == expected and expected <= set(params[2:])
        build_model(cfg)


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
    assert cfg.run.dir == "runs/over"


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
    ("", "memory.kind=elastc", r"memory.kind='elastc' in command line: choose one of none, elastic, xl, memorizing, melodi, rmt, armt, infinity, caching; did you mean 'elastic'\?"),
    ("", "memory.sampling=exponentail", r"did you mean 'exponential'\?"),
    ("model: {n_layer: two}", None, r"model.n_layer='two' in .*bad.yaml: input should be a valid integer"),
    ("", "train.betas=[0.9, x]", r"train.betas.1='x' in command line: input should be a valid number"),
    ("", "run.gpus=0", r"run.gpus=0 in command line: input should be greater than 0"),
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


def test_config_error_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "elastic_cli", "train", "recipes/tiny.yaml", "train.lrr=1"],
                          capture_output=True, text=True, env=tiny_run.env(), cwd=tiny_run.ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown key train.lrr in command line; did you mean 'train.lr'?"


def test_data_checks_are_data_errors(tmp_path):
    cfg = load_config("recipes/tiny.yaml", [f"data.tokenizer={write(tmp_path, 't.model', 'spm')}"])
    with pytest.raises(DataError, match="model.vocab_size=8000 but d/meta.json has vocab_size=4096"):
        check_data(cfg, 4096, None, "d")
    with pytest.raises(DataError, match="is not the tokenizer d was prepared with"):
        check_data(cfg, 8000, "0" * 64, "d")
    import hashlib

    check_data(cfg, 8000, hashlib.sha256(b"spm").hexdigest(), "d")


def test_memory_option_checks():
    with pytest.raises(UsageError, match=r"memory.topk=9 exceeds memory.store=8"):
        load_config("recipes/tiny.yaml", ["memory.kind=memorizing", "memory.topk=9", "memory.store=8"])
    with pytest.raises(UsageError, match=r"memory.long_tokens=0 must be in \[1, memory.long_store=192\]"):
        load_config("recipes/tiny.yaml", ["memory.kind=melodi", "memory.long_layer=0", "memory.long_tokens=0"])
    with pytest.raises(UsageError, match=r"memory.cache=-1 in command line: input should be greater than or equal to 0"):
        load_config("recipes/tiny.yaml", ["memory.kind=xl", "memory.cache=-1"])
    with pytest.raises(UsageError, match=r"memory.base='xl' in command line: choose one of elastic, armt, infinity"):
        load_config("recipes/tiny.yaml", ["memory.kind=caching", "memory.base=xl"])
    bad = load_config("recipes/tiny.yaml", ["memory.kind=caching", "memory.base=elastic"])  # valid fields, rejected combination
    with pytest.raises(UsageError, match=r"memory.kind=caching: .*only aggregate=residual applies"):
        build_model(bad)
