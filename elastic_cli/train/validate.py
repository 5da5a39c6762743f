"""The periodic validation loss of a training run (`train.eval_every`): training-style windows of the
val split, read by the one segment loop (`evaluate.scoring.read`)."""
from __future__ import annotations

import torch

from elastic_cli.data.loader import SegmentLoader, Windows
from elastic_cli.evaluate.scoring import read
from elastic_cli.train import distributed


@torch.no_grad()
def evaluate_loss(cfg, model, data, autocast, device) -> tuple[float, float, dict[str, float]]:
    """Mean token loss and argmax accuracy on the first `train.eval_batches` global batches of the
    validation split (a fresh loader each time: the same windows at every evaluation), memory empty
    at each window start, and the memories' diagnostics (`Decoder.memory_metrics`, e.g. ARMT's write
    gate β) averaged over every segment written. With train.loss_on=answers loss and accuracy are
    over answer tokens only."""
    t = cfg.train
    loader = SegmentLoader(data, cfg.data.val_split, Windows(t.global_batch, t.segments, cfg.model.segment_len),
                           t.seed, distributed.rank(), distributed.world(), answers_only=t.loss_on == "answers")
    was_training = model.training
    model.eval()
    nll, correct, count, writes, diag = 0.0, 0, 0, 0, {}
    for _ in range(t.eval_batches):
        batch = loader.next_batch()
        for r0 in range(0, batch.inputs.shape[0], t.micro_batch):
            x = batch.inputs[r0:r0 + t.micro_batch].to(device).flatten(1)  # (m, S*L)
            y = batch.targets[r0:r0 + t.micro_batch].to(device).flatten(1)  # (m, S*L)
            first = batch.doc_start[r0:r0 + t.micro_batch]  # (m, S) on the CPU
            L = cfg.model.segment_len
            for s, seg_nll, logits, states in read(model, x, y, model.empty_states(x.shape[0], device),
                                                   lambda: autocast, first):
                target = y[:, s * L:(s + 1) * L]  # (m, L)
                nll += seg_nll.sum().item()
                correct += int(((logits.argmax(-1) == target) & (target != -1)).sum())
                count += int((target != -1).sum())
                for name, value in model.memory_metrics(states).items():
                    diag[name] = diag.get(name, 0.0) + float(value)
                writes += 1
    model.train(was_training)
    nll, correct, count, writes, *sums = distributed.all_reduce_sum([nll, correct, count, writes, *diag.values()])
    return nll / max(count, 1), correct / max(count, 1), {k: v / max(writes, 1) for k, v in zip(diag, sums)}
