"""One training step (`train_step`), the segment loss it is made of, and the periodic validation pass.

`train_step` reads only `cfg.train`; `elastic bench` times exactly this function.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as recompute

from elastic_cli import distributed
from elastic_cli.data.loader import SegmentLoader
from elastic_cli.errors import Diverged
from elastic_cli.memory.base import detach_state


def train_step(cfg, model, optimizer, batch, autocast, device, net=None, forward=None) -> tuple[float, int, float]:
    """One optimizer step over this rank's rows of the global batch; returns the global mean loss,
    the global number of target tokens and the gradient norm before clipping. Reads only `cfg.train`.
    `net` is the (DDP-)wrapped model, `forward` the (compiled) callable; both default to `model`.
    `elastic bench` times exactly this function."""
    net = model if net is None else net
    forward = net if forward is None else forward
    t = cfg.train
    rows, segments = batch.inputs.shape[:2]
    local = int((batch.targets != -1).sum())
    total = int(distributed.all_reduce_sum([local])[0])
    scale = distributed.world() / max(total, 1)  # DDP averages over ranks: undo it, then divide by all tokens
    optimizer.zero_grad(set_to_none=True)
    chunks, where = [], []  # per BPTT chunk: its summed NLL (a device scalar) and (micro-batch, first segment)
    starts = list(range(0, rows, t.micro_batch))
    for i, r0 in enumerate(starts):
        x = batch.inputs[r0:r0 + t.micro_batch].to(device, non_blocking=True)  # (m, S, L)
        y = batch.targets[r0:r0 + t.micro_batch].to(device, non_blocking=True)  # (m, S, L)
        first = batch.doc_start[r0:r0 + t.micro_batch]  # (m, S), kept on the CPU: read by reset_at
        states = model.empty_states(x.shape[0], device)
        bptt = min(t.bptt_segments, segments)
        for c0 in range(0, segments, bptt):
            last = i == len(starts) - 1 and c0 + bptt >= segments
            with distributed.no_sync(net, skip=not last):  # DDP reduces once, at the very last backward
                chunk = aux = torch.zeros((), device=device)
                with autocast:
                    for s in range(c0, min(c0 + bptt, segments)):
                        states = reset_at(model, states, first, s, device)  # memory empties at document starts
                        write = s < segments - 1 or bool(t.aux_weight)  # the window's last state is dropped
                        args = (forward, x[:, s], y[:, s], states, t.loss_on == "answers", write)
                        if t.checkpoint_segments:  # keep only the states between segments; recompute in backward
                            nll, states = recompute(segment_nll, *args, use_reentrant=False)
                        else:
                            nll, states = segment_nll(*args)
                        chunk = chunk + nll
                        if t.aux_weight:  # mean over segments, micro-batches and (by DDP) ranks
                            aux = aux + model.aux_loss(states) / (len(starts) * segments)
                (chunk * scale + t.aux_weight * aux).backward()
            chunks.append(chunk.detach())  # stays on the device: no host sync per chunk
            where.append((i, c0))
            states = detach_state(states)  # truncated BPTT: no gradient into earlier chunks
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
    *values, norm = torch.stack([*chunks, grad_norm.to(chunks[0].dtype)]).tolist()  # the step's one host sync
    bad = next((w for w, v in zip(where, values) if not math.isfinite(v)), None)  # this rank's first non-finite chunk
    loss = distributed.all_reduce_sum([sum(values)])[0] / max(total, 1)
    if not (math.isfinite(loss) and math.isfinite(norm)):  # the same on every rank: all stop
        raise Diverged(nonfinite_message(loss, norm, distributed.all_gather_object(bad), t.micro_batch))
    optimizer.step()  # only finite updates: NaN weights are never saved
    return loss, total, norm


def nonfinite_message(loss: float, grad_norm: float, bad: list, micro_batch: int) -> str:
    """Where a non-finite loss appeared: per rank, (micro-batch, first segment of its chunk) or None."""
    where = [f"rank {r} micro-batch {b[0]} (rows {b[0] * micro_batch}..{(b[0] + 1) * micro_batch - 1}, segments "
             f"from {b[1]})" for r, b in enumerate(bad) if b is not None]
    what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm} (loss {loss:.4f})"
    return f"{what} in {', '.join(where) or 'the backward pass'}"


def segment_nll(forward, x, y, states, sparse: bool = False, write: bool = True):
    """Summed next-token NLL of one segment (targets -1 ignored) and the new memory states (None
    with write=False: the memories are not written). x, y: (m, L). `sparse`: project to the
    vocabulary only where there is a target (few answer tokens). A function of its inputs only, so
    torch.utils.checkpoint can recompute it."""
    if sparse:
        select = y != -1  # (m, L)
        logits, states = forward(x, states, select, write=write)  # (n, V)
        return F.cross_entropy(logits.float(), y[select], reduction="sum"), states
    logits, states = forward(x, states, write=write)  # (m, L, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum"), states


def reset_at(model, states, doc_start, s: int, device):
    """Empty the memory of rows whose document starts at segment s. doc_start (m, S) bool on the CPU,
    and so is the mask handed to the memories (each moves it where its leaves are; a host-side leaf,
    like Elastic Memory's t, needs no sync). No work at s = 0 (the window's states are fresh) or where
    no row starts a document: the reset builds an empty state and a select per leaf, which the hot
    path should not pay every segment."""
    if s == 0 or not bool(doc_start[:, s].any()):
        return states
    return model.reset_states(states, doc_start[:, s])


@torch.no_grad()
def evaluate_loss(cfg, model, data, autocast, device) -> tuple[float, float, dict[str, float]]:
    """Mean token loss and argmax accuracy on the first `train.eval_batches` global batches of the
    validation split (a fresh loader each time: the same windows at every evaluation), and the
    memories' diagnostics (`Decoder.memory_metrics`, e.g. ARMT's write gate β) averaged over every
    segment written. With train.loss_on=answers loss and accuracy are over answer tokens only."""
    t = cfg.train
    loader = SegmentLoader(data, cfg.data.val_split, t.global_batch, t.segments, cfg.model.segment_len,
                           t.seed, distributed.rank(), distributed.world(), answers_only=t.loss_on == "answers")
    was_training = model.training
    model.eval()
    nll, correct, count = 0.0, 0, 0
    diag: dict[str, float] = {}
    writes = 0
    for _ in range(t.eval_batches):
        batch = loader.next_batch()
        for r0 in range(0, batch.inputs.shape[0], t.micro_batch):
            x = batch.inputs[r0:r0 + t.micro_batch].to(device)  # (m, S, L)
            y = batch.targets[r0:r0 + t.micro_batch].to(device)  # (m, S, L)
            first = batch.doc_start[r0:r0 + t.micro_batch]  # (m, S) on the CPU
            states = model.empty_states(x.shape[0], device)
            for s in range(x.shape[1]):
                states = reset_at(model, states, first, s, device)
                with autocast:
                    logits, states = model(x[:, s], states)  # (m, L, V)
                nll += F.cross_entropy(logits.float().flatten(0, 1), y[:, s].flatten(), ignore_index=-1,
                                       reduction="sum").item()
                correct += int(((logits.argmax(-1) == y[:, s]) & (y[:, s] != -1)).sum())
                count += int((y[:, s] != -1).sum())
                for name, value in model.memory_metrics(states).items():
                    diag[name] = diag.get(name, 0.0) + float(value)
                writes += 1
    model.train(was_training)
    nll, correct, count, writes, *sums = distributed.all_reduce_sum([nll, correct, count, writes, *diag.values()])
    return nll / max(count, 1), correct / max(count, 1), {k: v / max(writes, 1) for k, v in zip(diag, sums)}
