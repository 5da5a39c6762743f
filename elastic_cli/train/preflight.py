"""What `elastic train` checks before step 1, so a mistake costs seconds, not the hours before the
first evaluation or save: `plan` checks everything once and returns a RunPlan that the dry run, the
torchrun launcher, its workers and the training loop are handed (no part checks again), so they
reject the same things with the same message and exit code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import torch

from elastic_cli import precision
from elastic_cli.build import build_model
from elastic_cli.config import RunConfig, check_world, config_hash, diff, load_config
from elastic_cli.config.recipes import SAME_RUN_KEYS
from elastic_cli.data.compat import check_data, model_tokenizer
from elastic_cli.data.loader import PreparedData
from elastic_cli.errors import DataError, UsageError
from elastic_cli.runs import rundir
from elastic_cli.runs import lock as runlock
from elastic_cli.train import fsdp, loggers

ARCH_KEYS = ("model.", "memory.kind", "memory.layers")  # a resumed run may not change these


class RunPlan(NamedTuple):
    """What every check before step 1 found, computed once (`plan`) and passed on: to the dry run, to
    the launcher, to the workers (`to_json`/`from_json` through PLAN_ENV) and to the training loop."""

    cfg: RunConfig
    world: int  # processes of the job
    data: PreparedData  # opened and checked against the model and tokenizer
    start: Path | None  # the checkpoint to resume from (verified, same architecture), None: a fresh start
    remove: tuple[str, ...]  # run files a fresh start removes (--overwrite, or a run that never saved)
    write_only: tuple[str, ...]  # parameters that learn only through the next segment's read (DDP: find unused)
    tokenizer: Path | None  # the run's tokenizer file (copied into every checkpoint), None when it names none
    overwrite: bool = False  # --overwrite: the fresh start says what it deletes
    changed: tuple[str, ...] = ()  # settings that differ from the checkpoint resumed (run.dir left out)

    def to_json(self) -> str:
        return json.dumps({"config_sha256": config_hash(self.cfg), "world": self.world, "start": self.start and str(self.start),
                           "remove": self.remove, "write_only": self.write_only, "overwrite": self.overwrite,
                           "changed": self.changed})

    @classmethod
    def from_json(cls, text: str, cfg: RunConfig) -> "RunPlan | None":
        """The plan a launcher made for `cfg`, its data reopened; None when it was made for another config."""
        d = json.loads(text)
        if d["config_sha256"] != config_hash(cfg):
            return None
        return cls(cfg, d["world"], PreparedData(cfg.data.path), d["start"] and Path(d["start"]), tuple(d["remove"]),
                   tuple(d["write_only"]), model_tokenizer(cfg)[0], d["overwrite"], tuple(d["changed"]))


PLAN_ENV = "ELASTIC_RUN_PLAN"  # a launched worker reads its launcher's plan from this file


def plan(cfg: RunConfig, resume: str, overwrite: bool, world: int, hardware: bool = True) -> RunPlan:
    """Everything that would stop a run later, checked once: process count, parallel mode, device, metric loggers,
    data and its splits, the memory/truncation setting, the run directory (writable, empty or
    resumable, not in use, replaced only by a run of the same configuration) and the checkpoint to
    resume (verified, same architecture). Read-only: nothing is written. `hardware=False` (a --dry-run
    planning a GPU job from a machine without GPUs) skips the device check only."""
    check_world(cfg, world)
    check_parallel(cfg, world)
    if hardware:
        precision.pick_device(cfg.run.device)  # run.device=cuda without CUDA: UsageError
    loggers.check_installed(cfg.run.loggers)
    data = open_data(cfg)
    check_splits(cfg, data)
    write_only = check_truncation(cfg)
    check_same_configuration(cfg, resume, overwrite)
    start, remove = check_run_dir(Path(cfg.run.dir), resume, overwrite)
    changed = check_architecture(start, cfg) if start is not None else []
    return RunPlan(cfg, world, data, start, remove, tuple(write_only), model_tokenizer(cfg)[0], overwrite,
                   tuple(k for k in changed if k != "run.dir"))


def check_parallel(cfg: RunConfig, world: int) -> None:
    """train.parallel=fsdp: a torch with FSDP2 and DCP (>= 2.7), and on several processes no train.compile
    (torch.compile of the blocks under FSDP2 fails in torch 2.13: a garbage view shape in the compiled block)."""
    if cfg.train.parallel != "fsdp":
        return
    fsdp.check_available()
    if cfg.train.compile and world > 1:
        raise UsageError("train.compile=true is not supported with train.parallel=fsdp yet: set train.compile=false "
                         "or train.parallel=ddp")


def open_data(cfg: RunConfig) -> PreparedData:
    """The prepared data, checked against the model and tokenizer (DataError, exit 3)."""
    data = PreparedData(cfg.data.path)
    check_data(cfg, data.meta, cfg.data.path)  # its own meta: nothing to warn about when no tokenizer is named
    return data


def check_splits(cfg: RunConfig, data: PreparedData) -> None:
    """A training split with at least one document (one window), and a validation split with one
    when `train.eval_every > 0` (else the run would die at the first evaluation)."""
    if not data.documents(cfg.data.train_split):
        raise DataError(f"split {cfg.data.train_split!r} of {data.path} has no documents: prepare more data or "
                        f"set data.train_split")
    if cfg.train.eval_every > 0 and not data.documents(cfg.data.val_split):
        raise DataError(f"split {cfg.data.val_split!r} of {data.path} has no documents but train.eval_every="
                        f"{cfg.train.eval_every}: prepare it again (with --val-frac > 0 and at least 3 documents) "
                        f"or set train.eval_every=0")


def write_only_parameters(cfg: RunConfig) -> list[str]:
    """Parameters that get no gradient from one segment's own loss: they are used only by the memory
    *write* and learn through the next segment's read (armt's wk/wv/wbeta, melodi's mixing weights).
    Found by one backward of a narrow copy of the model (same kinds, layers and options; cheap)."""
    m = cfg.model
    small = m.model_copy(update={"d_model": m.n_head * 8, "mlp_hidden": 16, "vocab_size": 64})
    with torch.random.fork_rng(devices=[]):  # the probe must not move the run's RNG (exact resume)
        model = build_model(cfg.model_copy(update={"model": small}))
        logits, _ = model(torch.full((1, 2), 5), model.empty_states(1, "cpu"))  # (1, 2, 64)
        logits.float().square().sum().backward()
    return sorted(name for name, p in model.named_parameters() if p.requires_grad and p.grad is None)


def check_truncation(cfg: RunConfig) -> list[str]:
    """UsageError when gradient truncation would cut every path from a segment's write to a later
    read (train.segments or train.bptt_segments = 1) while the memory has write-only parameters:
    they would never train. Returns those parameters (DDP must then look for unused ones)."""
    names = write_only_parameters(cfg)
    t = cfg.train
    if names and min(t.segments, t.bptt_segments) < 2:
        shown = ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")
        raise UsageError(f"memory.kind={cfg.memory.kind} learns {shown} only through the next segment's read, but "
                         f"train.segments={t.segments} train.bptt_segments={t.bptt_segments} cut that gradient: "
                         f"set both to at least 2")
    return names


def check_run_dir(run_dir: Path, resume: str, overwrite: bool) -> tuple[Path | None, tuple[str, ...]]:
    """The run directory can be written, is empty / resumable as asked, is not in use by another
    `elastic train`, and a --resume PATH exists and verifies. Returns the checkpoint to resume and
    the run files a fresh start removes."""
    start, remove = rundir.check_run_dir(run_dir, resume, overwrite)
    existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"run.dir={run_dir}: {existing} is not a writable directory")
    if run_dir.is_dir():
        runlock.check_free(run_dir)
    return start, remove


def check_same_configuration(cfg: RunConfig, resume: str, overwrite: bool) -> None:
    """--overwrite replaces a run of the same configuration only (keys in SAME_RUN_KEYS may differ):
    a run of another one is another experiment, and deleting it is not what a changed override meant."""
    saved = Path(cfg.run.dir) / "config.yaml"
    if not (overwrite and resume == "never" and saved.is_file()):
        return
    try:
        changed = [k for k in diff(load_config(saved), cfg) if not k.startswith(SAME_RUN_KEYS)]
    except UsageError:
        changed = ["its config.yaml does not load"]
    if changed:
        shown = ", ".join(changed[:6]) + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else "")
        raise UsageError(f"--overwrite: run.dir={cfg.run.dir} holds a run of another configuration ({shown} differ); "
                         f"it is not deleted: leave run.dir unset to get a directory of your own, choose another "
                         f"run.dir, or delete {cfg.run.dir} yourself")


def check_architecture(ckpt: Path, cfg: RunConfig) -> list[str]:
    """DataError (exit 3) when the checkpoint to resume has another architecture (ARCH_KEYS); else the
    keys whose settings changed (a resume may change schedule and logging settings)."""
    try:
        old = load_config(Path(ckpt) / "config.yaml")
    except UsageError as e:
        raise DataError(f"cannot resume from {ckpt}: its config.yaml does not load ({e})") from None
    changed = diff(old, cfg)
    arch = [k for k in changed if k.startswith(ARCH_KEYS)]
    if arch:
        raise DataError(f"cannot resume from {ckpt}: the architecture changed ({', '.join(arch)}); start a new run "
                        f"(another run.dir, or --resume never --overwrite)")
    return changed
