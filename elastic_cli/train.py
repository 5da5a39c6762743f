"""Training: `train(cfg)` reads top to bottom (launching is `launch.py`, one step is `step.py`). One optimizer step = `train.global_batch` windows of
`train.segments` segments; each rank reads its share in micro-batches, segment by segment, with
memory carried across segments and gradients truncated every `train.bptt_segments` segments.

The loss of a step is token-weighted over the whole global batch (targets of -1 are ignored), so
one process and N processes give the same gradients up to rounding.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import NamedTuple

import torch

from elastic_cli import autobatch, checkpoint, console, distributed, loggers, precision, preflight, runlock
from elastic_cli.build import build_model
from elastic_cli.config import RunConfig, check_world, config_hash, diff, dump_yaml, load_config, to_dict
from elastic_cli.data.compat import model_tokenizer
from elastic_cli.data.loader import SegmentLoader
from elastic_cli.errors import DataError, Diverged, Preempted, UsageError
from elastic_cli.model.init import init_weights
from elastic_cli.optim import build_optimizer, lr_at, segments_at, set_lr
from elastic_cli.step import evaluate_loss, reset_at, train_step  # noqa: F401  (reset_at: re-exported)

ARCH_KEYS = preflight.ARCH_KEYS  # a resumed run may not change these


class Summary(NamedTuple):
    step: int
    tokens: int
    loss: float


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
    tokenizer, _ = model_tokenizer(cfg)  # copied into every checkpoint (None: the run names no tokenizer file)
    run_dir = Path(cfg.run.dir)
    start = _on_rank0(lambda: _prepare_run(cfg, run_dir, resume, overwrite, argv, world, lock))
    torch.manual_seed(t.seed)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")

    model = build_model(cfg)
    init_weights(model, t.seed)
    model.to(device)
    bf16 = precision.uses_bf16(device.type, t.dtype)
    autocast = precision.autocast(device, t.dtype)
    step_cfg = autobatch.resolve(cfg, world, device, autobatch.window_probe(cfg, model, autocast, device)
                                 if device.type == "cuda" else None)  # cfg with an integer micro-batch
    if autobatch.is_auto(cfg) and console.is_rank0():
        console.info(f"train.micro_batch=auto: {step_cfg.train.micro_batch} windows per forward "
                     f"(of {t.global_batch // world} per process and step)")
    optimizer = build_optimizer(model, t.lr, t.betas, t.weight_decay, device)
    loader = SegmentLoader(data, cfg.data.train_split, t.global_batch, segments_at(0, t.curriculum, t.segments),
                           cfg.model.segment_len, t.seed, rank, world, answers_only=t.loss_on == "answers")
    step, tokens = 0, 0
    if start is not None:
        step, tokens = _resume(Path(start), cfg, model, optimizer, loader, device)
    if t.compile:
        model.compile_blocks()  # one graph per kind of block; the memory writes between segments stay eager
    net = distributed.wrap(model, find_unused=bool(preflight.write_only_parameters(cfg)))
    forward = net

    stop = _StopFlag()
    log = _Log(run_dir / "train.log")
    metrics = loggers.open_metrics(cfg.run.loggers, run_dir, step, to_dict(cfg))
    log.write(f"start step={step} steps={t.steps} world={world} device={device} dtype={'bf16' if bf16 else 'fp32'} "
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
                    loss, n_tokens, grad_norm = train_step(step_cfg, model, optimizer, batch, autocast, device, net, forward)
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
                    ckpt = _save(cfg, run_dir, step, tokens, model, optimizer, loader, tokenizer)
                    log.write(f"saved {ckpt}")
                    t_last = time.monotonic()
                if preempt and step < t.steps:
                    if console.is_rank0():
                        checkpoint.mark_preempted(run_dir, step)
                    distributed.barrier()
                    raise Preempted(f"stopped by a signal at step {step}; resume with --resume auto")
        log.bar = None
        ckpt = ckpt or (checkpoint.complete_checkpoints(run_dir) or [None])[-1]
        log.write(summary_line(step, step - step_first, tokens, time.monotonic() - t_start, loss, vals, ckpt, run_dir))
    finally:
        stop.restore()
        metrics.close()
        log.close()
    return Summary(step, tokens, loss)


def summary_line(step: int, ran: int, tokens: int, seconds: float, loss: float, vals: list[tuple[float, int]],
                 ckpt: Path | None, run_dir: Path) -> str:
    """The end of a run in one line: steps, tokens, time, losses, where the checkpoint is."""
    text = f"done: step {step} ({ran} this run, {seconds:,.0f} s), {tokens:,} tokens, last loss {loss:.4f}"
    if vals:
        best = min(vals)
        text += f", val_loss best {best[0]:.4f} (step {best[1]}) last {vals[-1][0]:.4f} (step {vals[-1][1]})"
    return text + f"; checkpoint {ckpt or 'none'}; run directory {run_dir} (elastic eval {run_dir})"


def _prepare_run(cfg, run_dir, resume, overwrite, argv, world, lock) -> str | None:
    """Rank 0: every check before step 1 (preflight), the run lock, then the run files."""
    preflight.check_run(cfg, resume, overwrite, world)
    console.info(f"run directory: {run_dir}")
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
    preflight.check_architecture(ckpt, cfg)
    changed = diff(load_config(ckpt / "config.yaml"), cfg)
    if [k for k in changed if k != "run.dir"]:
        console.warn(f"resuming {ckpt} with changed settings: {', '.join(k for k in changed if k != 'run.dir')}")
    state = checkpoint.load(ckpt, model, optimizer, device)
    loader.load_state_dict(state["loader"])
    rngs = state["rng"]
    checkpoint.set_rng_state(rngs[distributed.rank()] if len(rngs) == distributed.world() else rngs[0])
    console.info(f"resumed from {ckpt} at step {state['step']}")
    return state["step"], state["tokens"]


def _save(cfg, run_dir, step, tokens, model, optimizer, loader, tokenizer) -> Path:
    rngs = distributed.all_gather_object(checkpoint.rng_state())
    path = None
    if console.is_rank0():
        state = {"step": step, "tokens": tokens, "loader": loader.state_dict(), "rng": rngs,
                 "config_sha256": config_hash(cfg), "world": distributed.world(), "time": time.time()}
        path = checkpoint.save(run_dir, step, model, optimizer, state, dump_yaml(cfg), cfg.train.keep_last, tokenizer)
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
