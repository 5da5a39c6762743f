"""The learning-rate schedule against its closed form, and AdamW's weight-decay groups."""
from __future__ import annotations

import math

import pytest
import torch

from elastic_cli.build import build_model
from elastic_cli.config import load_config
from elastic_cli.train.optim import build_optimizer, lr_at, param_groups, set_lr


@pytest.mark.parametrize("lr, min_lr, warmup, steps", [(3e-3, 3e-4, 15, 150), (1.0, 0.0, 0, 11), (6e-4, 6e-5, 500, 10000)])
def test_lr_matches_closed_form(lr, min_lr, warmup, steps):
    for step in range(steps):
        if step < warmup:
            expected = lr * (step + 1) / warmup
        else:
            expected = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - 1 - warmup)))
        assert lr_at(step, lr, min_lr, warmup, steps) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lr_at(warmup, lr, min_lr, warmup, steps) == pytest.approx(lr)  # peak right after warmup
    assert lr_at(steps - 1, lr, min_lr, warmup, steps) == pytest.approx(min_lr)  # floor at the last step
    if warmup:
        assert lr_at(warmup // 2 - 1, lr, min_lr, warmup, steps) == pytest.approx(lr * (warmup // 2) / warmup)
    after = [lr_at(s, lr, min_lr, warmup, steps) for s in range(warmup, steps)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_single_step_after_warmup_uses_peak_lr():
    assert lr_at(0, 1e-3, 1e-4, 0, 1) == 1e-3
    assert lr_at(2, 1e-3, 1e-4, 2, 3) == 1e-3


@pytest.mark.parametrize("tie", [True, False])
def test_decay_only_matrices(tie):
    model = build_model(load_config("recipes/tiny.yaml", [f"model.tie_embeddings={tie}"]))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if p.dim() == 1}
    assert all(names[id(p)].endswith("norm.weight") for p in no_decay["params"])
    assert {names[id(p)] for p in decay["params"]} >= {"embed.weight", "blocks.0.attn.wqkv.weight"}
    assert ("lm_head.weight" in {names[id(p)] for p in decay["params"]}) == (not tie)
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())  # each tensor once, tied or not


def test_set_lr_reaches_every_group():
    model = build_model(load_config("recipes/tiny.yaml", ["model.n_layer=1"]))
    opt = build_optimizer(model, 1e-3, (0.9, 0.95), 0.1, torch.device("cpu"))
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
