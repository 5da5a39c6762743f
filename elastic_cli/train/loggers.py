"""Metric sinks of a training run (`run.loggers`): metrics.jsonl (default), TensorBoard, W&B.

Rank 0 only. Every record the trainer writes (`{"step": ..., "loss": ..., ...}`) goes to each sink;
numbers become scalars at `step`. Opening the sinks prints one line saying where metrics go.
- jsonl: `RUN/metrics.jsonl` (MetricsWriter), appended on resume.
- tensorboard: event files in `RUN/tensorboard/` (`torch.utils.tensorboard`); a resumed run purges
  the events logged after its checkpoint's step, so a curve has no doubled steps.
- wandb: offline (`RUN/wandb/`, `wandb sync` uploads it) unless WANDB_MODE says otherwise; the run
  id is kept in `RUN/state/wandb_run_id`, so `--resume auto` continues the same W&B run.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from elastic_cli import console
from elastic_cli.atomic import write_atomic
from elastic_cli.errors import UsageError

LOGGERS = ("jsonl", "tensorboard", "wandb")
EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger -> pip extra of elastic-cli
WANDB_ID = Path("state") / "wandb_run_id"


def check_installed(names) -> None:
    """UsageError (exit 2) with the install hint when a chosen logger's package is missing."""
    for name in names:
        if name in EXTRA:
            try:
                __import__(name)
            except ImportError:
                raise UsageError(f"run.loggers has {name}, which needs the {name} package: "
                                 f"pip install 'elastic-cli[{EXTRA[name]}]'") from None


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl (rank 0 only); flushed every write."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a", encoding="utf-8") if console.is_rank0() else None

    def write(self, record: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record, sort_keys=True) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class JsonlSink:
    def __init__(self, run_dir: Path):
        self.writer, self.where = MetricsWriter(run_dir / "metrics.jsonl"), str(run_dir / "metrics.jsonl")

    def write(self, record: dict) -> None:
        self.writer.write(record)

    def close(self) -> None:
        self.writer.close()


class TensorBoardSink:
    def __init__(self, run_dir: Path, step: int):
        from torch.utils.tensorboard import SummaryWriter

        logdir = run_dir / "tensorboard"
        self.writer = SummaryWriter(str(logdir), purge_step=step + 1 if step else None)  # drop steps > step
        self.where = f"TensorBoard {logdir} (tensorboard --logdir {logdir})"

    def write(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, config: dict):
        import wandb

        run_id = wandb_run_id(run_dir)
        mode = os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "elastic"), id=run_id, resume="allow",
                              name=run_dir.name, dir=str(run_dir), mode=mode, config=config,
                              settings=wandb.Settings(silent=True, console="off"))
        self.where = f"W&B run {run_id} ({mode}, {run_dir / 'wandb'})"

    def write(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        import wandb

        self.run.finish()
        wandb.teardown()  # wait until the W&B service has written every record (atexit is not reliable under torchrun)


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a record, `step` excluded (it is the x axis)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id: read from RUN/state/wandb_run_id, or made and stored there on first use."""
    path = run_dir / WANDB_ID
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    run_id = secrets.token_hex(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (run_id + "\n").encode())
    return run_id


class Metrics:
    """All sinks of a run behind the MetricsWriter interface (write, close); empty on ranks > 0."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def write(self, record: dict) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_metrics(names, run_dir: Path, step: int, config: dict) -> Metrics:
    """The sinks named in run.loggers for a run starting (or resuming) at `step`; one info line."""
    if not console.is_rank0():
        return Metrics([])
    check_installed(names)
    run_dir = Path(run_dir)
    made = {"jsonl": lambda: JsonlSink(run_dir), "tensorboard": lambda: TensorBoardSink(run_dir, step),
            "wandb": lambda: WandbSink(run_dir, config)}
    sinks = [made[name]() for name in dict.fromkeys(names)]  # each sink once
    console.info("metrics: " + (", ".join(s.where for s in sinks) if sinks else "not written (run.loggers is empty)"))
    return Metrics(sinks)


def drop_metrics_after(path: Path, step: int) -> int:
    """Remove the rows of a metrics.jsonl logged after `step` (a resumed run logs them again), and a
    torn last line; rewritten atomically. Returns the number of rows removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        write_atomic(path, "".join(kept).encode("utf-8"))
    return dropped
