"""Helpers shared by the training tests: a tiny prepared dataset, tiny-model overrides, subprocess env."""
from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Put on a subprocess's PYTHONPATH: its sitecustomize.py injects faults into torchrun workers
# (tests/train/test_launcher_exit_codes.py); save_loop.py saves in a loop until killed (tests/test_faults.py).
FAULTS = ROOT / "tests" / "faults"
# ELASTIC_FULL_FAULTS=1: every launcher exit path and >= 20 kill -9 trials per fault test (minutes);
# by default a few of each keep the suite fast.
FULL_FAULTS = os.environ.get("ELASTIC_FULL_FAULTS") == "1"
TOKENIZER = ROOT / "tokenizers" / "code-8k.model"
TINY = ["model.d_model=32", "model.n_layer=2", "model.n_head=2", "model.mlp_hidden=64", "model.segment_len=16",
        "train.global_batch=4", "train.micro_batch=2", "train.segments=4",
        "train.bptt_segments=2", "train.steps=6", "train.warmup=2", "train.lr=3e-3", "train.min_lr=3e-4",
        "train.log_every=1", "train.eval_every=0", "train.save_every=0", "data.tokenizer=null", "run.device=cpu"]


def documents() -> list[str]:
    """A few small, deterministic code-like text files."""
    docs = []
    for i in range(14):
        lines = [f"# module {i}", "import math", ""]
        for j in range(6 + i % 5):
            lines += [f"def f_{i}_{j}(x, y={j}):", f"    return math.sqrt(x * {i + j} + y) - {j * i}", ""]
        docs.append("\n".join(lines))
    return docs


def prepare(out: Path) -> Path:
    """`elastic prepare` of the documents (one file each) with the shipped code tokenizer into out/data."""
    from elastic_cli.data.prepare import PrepareOptions, prepare as run_prepare

    src = out / "src"
    src.mkdir(parents=True)
    for i, text in enumerate(documents()):
        (src / f"m{i:02d}.py").write_text(text)
    run_prepare([str(src)], str(TOKENIZER), str(out / "data"), PrepareOptions(val_frac=0.2, test_frac=0.0, workers=1))
    return out / "data"


SMALL_ELASTIC = ["memory.order=8", "memory.samples=8"]  # the recipe's kind; another kind keeps its defaults


def overrides(data: Path, run_dir: Path, *extra: str) -> list[str]:
    other_kind = any(e.startswith("memory.kind=") and e != "memory.kind=elastic" for e in extra)
    return [*TINY, *([] if other_kind else SMALL_ELASTIC), f"data.path={data}", f"run.dir={run_dir}", *extra]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def as_from_a_terminal() -> None:
    """Popen preexec_fn: SIGINT back to its default, as a terminal's child has it. A shell starts
    background jobs with SIGINT ignored, Python then keeps ignoring it, and a Ctrl-C test would
    wait for an interrupt that never comes (seen when the suite itself ran as a background job)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
