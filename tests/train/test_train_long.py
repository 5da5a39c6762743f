"""Training that can teach memory: activation checkpointing of segments (same gradients), answer-only
loss (equals eval's answer NLL), and a curriculum over segments per window (exact resume across a
stage boundary)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from elastic_cli.config import load_config
from elastic_cli.data.loader import Batch, PreparedData, SegmentLoader, Windows
from elastic_cli.data.tasks import TaskOptions, prepare_task
from elastic_cli.train.optim import segments_at
from elastic_cli.evaluate.scoring import score
from elastic_cli.train.loop import train
from elastic_cli.train.step import train_step
from tests.helpers import tiny_run
from tests.helpers.memory_checks import SEG, V
from tests.helpers.contract_checks import KINDS, build


def _cfg(**train):
    t = {"micro_batch": 2, "bptt_segments": 4, "checkpoint_segments": False, "loss_on": "all", "aux_weight": 0.0,
         "grad_clip": 0.0, **train}
    return SimpleNamespace(train=SimpleNamespace(**t))


def _grads(model, cfg, batch):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves weights (and .grad) alone
    loss, _, _ = train_step(cfg, model, opt, batch, torch.autocast("cpu", enabled=False), torch.device("cpu"))
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", KINDS)
def test_checkpointed_segments_give_the_same_gradients(kind):
    """Full BPTT over 4 segments (a document starts at segment 2 of row 1): recomputing each segment
    in backward gives the plain gradients to 1e-6 (fp32)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (4, 4, SEG), generator=g)  # (b, S, L)
    y = torch.randint(0, V, (4, 4, SEG), generator=g)
    y[0, 1, :3] = -1
    start = torch.zeros(4, 4, dtype=torch.bool)
    start[:, 0] = True
    start[1, 2] = True
    batch = Batch(x, y, start)
    model = build(kind, seed=1)
    plain_loss, plain = _grads(model, _cfg(), batch)
    ckpt_loss, ckpt = _grads(model, _cfg(checkpoint_segments=True), batch)
    assert ckpt_loss == pytest.approx(plain_loss, abs=1e-6)
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    if kind != "none":
        assert any(".memory." in n or "blocks.1" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def mqar_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("mqar") / "d"
    prepare_task("mqar", 4 * 16, 24, str(tiny_run.TOKENIZER), str(out), TaskOptions(seed=1, val_frac=0.0, test_frac=0.0, options={"pairs": 3, "segment_len": 16, "distance": (0, 3), "keys": 8, "values": 8}))
    return PreparedData(out)


@pytest.mark.parametrize("kind", ["none", "elastic", "xl"])
def test_answer_only_training_loss_equals_eval_answer_nll(mqar_data, kind, tmp_path):
    """One window = one whole document (4 segments of 16): the loss train_step reports with
    train.loss_on=answers is eval's mean answer NLL on the same documents."""
    cfg = load_config("recipes/tiny.yaml", tiny_run.overrides(mqar_data.path, tmp_path, f"memory.kind={kind}",
                                                              "train.loss_on=answers", "train.bptt_segments=4"))
    from elastic_cli.build import build_model
    from elastic_cli.model.init import init_weights

    model = build_model(cfg)
    init_weights(model, 0)
    docs = mqar_data.documents("train")
    loader = SegmentLoader(mqar_data, "train", Windows(len(docs), 4, 16), seed=0, answers_only=True)
    batch = loader.next_batch()  # every train document once (a permutation of them)
    cfg_step = _cfg(micro_batch=len(docs), loss_on="answers")
    loss, n, _ = train_step(cfg_step, model, torch.optim.SGD(model.parameters(), lr=0.0), batch,
                            torch.autocast("cpu", enabled=False), torch.device("cpu"))
    model.eval()
    tally = score(model, [mqar_data.tokens(i) for i in docs], [mqar_data.answers(i) for i in docs], 8,
                  torch.device("cpu"))
    assert n == tally.answer_tokens == 3 * len(docs)
    assert loss == pytest.approx(tally.answer_nll / tally.answer_tokens, abs=1e-5)
    # the dense path (logits everywhere, -1 targets ignored) gives the same loss
    dense, _, _ = train_step(_cfg(micro_batch=len(docs)), model, torch.optim.SGD(model.parameters(), lr=0.0),
                             batch, torch.autocast("cpu", enabled=False), torch.device("cpu"))
    assert dense == pytest.approx(loss, abs=1e-5)


def test_segments_at_follows_the_stages():
    stages = [(0, 1), (3, 2), (5, 4)]
    assert [segments_at(s, stages, 8) for s in range(7)] == [1, 1, 1, 2, 2, 4, 4]
    assert [segments_at(s, [(2, 3)], 8) for s in range(4)] == [8, 8, 3, 3]
    assert segments_at(5, [], 6) == 6


def test_set_segments_continues_the_stream_at_the_next_window_boundary(mqar_data):
    """After k windows of 1 segment, windows of 2 start at segment ceil(k/2)*2 of the same epoch."""
    one = SegmentLoader(mqar_data, "train", Windows(1, 1, 16), seed=0)
    two = SegmentLoader(mqar_data, "train", Windows(1, 2, 16), seed=0)
    for _ in range(3):
        one.next_batch()
    one.set_segments(2)
    two.window = 2  # segments 4, 5 of the epoch
    a, b = one.next_batch(), two.next_batch()
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.doc_start, b.doc_start)


@pytest.mark.slow
def test_curriculum_resume_is_bitwise_across_a_stage_boundary(mqar_data, tmp_path):
    """Stages 1 -> 2 -> 4 segments; a run stopped at the step where a stage starts and resumed ends
    with the same losses and weights as the uninterrupted run."""
    base = tiny_run.overrides(mqar_data.path, tmp_path / "a", "train.steps=6", "train.save_every=3",
                              "train.curriculum=[[0,1],[3,2],[5,4]]", "train.loss_on=answers",
                              "train.checkpoint_segments=true", "train.bptt_segments=4")
    train(load_config("recipes/tiny.yaml", base))
    train(load_config("recipes/tiny.yaml", [*base, f"run.dir={tmp_path}/b"]),
          resume=str(tmp_path / "a" / "checkpoints" / "step_00000003"))
    straight, resumed = tiny_run.metrics(tmp_path / "a"), tiny_run.metrics(tmp_path / "b")
    assert [m["loss"] for m in straight[3:]] == [m["loss"] for m in resumed]
    # tokens per step follow the stages: 1, 1, 1, 2, 2, 4 segments of the same documents' answers
    per_step = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + straight, straight)]
    assert per_step[0] < per_step[3] < per_step[5]
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "a" / "checkpoints" / "step_00000006" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoints" / "step_00000006" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_curriculum_is_checked_before_training(mqar_data, tiny_corpus, tmp_path):
    from elastic_cli.errors import UsageError

    for bad in ("[[0,1],[0,2]]", "[[0,9]]", "[[7,1]]"):
        with pytest.raises(UsageError, match="train.curriculum"):
            load_config("recipes/tiny.yaml", tiny_run.overrides(mqar_data.path, tmp_path, f"train.curriculum={bad}"))
    with pytest.raises(Exception, match="loss_on=answers"):
        train(load_config("recipes/tiny.yaml", tiny_run.overrides(tiny_corpus, tmp_path / "r",
                                                                  "train.loss_on=answers")))
