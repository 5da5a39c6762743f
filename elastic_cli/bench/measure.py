"""Measuring tools for `elastic bench`: summaries of repeated measurements, a wall-clock timer
that waits for the device, and peak memory (CUDA allocator, or live tensor bytes on the CPU)."""
from __future__ import annotations

import statistics
import time
import weakref
from typing import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode


def summarize(values: list[float]) -> dict[str, float]:
    """Median and spread of repeated measurements; spread = (max - min) / median."""
    if not values:
        raise ValueError("summarize: no values")
    mid = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": mid, "min": lo, "max": hi, "spread": (hi - lo) / mid if mid else 0.0, "n": len(values)}


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Ratios of measurements taken in the same repeat (interleaved), one per repeat."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"paired_ratios: need equal, non-empty lists, got {len(numerator)} and {len(denominator)}")
    return [a / b for a, b in zip(numerator, denominator)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> tuple[Callable[[], float], str]:
    """The clock `timed` uses, and its name. On the CPU, the CPU time of this process (all its
    threads): other jobs on a shared machine do not inflate it, so interleaved ratios stay stable;
    on CUDA, wall-clock time after synchronising the device."""
    if device.type == "cpu":
        return time.process_time, "process CPU seconds (time.process_time)"
    return time.perf_counter, "wall-clock seconds after device synchronisation"


def timed(fn: Callable[[], object], device: torch.device, inner: int = 1) -> float:
    """Seconds per call of fn, averaged over `inner` back-to-back calls, device work included
    (on `clock(device)`)."""
    now = clock(device)[0]
    synchronize(device)
    start = now()
    for _ in range(inner):
        fn()
    synchronize(device)
    return (now() - start) / inner


def _tensors(items) -> list[Tensor]:
    """The tensors among op arguments or results: direct, or in a list/tuple (aten ops nest no deeper)."""
    found = []
    for item in items:
        if isinstance(item, Tensor):
            found.append(item)
        elif isinstance(item, (tuple, list)):
            found.extend(x for x in item if isinstance(x, Tensor))
    return found


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage created by torch ops inside the mode and still alive; and their peak.

    Every op output whose storage is not one of its inputs' (views and in-place results alias an
    input) is a new allocation of `storage.nbytes()`; it is released when the last tracked tensor
    on it is garbage-collected. Storages that existed before the mode (weights, inputs) are not
    counted, nor are views of them. Workspace inside a kernel is invisible here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, list[int]] = {}  # storage data_ptr -> [tracked tensors, nbytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((*args, *kwargs.values()))}
        for t in _tensors(out if isinstance(out, (tuple, list)) else (out,)):
            if t.device.type != "meta":
                self._track(t, inputs)
        return out

    def _track(self, t: Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr == 0 or nbytes == 0:
            return
        entry = self._live.get(ptr)
        if entry is None:
            if ptr in inputs:  # a view or in-place result on an untracked (pre-existing) storage
                return
            entry = self._live[ptr] = [0, nbytes]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self._live.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self._live[ptr]


class PeakMeter:
    """Peak memory allocated since entering, readable at any time inside (`peak()`): the CUDA
    allocator's peak above the start, or on the CPU the peak of live tensor storages (`LiveBytes`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.how = ("cuda max_memory_allocated above the start" if device.type == "cuda"
                    else "peak bytes of live tensor storages created during the run (TorchDispatchMode)")
        self._live: LiveBytes | None = None
        self._base = 0

    def __enter__(self) -> "PeakMeter":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._live = LiveBytes().__enter__()
        return self

    def peak(self) -> int:
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._base
        return self._live.peak

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> tuple[int, str]:
    """Peak memory fn allocates beyond what was allocated before it, and how it was measured."""
    with PeakMeter(device) as meter:
        fn()
        return meter.peak(), meter.how


def random_tokens(shape: tuple[int, ...], vocab: int, seed: int, device: torch.device) -> Tensor:
    """Random token ids: what the bench measures does not depend on the data."""
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def interleave(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
               inner: int = 1, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn: `warmup` untimed calls each, then `repeats` rounds calling every
    fn in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device, inner))
    return times
