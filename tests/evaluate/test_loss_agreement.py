"""For every memory kind, the per-token loss on a window at the start of a document is the same
(fp32, <= 1e-5) in the three places a model is scored: `train.train_step`'s forward (segments,
gradient truncation, resets), `elastic eval`'s scorer (memory carried through the document) and
streaming generation's `Decoder.step` with teacher forcing. The one intended difference (training
windows start with empty memory, eval carries it through the document) is absent here because the
window starts where the document does (docs/internals.md, "Training")."""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elastic_cli.evaluate import scoring
from elastic_cli.train import step as training
from elastic_cli.build import build_model
from elastic_cli.config import load_config
from elastic_cli.data.loader import PreparedData, SegmentLoader, Windows
from elastic_cli.memory import REGISTRY
from elastic_cli.model.init import init_weights
from elastic_cli.train.optim import build_optimizer
from tests.helpers import tiny_run

S = 4  # segments per window; tiny_run documents are longer than S x 16 tokens


def recording(monkeypatch, module) -> list[torch.Tensor]:
    """Make `module.F.cross_entropy` also record its per-token losses (in call order)."""
    seen, original = [], F.cross_entropy

    def cross_entropy(logits, target, *args, **kwargs):
        flat = logits.float() if logits.dim() == 2 else logits.float().transpose(1, 2)  # eval passes (B, V, L)
        seen.append(original(flat.reshape(-1, flat.shape[-1]), target.reshape(-1).clamp(min=0),
                             reduction="none").detach())  # (tokens,)
        return original(logits, target, *args, **kwargs)

    monkeypatch.setattr(module.F, "cross_entropy", cross_entropy)
    return seen


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_train_eval_and_generation_score_each_token_alike(kind, tiny_corpus, monkeypatch):
    cfg = load_config(["recipes/tiny.yaml", f"recipes/memory/{kind}.yaml"], tiny_run.overrides(
        tiny_corpus, tiny_corpus, f"memory.kind={kind}", f"train.segments={S}", "train.bptt_segments=2",
        "train.global_batch=1", "train.micro_batch=1"))
    model = build_model(cfg)
    init_weights(model, 0)
    prepared = PreparedData(tiny_corpus)
    batch = SegmentLoader(prepared, "val", Windows(1, S, 16), 0).next_batch()  # the first val document's first window
    doc = np.asarray(prepared.tokens(prepared.documents("val")[0]))
    assert len(doc) > S * 16 + 1 and np.array_equal(batch.inputs[0].flatten().numpy(), doc[:S * 16])
    n = S * 16  # scored tokens: targets doc[1 : n + 1]

    model.eval()
    with torch.no_grad():
        seen = recording(monkeypatch, scoring)
        scoring.score(model, [doc[:n + 1]], [None], 1, torch.device("cpu"))
        eval_nll = torch.cat(seen)[:n]
        stream, gen = model.start_stream(1, "cpu"), []
        for i in range(n):  # generation's path: one token at a time, teacher-forced
            logits, stream = model.step(torch.tensor([[int(doc[i])]]), stream)  # (1, 1, V)
            gen.append(-torch.log_softmax(logits[0, -1].float(), -1)[int(doc[i + 1])])
    monkeypatch.undo()
    model.train()
    seen = recording(monkeypatch, training)
    opt = build_optimizer(model, 0.0, cfg.train.betas, 0.0, torch.device("cpu"))
    training.train_step(cfg, model, opt, batch, nullcontext(), torch.device("cpu"))
    train_nll = torch.cat(seen)

    torch.testing.assert_close(train_nll, eval_nll, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(gen), eval_nll, rtol=0, atol=1e-5)
