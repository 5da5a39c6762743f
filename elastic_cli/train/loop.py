"""Training: `train(cfg)` reads top to bottom (checks before step 1: `preflight.py`, launching: `job.py`, one step: `step.py`). One optimizer step = `train.global_batch` windows of
`train.segments` segments; each rank reads its share in micro-batches, segment by segment, with
memory carried across segments and gradients truncated every `train.bptt_segments` segments.

The loss of a step is token-weighted over the whole global batch (targets of -1 are ignored), so
one process and N processes give the same gradients up to rounding.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from elastic_cli import console, precision
from elastic_cli.train import autobatch
from elastic_cli.runs import checkpoint
from elastic_cli.runs import rundir
from elastic_cli.train import distributed, fsdp
from elastic_cli.train import loggers
from elastic_cli.runs import lock as runlock
from elastic_cli.build import build_model
from elastic_cli.config import RunConfig, config_hash, dump_yaml, to_dict
from elastic_cli.data.loader import SegmentLoader, Windows
from elastic_cli.errors import DataError, Diverged, Preempted, UsageError
from elastic_cli.model.init import init_weights
from elastic_cli.train import preflight
from elastic_cli.train.preflight import RunPlan
from elastic_cli.train.optim import build_optimizer, lr_at, parameter_names, segments_at, set_lr
from elastic_cli.train.step import train_step
from elastic_cli.train.validate import evaluate_loss



class Summary(NamedTuple):
    step: int
    tokens: int
    loss: float


def train(cfg: RunConfig, resume: str = "never", overwrite: bool = False, argv: tuple[str, ...] = (),
          plan: RunPlan | Callable[[int], RunPlan] | None = None) -> Summary:
    """Train in this process (one worker of a torchrun job, or alone); returns the final step.
    `plan`: every check before step 1 (`preflight.plan`), made by the caller; or a function that rank 0
    calls with the job's world size (a launched worker), every rank getting its result; None: rank 0
    makes it from `resume` and `overwrite`."""
    device = precision.pick_device(cfg.run.device)
    distributed.init(device)
    lock = runlock.RunLock(cfg.run.dir)  # held by rank 0 while it trains; the kernel drops it if we die
    try:
        if plan is None:
            plan = lambda world: preflight.plan(cfg, resume, overwrite, world)  # noqa: E731
        if callable(plan):
            plan = _shared(cfg, plan)
        return _train(plan, device, list(argv), lock)
    finally:
        lock.release()
        distributed.shutdown()


def _shared(cfg: RunConfig, make: Callable[[int], RunPlan]) -> RunPlan:
    """Rank 0's plan on every rank (made once, by rank 0; the other ranks reopen its data)."""
    mine = None

    def on_rank0() -> str:
        nonlocal mine
        mine = make(distributed.world())
        return mine.to_json()

    text = _on_rank0(on_rank0)
    return mine if mine is not None else RunPlan.from_json(text, cfg)


def _train(plan: RunPlan, device: torch.device, argv: list[str], lock: runlock.RunLock) -> Summary:
    cfg = plan.cfg
    t, rank, world = cfg.train, distributed.rank(), distributed.world()
    if world != cfg.run.gpus * cfg.run.nodes and console.is_rank0():
        console.warn(f"running {world} process(es) while run.gpus x run.nodes = {cfg.run.gpus * cfg.run.nodes}; "
                     f"the global batch ({t.global_batch} windows) is kept")
    data = plan.data
    run_dir = Path(cfg.run.dir)
    start = plan.start
    _on_rank0(lambda: _prepare_run(plan, run_dir, argv, world, lock))
    torch.manual_seed(t.seed)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    bf16 = precision.uses_bf16(device.type, t.dtype)
    sharded = t.parallel == "fsdp" and world > 1
    model = _model(cfg, start, device, sharded, bf16)
    autocast = precision.autocast(device, t.dtype)
    probe = autobatch.window_probe(cfg, model, autocast, device) if device.type == "cuda" and not sharded else None
    step_cfg = autobatch.resolve(cfg, world, device, probe)  # cfg with an integer micro-batch
    if autobatch.is_auto(cfg) and console.is_rank0():
        console.info(f"train.micro_batch=auto: {step_cfg.train.micro_batch} windows per forward "
                     f"(of {t.global_batch // world} per process and step)")
    optimizer = build_optimizer(model, t.lr, t.betas, t.weight_decay, device)
    windows = Windows(t.global_batch, segments_at(0, t.curriculum, t.segments), cfg.model.segment_len)
    loader = SegmentLoader(data, cfg.data.train_split, windows, t.seed, rank, world, answers_only=t.loss_on == "answers")
    step, tokens = 0, 0
    if start is not None:
        step, tokens = _resume(plan, model, optimizer, loader, device, sharded)
    if t.compile:
        model.compile_blocks()  # one graph per kind of block; the memory writes between segments stay eager
    net = model if sharded else distributed.wrap(model, find_unused=bool(plan.write_only))

    stop = _StopFlag()
    log = _Log(run_dir / "train.log")
    metrics = loggers.open_metrics(cfg.run.loggers, run_dir, step, to_dict(cfg))
    log.write(f"start step={step} steps={t.steps} world={world} parallel={t.parallel if world > 1 else 'none'} "
              f"device={device} dtype={'bf16' if bf16 else 'fp32'} "
              f"params={sum(p.numel() for p in model.parameters())} run_dir={run_dir}")
    loss, vals, ckpt = float("nan"), [], None
    t_start, t_last, tokens_last, step_first = time.monotonic(), time.monotonic(), tokens, step
    try:
        with console.progress(t.steps, "train", "step", every_s=float("inf")) as bar:  # plain logs: the lines above
            log.bar = bar  # validation and checkpoint lines print above the bar on a terminal
            bar.update(step)
            while step < t.steps:
                lr = lr_at(step, t.lr, t.min_lr, t.warmup, t.steps)
                set_lr(optimizer, lr)
                loader.set_segments(segments_at(step, t.curriculum, t.segments))
                batch = loader.next_batch()  # inputs/targets (b, S, L), doc_start (b, S)
                try:
                    loss, n_tokens, grad_norm = train_step(step_cfg, model, optimizer, batch, autocast, device, net)
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
                    record["val_loss"], record["val_accuracy"], diag = evaluate_loss(step_cfg, model, data, autocast, device)
                    record.update(diag)  # the memories' diagnostics, e.g. beta/layer0 (ARMT's write gate)
                    vals.append((record["val_loss"], step))
                    log.write(f"step {step} val_loss {record['val_loss']:.4f} val_accuracy {record['val_accuracy']:.4f} "
                              f"(training windows of the val split, memory empty at each window start; elastic eval "
                              f"carries memory through whole documents)")
                if record:
                    metrics.write({"step": step, **record})
                bar.update(1, loss=f"{loss:.3f}", **({"tok/s": f"{record['tokens_per_s']:,.0f}"} if "tokens_per_s" in record else {}))

                preempt = distributed.all_reduce_max(stop.raised) > 0
                if preempt or step == t.steps or (t.save_every and step % t.save_every == 0):
                    ckpt = _save(plan, step, tokens, model, optimizer, loader)
                    log.write(f"saved {ckpt}")
                    t_last = time.monotonic()
                if preempt and step < t.steps:
                    if console.is_rank0():
                        rundir.mark_preempted(run_dir, step)
                    distributed.barrier()
                    raise Preempted(f"stopped by a signal at step {step}; resume with --resume auto")
        log.bar = None
        ckpt = ckpt or (checkpoint.complete_checkpoints(run_dir) or [None])[-1]
        log.write(summary_line(Summary(step, tokens, loss), step - step_first, time.monotonic() - t_start, vals, ckpt, run_dir))
    finally:
        stop.restore()
        metrics.close()
        log.close()
    return Summary(step, tokens, loss)


def summary_line(done: Summary, ran: int, seconds: float, vals: list[tuple[float, int]], ckpt: Path | None,
                 run_dir: Path) -> str:
    """The end of a run in one line: steps, tokens, time, losses, where the checkpoint is."""
    step, tokens, loss = done
    text = f"done: step {step} ({ran} this run, {seconds:,.0f} s), {tokens:,} tokens, last loss {loss:.4f}"
    if vals:
        best = min(vals)
        text += f", val_loss best {best[0]:.4f} (step {best[1]}) last {vals[-1][0]:.4f} (step {vals[-1][1]})"
    return text + f"; checkpoint {ckpt or 'none'}; run directory {run_dir} (elastic eval {run_dir})"


def _prepare_run(plan: RunPlan, run_dir: Path, argv: list[str], world: int, lock: runlock.RunLock) -> None:
    """Rank 0: the run lock, then the run directory as the plan found it: a fresh start's old run files
    removed (saying what, under --overwrite), a resumed run's metrics after its checkpoint dropped;
    then the run files."""
    console.info(f"run directory: {run_dir}")
    lock.acquire()
    rundir.remove_run_files(run_dir, plan.remove, say=plan.overwrite)
    if plan.start is not None:  # rows logged after the checkpoint are logged again by the resumed run
        dropped = loggers.drop_metrics_after(run_dir / "metrics.jsonl", checkpoint.saved_step(plan.start))
        if dropped:
            console.warn(f"dropped {dropped} metrics.jsonl row(s) logged after {plan.start.name}; the resumed run logs them again")
    rundir.write_run_files(run_dir, dump_yaml(plan.cfg), argv, world)


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


def _model(cfg: RunConfig, start: Path | None, device: torch.device, sharded: bool, bf16: bool):
    """The model, initialised from train.seed, on its device. Sharded (train.parallel=fsdp, several
    processes): built on the host and sharded block by block onto the device, the weights of a
    checkpoint `start` without dcp/ loaded before (`_resume` loads the rest)."""
    model = build_model(cfg)
    init_weights(model, cfg.train.seed)
    if not sharded:
        return model.to(device)
    if start is not None and not checkpoint.has_shards(start):
        checkpoint.load_weights(start, model, torch.device("cpu"))
    return fsdp.shard(model, device, bf16)


def _resume(plan: RunPlan, model, optimizer, loader, device, sharded: bool) -> tuple[int, int]:
    """Weights, optimizer, loader cursor and RNG from the plan's checkpoint. A checkpoint with dcp/
    (train.parallel=fsdp) is read through DCP by any number of processes, sharded or not; one without
    (optimizer.pt) is loaded whole, its optimizer sharded when the model is (its weights were loaded
    before sharding)."""
    ckpt = plan.start
    if plan.changed:
        console.warn(f"resuming {ckpt} with changed settings: {', '.join(plan.changed)}")
    if checkpoint.has_shards(ckpt):
        fsdp.load(ckpt / checkpoint.SHARDS, model, optimizer)
    elif sharded:
        fsdp.load_full_optimizer(model, optimizer, checkpoint.optimizer_state(ckpt), parameter_names(model))
    else:
        checkpoint.load(ckpt, model, optimizer, device)
    state = checkpoint.train_state(ckpt)
    loader.load_state_dict(state["loader"])
    rngs = state["rng"]
    checkpoint.set_rng_state(rngs[distributed.rank()] if len(rngs) == distributed.world() else rngs[0])
    console.info(f"resumed from {ckpt} at step {state['step']}")
    return state["step"], state["tokens"]


def _save(plan: RunPlan, step: int, tokens: int, model, optimizer, loader) -> Path:
    """Every rank. train.parallel=ddp: rank 0 writes model.safetensors and optimizer.pt. fsdp: every
    rank writes its shards of the model and optimizer into dcp/ (DCP), the whole weights are gathered
    on rank 0 for model.safetensors (what eval, generate and export read), then rank 0 completes it."""
    cfg, run_dir = plan.cfg, Path(plan.cfg.run.dir)
    rngs = distributed.all_gather_object(checkpoint.rng_state())
    state = {"step": step, "tokens": tokens, "loader": loader.state_dict(), "rng": rngs,
             "config_sha256": config_hash(cfg), "world": distributed.world(), "time": time.time()}
    if cfg.train.parallel == "fsdp":
        folder = Path(_on_rank0(lambda: str(checkpoint.prepare_shards(run_dir, step))))
        try:
            fsdp.save(folder, model, optimizer)
        except (OSError, RuntimeError, fsdp.CheckpointException) as e:  # DCP raises on every rank when one fails
            error = checkpoint.save_failed(run_dir, step, fsdp.cause(e))
            distributed.barrier()
            raise error from None
        weights = fsdp.full_weights(model) if fsdp.is_sharded(model) else model
        return Path(_on_rank0(lambda: str(checkpoint.save(run_dir, weights, None, state, dump_yaml(cfg), cfg.train.keep_last,
                                                          plan.tokenizer))))  # None: the optimizer is in the shards
    path = None
    if console.is_rank0():
        path = checkpoint.save(run_dir, model, optimizer, state, dump_yaml(cfg), cfg.train.keep_last, plan.tokenizer)
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
        self.bar = None  # the progress bar while one is shown: echoed lines go above it

    def write(self, line: str, echo: bool = True) -> None:
        if echo:
            self.bar.write(line) if self.bar is not None else console.info(line)
        if self._f is not None:
            self._f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
