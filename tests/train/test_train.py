"""End-to-end training on a tiny prepared dataset (CPU, fp32): loss goes down and matches the golden
list, resume is exact, run-directory rules and data checks hold."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from elastic_cli.runs import inference
from elastic_cli.cli.app import cli
from elastic_cli.config import load_config
from elastic_cli.errors import DataError, UsageError
from elastic_cli.train.optim import lr_at
from elastic_cli.train.loop import train
from tests.helpers import tiny_run

GOLDEN = Path(__file__).parent / "golden" / "tiny_losses.json"
GOLDEN_COMMAND = "ELASTIC_REGEN_GOLDEN=1 OMP_NUM_THREADS=1 python -m pytest tests/train/test_train.py -k golden"
GOLDEN_OVERRIDES = ["train.steps=8", "train.warmup=2", "train.log_every=1", "train.eval_every=0",
                    "train.save_every=0", "data.tokenizer=null", "run.device=cpu"]


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in tiny_run.metrics(run_dir)]


@pytest.mark.slow
def test_tiny_recipe_loss_goes_down_and_matches_golden(tiny_corpus, tmp_path):
    cfg = load_config("recipes/tiny.yaml",
                      [*GOLDEN_OVERRIDES, f"data.path={tiny_corpus}", f"run.dir={tmp_path}/run"])
    train(cfg)
    got = losses(tmp_path / "run")
    assert len(got) == 8 and got[-1] < got[0] - 0.5  # learning, not just noise
    t = cfg.train
    assert [m["lr"] for m in tiny_run.metrics(tmp_path / "run")] == [lr_at(s, t.lr, t.min_lr, t.warmup, t.steps) for s in range(8)]
    if os.environ.get("ELASTIC_REGEN_GOLDEN"):
        GOLDEN.write_text(json.dumps({"command": GOLDEN_COMMAND, "recipe": "recipes/tiny.yaml",
                                      "overrides": GOLDEN_OVERRIDES + ["data.path=<tests/helpers/tiny_run.py dataset>"],
                                      "rtol": 1e-4, "losses": got}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert golden["overrides"][:-1] == GOLDEN_OVERRIDES
    torch.testing.assert_close(torch.tensor(got), torch.tensor(golden["losses"]), rtol=golden["rtol"], atol=0)


@pytest.mark.slow
def test_resume_is_exact(tiny_corpus, tmp_path):
    """2k steps straight == k steps, then a fresh process state resumed from the step-k checkpoint:
    every loss after the resume is bitwise equal, and so are the final weights."""
    base = tiny_run.overrides(tiny_corpus, tmp_path / "a", "train.save_every=3", "train.steps=6")
    train(load_config("recipes/tiny.yaml", base))
    ckpt = tmp_path / "a" / "checkpoints" / "step_00000003"
    train(load_config("recipes/tiny.yaml", [*base, f"run.dir={tmp_path}/b"]), resume=str(ckpt))
    straight, resumed = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [m["step"] for m in tiny_run.metrics(tmp_path / "b")] == [4, 5, 6]
    assert resumed == straight[3:]
    a = inference.load_checkpoint(tmp_path / "a").model.state_dict()
    b = inference.load_checkpoint(tmp_path / "b").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_auto_continues_the_newest_checkpoint(tiny_corpus, tmp_path):
    args = tiny_run.overrides(tiny_corpus, tmp_path / "run", "train.save_every=2", "train.steps=4")
    train(load_config("recipes/tiny.yaml", args))
    straight = losses(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_00000004")  # as if stopped after step 2... 
    (tmp_path / "run" / "checkpoints" / "step_00000004.tmp").mkdir()  # ...while writing step 4
    summary = train(load_config("recipes/tiny.yaml", args), resume="auto")
    assert summary.step == 4
    # the rows of steps 3-4 logged before the stop are dropped, not repeated: one row per step
    assert [m["step"] for m in tiny_run.metrics(tmp_path / "run")] == [1, 2, 3, 4]
    assert losses(tmp_path / "run") == straight


@pytest.mark.parametrize("kind, changes", [("infinity", True), ("elastic", False)])
def test_aux_weight_adds_the_memories_aux_loss(tiny_corpus, tmp_path, kind, changes):
    """train.aux_weight scales model.aux_loss (the ∞-former KL) into the objective: it changes the
    update for a kind that has an aux loss and nothing for one that has none."""
    weights = []
    for w in (0.0, 1.0):
        args = tiny_run.overrides(tiny_corpus, tmp_path / f"{w}", f"memory.kind={kind}", f"train.aux_weight={w}",
                                  "train.steps=1", "train.warmup=0")
        train(load_config("recipes/tiny.yaml", args))
        weights.append(inference.load_checkpoint(tmp_path / f"{w}").model.state_dict())
    same = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert same != changes


def test_non_empty_run_dir_needs_resume_or_overwrite(tiny_corpus, tmp_path):
    cfg = load_config("recipes/tiny.yaml",
                      tiny_run.overrides(tiny_corpus, tmp_path / "run", "train.steps=1", "train.warmup=0"))
    train(cfg)
    with pytest.raises(UsageError, match="not empty.*--resume auto.*--overwrite"):
        train(cfg)
    assert train(cfg, overwrite=True).step == 1
    assert len(tiny_run.metrics(tmp_path / "run")) == 1


def test_architecture_change_on_resume_is_data_error(tiny_corpus, tmp_path):
    args = tiny_run.overrides(tiny_corpus, tmp_path / "run", "train.steps=2")
    train(load_config("recipes/tiny.yaml", args))
    with pytest.raises(DataError, match="model.mlp_hidden"):
        train(load_config("recipes/tiny.yaml", [*args, "model.mlp_hidden=32", "train.steps=3"]), resume="auto")


def test_vocab_mismatch_is_data_error(tiny_corpus, tmp_path):
    cfg = load_config("recipes/tiny.yaml", tiny_run.overrides(tiny_corpus, tmp_path / "run", "model.vocab_size=4096"))
    with pytest.raises(DataError, match="vocab_size=4096.*meta.json has vocab_size=8000"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_sizes_and_writes_nothing(tiny_corpus, tmp_path):
    args = ["train", "recipes/tiny.yaml", *tiny_run.overrides(tiny_corpus, tmp_path / "run"), "--gpus", "2",
            "--dry-run"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    cfg = load_config("recipes/tiny.yaml", tiny_run.overrides(tiny_corpus, tmp_path / "run"))
    from elastic_cli.build import build_model

    params = sum(p.numel() for p in build_model(cfg).parameters())
    assert f"parameters\t{params:,}" in result.output
    assert "tokens_per_step\t256" in result.output  # 4 windows x 4 segments x 16 tokens
    assert "elastic_cli.train.torchrun --nproc-per-node 2" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
def test_cuda_bf16_and_compile_match_cpu_fp32(tiny_corpus, tmp_path):
    """On CUDA (bf16 autocast, torch.compile): the first loss is the fp32 CPU loss up to bf16 rounding,
    training still goes down, and the checkpoint (saved from the unwrapped module) loads on CPU."""
    cpu = train(load_config("recipes/tiny.yaml", tiny_run.overrides(tiny_corpus, tmp_path / "cpu", "train.steps=4")))
    gpu = train(load_config("recipes/tiny.yaml", tiny_run.overrides(
        tiny_corpus, tmp_path / "gpu", "train.steps=4", "run.device=cuda", "train.dtype=auto", "train.compile=true")))
    first_cpu, first_gpu = losses(tmp_path / "cpu")[0], losses(tmp_path / "gpu")[0]
    assert abs(first_gpu - first_cpu) < 2e-2 * first_cpu
    assert gpu.loss < first_gpu and abs(gpu.loss - cpu.loss) < 0.1 * cpu.loss
    inference.load_checkpoint(tmp_path / "gpu")


def test_reset_at_empties_only_rows_starting_a_document_and_skips_no_op_segments():
    from elastic_cli.memory import REGISTRY
    from elastic_cli.model.decoder import Decoder, DecoderShape
    from elastic_cli.model.init import init_weights
    from elastic_cli.evaluate.scoring import reset_at

    model = Decoder(DecoderShape(37, 16, 1, 2, 24, 6), {0: REGISTRY["elastic"](2, 8, order=4, samples=3)})
    init_weights(model, seed=0)
    _, states = model(torch.randint(0, 37, (2, 6), generator=torch.Generator().manual_seed(0)),
                      model.empty_states(2, "cpu"))
    starts = torch.tensor([[True, False, True], [True, False, False]])  # (rows, segments)
    assert reset_at(model, states, starts, 0) is states  # fresh window: nothing to do
    assert reset_at(model, states, starts, 1) is states  # no row starts a document
    after = reset_at(model, states, starts, 2)[0]  # row 0 starts a document at segment 2
    assert after.t.tolist() == [0, 6] and not after.ck[0].any()
    assert torch.equal(after.ck[1], states[0].ck[1]) and torch.equal(after.cv[1], states[0].cv[1])
