"""All user-facing output: rich on a terminal, plain lines otherwise; rank 0 only; metrics.jsonl.

The only module that formats output. Other modules call `info`, `warn`, `progress`, `table`.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.table import Table

_err = Console(stderr=True, highlight=False, soft_wrap=True)
_out = Console(highlight=False, soft_wrap=True)


def rank() -> int:
    """This process's rank as the launcher set it (torchrun/srun: RANK), 0 when run alone."""
    return int(os.environ.get("RANK", "0"))


def is_rank0() -> bool:
    """The one notion of rank 0 (console output, run files, checkpoints)."""
    return rank() == 0


def interactive() -> bool:
    """True when stderr is a terminal that accepts redraws (progress bars)."""
    return _err.is_terminal and os.environ.get("TERM") != "dumb"


def info(message: str) -> None:
    """A status line on stderr, rank 0 only (stdout stays clean for data)."""
    if is_rank0():
        _err.print(message, markup=False)


def warn(message: str) -> None:
    """A warning from any rank; other ranks prefix their rank."""
    prefix = "" if is_rank0() else f"[rank {rank()}] "
    _err.print(f"{prefix}warning: {message}", markup=False, style="yellow")


def error(message: str) -> None:
    """The one line a failing command prints before it exits."""
    prefix = "" if is_rank0() else f"[rank {rank()}] "
    _err.print(f"{prefix}error: {message}", markup=False, style="bold red")


def out(text: str, end: str = "\n") -> None:
    """Data for stdout (generated text, JSON, resolved configs), rank 0 only, no markup."""
    if is_rank0():
        sys.stdout.write(text + end)
        sys.stdout.flush()


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; tab-separated plain lines otherwise."""
    if not is_rank0():
        return
    if _out.is_terminal:
        t = Table(title=title)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*[str(x) for x in r])
        _out.print(t)
    else:
        sys.stdout.write(f"# {title}\n" + "\t".join(columns) + "\n")
        for r in rows:
            sys.stdout.write("\t".join(str(x) for x in r) + "\n")
        sys.stdout.flush()


class Progress:
    """A progress bar on a terminal; otherwise a plain line every `every_s` seconds (no \\r, no colour)."""

    def __init__(self, total: int | None, desc: str, unit: str, every_s: float = 30.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n = 0
        self.fields: dict[str, str] = {}
        self._t0 = self._last = time.monotonic()
        self._bar = None
        if is_rank0() and interactive():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1, **fields: object) -> None:
        self.n += n
        self.fields.update({k: str(v) for k, v in fields.items()})
        if self._bar is not None:
            self._bar.update(n)
            if fields:
                self._bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in self.fields.items()))
            return
        now = time.monotonic()
        if is_rank0() and now - self._last >= self.every_s:
            self._last = now
            info(self.line())

    def write(self, message: str) -> None:
        """A status line (rank 0) printed above the bar on a terminal, as a plain line otherwise."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            info(message)

    def line(self) -> str:
        elapsed = time.monotonic() - self._t0
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        rate = self.n / elapsed if elapsed > 0 else 0.0
        extra = " ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.desc}: {done} {self.unit} {rate:.1f} {self.unit}/s {extra}".rstrip()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def progress(total: int | None, desc: str, unit: str = "it", every_s: float = 30.0) -> Iterator[Progress]:
    bar = Progress(total, desc, unit, every_s)
    try:
        yield bar
    finally:
        bar.close()
