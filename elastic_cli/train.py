"""Training: `train(cfg)` reads top to bottom. One optimizer step = `train.global_batch` windows of
`train.segments` segments; each rank reads its share in micro-batches, segment by segment, with
memory carried across segments and gradients truncated every `train.bptt_segments` segments.

The loss of a step is token-weighted over the whole global batch (targets of -1 are ignored), so
one process and N processes give the same gradients up to rounding.
"""
from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as recompute

from elastic_cli import checkpoint, console, distributed, loggers, precision, preflight, runlock
from elastic_cli.build import build_model, describe
from elastic_cli.config import RunConfig, check_world, config_hash, diff, dump_yaml, load_config, to_dict
from elastic_cli.data.loader import SegmentLoader
from elastic_cli.errors import DataError, Diverged, Preempted, UsageError
from elastic_cli.memory.base import detach_state
from elastic_cli.model.init import init_weights
from elastic_cli.optim import build_optimizer, lr_at, segments_at, set_lr

ARCH_KEYS = ("model.", "memory.kind", "memory.layers")  # a resumed run may not change these


class Summary(NamedTuple):
    step: int
    tokens: int
    loss: float


def run(cfg: RunConfig, worker_argv: list[str], resume: str, overwrite: bool, dry_run: bool,
        rdzv_endpoint: str | None) -> int:
    """`elastic train`: describe (--dry-run), launch N x M workers through torchrun, or train here.
    Returns the exit code (0, or 75/130/1 from a launched job)."""
    gpus, nodes = cfg.run.gpus, cfg.run.nodes
    launching = distributed.needs_launch(gpus, nodes)
    cmd = distributed.launch_command(gpus, nodes, rdzv_endpoint, worker_argv) if launching else None
    if dry_run:
        data = preflight.check_run(cfg, resume, overwrite, gpus * nodes)
        sizes = describe(cfg, gpus * nodes)
        rows = [[k, f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"] for k, v in sizes.items()]
        rows.append(["data", f"{cfg.data.path}: {len(data.documents(cfg.data.train_split))} train documents, "
                             f"{data.meta['n_tokens']:,} tokens"])
        rows.append(["launch", " ".join(cmd) if cmd else "this process (no torchrun)"])
        console.table(f"elastic train --dry-run ({cfg.run.dir})", ["item", "value"], rows)
        return 0
    if launching:
        device = distributed.pick_device(cfg.run.device)
        if device.type == "cuda" and gpus > torch.cuda.device_count():
            raise UsageError(f"--gpus {gpus} but only {torch.cuda.device_count()} CUDA devices are visible")
        preflight.check_run(cfg, resume, overwrite, gpus * nodes)
        console.info("launching: " + " ".join(cmd))
        return distributed.launch(cmd, Path(cfg.run.dir) / "state" / "PREEMPTED", cpu=device.type == "cpu")
    train(cfg, resume, overwrite, ("elastic", *worker_argv))
    return 0


def train(cfg: RunConfig, resume: str = "never", overwrite: bool = False, argv: tuple[str, ...] = ()) -> Summary:
    """Train in this process (one worker of a torchrun job, or alone); returns the final step."""
    device = distributed.pick_device(cfg.run.device)
    distributed.init(device)
    lock = runlock.RunLock(cfg.run.dir)  # held by rank 0 while it trains; the kernel drops it if we die
    try:
        return _train(cfg, device, resume, overwrite, list(argv), lock)
    finally:
        lock.release()
        distributed.shutdown()


def _train(cfg: RunConfig, device: torch.device, resume: str, overwrite: bool, argv: list[str],
           lock: runlock.RunLock) -> Summary:
    t, rank, world = cfg.train, distributed.rank(), distributed.world()
    check_world(cfg, world)
    loggers.check_installed(cfg.run.loggers)
    if world != cfg.run.gpus * cfg.run.nodes and console.is_rank0():
        console.warn(f"running {world} process(es) while run.gpus x run.nodes = {cfg.run.gpus * cfg.run.nodes}; "
                     f"the global batch ({t.global_batch} windows) is kept")
    data = preflight.open_data(cfg)
    run_dir = Path(cfg.run.dir)
    start = _on_rank0(lambda: _prepare_run(cfg, run_dir, resume, overwrite, argv, world, lock))
    torch.manual_seed(t.seed)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    model = build_model(cfg)
    init_weights(model, t.seed)
    model.to(device)
    optimizer = build_optimizer(model, t.lr, t.betas, t.weight_decay, device)
    loader = SegmentLoader(data, cfg.data.train_split, t.global_batch, segments_at(0, t.curriculum, t.segments),
                           cfg.model.segment_len, t.seed, rank, world, answers_only=t.loss_on == "answers")
    step, tokens = 0, 0
    if start is not None:
        step, tokens = _resume(Path(start), cfg, model, optimizer, loader, device)
    net = distributed.wrap(model, find_unused=bool(preflight.write_only_parameters(cfg)))
    forward = torch.compile(net) if t.compile else net
    bf16 = precision.uses_bf16(device.type, t.dtype)
    autocast = precision.autocast(device, t.dtype)

    stop = _StopFlag()
    log = _Log(run_dir / "train.log")
    metrics = loggers.open_metrics(cfg.run.loggers, run_dir, step, to_dict(cfg))
    log.write(f"start step={step} steps={t.steps} world={world} device={device} dtype={'bf16' if bf16 else 'fp32'} "
              f"params={sum(p.numel() for p in model.parameters())} run_dir={run_dir}")
    loss = float("nan")
    t_start, t_last, tokens_last, step_first = time.monotonic(), time.monotonic(), tokens, step
    try:
        with console.progress(t.steps, "train", "step", every_s=float("inf")) as bar:  # plain logs: the lines above
            bar.update(step)
            while step < t.steps:
                lr = lr_at(step, t.lr, t.min_lr, t.warmup, t.steps)
                set_lr(optimizer, lr)
                loader.set_segments(segments_at(step, t.curriculum, t.segments))
                batch = loader.next_batch()  # inputs/targets (b, S, L), doc_start (b, S)
                try:
                    loss, n_tokens, grad_norm = train_step(cfg, model, optimizer, batch, autocast, device, net, forward)
                except Diverged as e:
                    saved = checkpoint.complete_checkpoints(run_dir)
                    kept = f"the last good checkpoint {saved[-1]} is kept" if saved else "no checkpoint was saved yet"
                    log.write(f"step {step + 1}: {e}", echo=False)
                    raise Diverged(f"training diverged at step {step + 1}: {e}; the weights were not updated and "
                                   f"{kept}; lower train.lr or raise train.warmup, then --resume auto") from None
                step, tokens = step + 1, tokens + n_tokens

                record = {}
                if step % t.log_every == 0 or step == t.steps:
                    now = time.monotonic()
                    tps = (tokens - tokens_last) / max(now - t_last, 1e-9)
                    eta = (now - t_start) / (step - step_first) * (t.steps - step)
                    record = {"step": step, "loss": loss, "lr": lr, "tokens": tokens, "tokens_per_s": tps,
                              "grad_norm": grad_norm}
                    log.write(f"step {step}/{t.steps} loss {loss:.4f} lr {lr:.3g} tok/s {tps:,.0f} "
                              f"tokens {tokens:,} eta {eta:,.0f}s", echo=not console.interactive())
                    t_last, tokens_last = now, tokens
                if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
                    record["val_loss"], record["val_accuracy"] = evaluate_loss(cfg, model, data, autocast, device)
                    log.write(f"step {step} val_loss {record['val_loss']:.4f} val_accuracy {record['val_accuracy']:.4f} "
                              f"(training windows of the val split, memory empty at each window start; elastic eval "
                              f"carries memory through whole documents)", echo=not console.interactive())
                if record:
                    metrics.write({"step": step, **record})
                bar.update(1, loss=f"{loss:.3f}", **({"tok/s": f"{record['tokens_per_s']:,.0f}"} if "tokens_per_s" in record else {}))

                preempt = distributed.all_reduce_max(stop.raised) > 0
                if preempt or step == t.steps or (t.save_every and step % t.save_every == 0):
                    ckpt = _save(cfg, run_dir, step, tokens, model, optimizer, loader)
                    log.write(f"saved {ckpt}", echo=not console.interactive())
                    t_last = time.monotonic()
                if preempt and step < t.steps:
                    if console.is_rank0():
                        checkpoint.mark_preempted(run_dir, step)
                    distributed.barrier()
                    raise Preempted(f"stopped by a signal at step {step}; resume with --resume auto")
    finally:
        stop.restore()
        metrics.close()
        log.close()
    return Summary(step, tokens, loss)


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
    total_nll, bad = 0.0, None  # bad: (micro-batch, first segment) of this rank's first non-finite loss
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
                        args = (forward, x[:, s], y[:, s], states, t.loss_on == "answers")
                        if t.checkpoint_segments:  # keep only the states between segments; recompute in backward
                            nll, states = recompute(segment_nll, *args, use_reentrant=False)
                        else:
                            nll, states = segment_nll(*args)
                        chunk = chunk + nll
                        if t.aux_weight:  # mean over segments, micro-batches and (by DDP) ranks
                            aux = aux + model.aux_loss(states) / (len(starts) * segments)
                (chunk * scale + t.aux_weight * aux).backward()
            value = chunk.item()
            total_nll += value
            bad = bad or (None if math.isfinite(value) else (i, c0))
            states = detach_state(states)  # truncated BPTT: no gradient into earlier chunks
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
    loss = distributed.all_reduce_sum([total_nll])[0] / max(total, 1)
    if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):  # the same on every rank: all stop
        raise Diverged(nonfinite_message(loss, float(grad_norm), distributed.all_gather_object(bad), t.micro_batch))
    optimizer.step()  # only finite updates: NaN weights are never saved
    return loss, total, float(grad_norm)


def nonfinite_message(loss: float, grad_norm: float, bad: list, micro_batch: int) -> str:
    """Where a non-finite loss appeared: per rank, (micro-batch, first segment of its chunk) or None."""
    where = [f"rank {r} micro-batch {b[0]} (rows {b[0] * micro_batch}..{(b[0] + 1) * micro_batch - 1}, segments "
             f"from {b[1]})" for r, b in enumerate(bad) if b is not None]
    what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm} (loss {loss:.4f})"
    return f"{what} in {', '.join(where) or 'the backward pass'}"


def segment_nll(forward, x, y, states, sparse: bool = False):
    """Summed next-token NLL of one segment (targets -1 ignored) and the new memory states.
    x, y: (m, L). `sparse`: project to the vocabulary only where there is a target (few answer
    tokens). A function of its inputs only, so torch.utils.checkpoint can recompute it."""
    if sparse:
        select = y != -1  # (m, L)
        logits, states = forward(x, states, select)  # (n, V)
        return F.cross_entropy(logits.float(), y[select], reduction="sum"), states
    logits, states = forward(x, states)  # (m, L, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum"), states


def reset_at(model, states, doc_start, s: int, device):
    """Empty the memory of rows whose document starts at segment s. doc_start (m, S) bool on the CPU.
    No work at s = 0 (the window's states are fresh) or where no row starts a document: the reset
    builds an empty state and a select per leaf, which the hot path should not pay every segment."""
    if s == 0 or not bool(doc_start[:, s].any()):
        return states
    return model.reset_states(states, doc_start[:, s].to(device))


@torch.no_grad()
def evaluate_loss(cfg: RunConfig, model, data, autocast, device) -> tuple[float, float]:
    """Mean token loss and argmax accuracy on the first `train.eval_batches` global batches of the
    validation split (a fresh loader each time: the same windows at every evaluation). With
    train.loss_on=answers both are over answer tokens only."""
    t = cfg.train
    loader = SegmentLoader(data, cfg.data.val_split, t.global_batch, t.segments, cfg.model.segment_len,
                           t.seed, distributed.rank(), distributed.world(), answers_only=t.loss_on == "answers")
    was_training = model.training
    model.eval()
    nll, correct, count = 0.0, 0, 0
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
    model.train(was_training)
    nll, correct, count = distributed.all_reduce_sum([nll, correct, count])
    return nll / max(count, 1), correct / max(count, 1)


def _prepare_run(cfg, run_dir, resume, overwrite, argv, world, lock) -> str | None:
    """Rank 0: every check before step 1 (preflight), the run lock, then the run files."""
    preflight.check_run(cfg, resume, overwrite, world)
    lock.acquire()
    start = checkpoint.prepare_run_dir(run_dir, resume, overwrite)
    if start is not None:  # rows logged after the checkpoint are logged again by the resumed run
        dropped = console.drop_metrics_after(run_dir / "metrics.jsonl", checkpoint.saved_step(start))
        if dropped:
            console.warn(f"dropped {dropped} metrics.jsonl row(s) logged after {start.name}; the resumed run logs them again")
    checkpoint.write_run_files(run_dir, dump_yaml(cfg), argv, world)
    return None if start is None else str(start)


def _on_rank0(fn):
    """Run fn on rank 0 and share its result (or its error) with every rank."""
    result, error = None, None
    if console.is_rank0():
        try:
            result = fn()
        except (UsageError, DataError) as e:
            error = (type(e).__name__, str(e))
    result, error = distributed.broadcast_object((result, error))
    if error is not None:
        raise {"UsageError": UsageError, "DataError": DataError}[error[0]](error[1])
    return result


def _resume(ckpt: Path, cfg, model, optimizer, loader, device) -> tuple[int, int]:
    old = load_config(ckpt / "config.yaml")
    changed = diff(old, cfg)
    arch = [k for k in changed if k.startswith(ARCH_KEYS)]
    if arch:
        raise DataError(f"cannot resume from {ckpt}: the architecture changed ({', '.join(arch)})")
    if [k for k in changed if k != "run.dir"]:
        console.warn(f"resuming {ckpt} with changed settings: {', '.join(k for k in changed if k != 'run.dir')}")
    state = checkpoint.load(ckpt, model, optimizer, device)
    loader.load_state_dict(state["loader"])
    rngs = state["rng"]
    checkpoint.set_rng_state(rngs[distributed.rank()] if len(rngs) == distributed.world() else rngs[0])
    console.info(f"resumed from {ckpt} at step {state['step']}")
    return state["step"], state["tokens"]


def _save(cfg, run_dir, step, tokens, model, optimizer, loader) -> Path:
    rngs = distributed.all_gather_object(checkpoint.rng_state())
    path = None
    if console.is_rank0():
        state = {"step": step, "tokens": tokens, "loader": loader.state_dict(), "rng": rngs,
                 "config_sha256": config_hash(cfg), "world": distributed.world(), "time": time.time()}
        path = checkpoint.save(run_dir, step, model, optimizer, state, dump_yaml(cfg), cfg.train.keep_last)
    distributed.barrier()
    return path or run_dir / "checkpoints" / checkpoint.step_name(step)


class _StopFlag:
    """SIGTERM/SIGUSR1 only set a flag; the loop finishes the step, saves and exits 75."""

    def __init__(self):
        self.raised = 0
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def _handle(self, signum, frame) -> None:
        self.raised = 1

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


class _Log:
    """train.log (plain text, rank 0, appended on resume); lines are echoed on stderr when asked."""

    def __init__(self, path: Path):
        self._f = open(path, "a", encoding="utf-8") if console.is_rank0() else None

    def write(self, line: str, echo: bool = True) -> None:
        if echo:
            console.info(line)
        if self._f is not None:
            self._f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
