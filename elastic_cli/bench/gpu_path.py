"""`elastic bench`: what the accelerator code path launches, counted on any machine.

The model is traced on the `meta` device: tensors without data, so a CUDA-sized model costs nothing to
run, and every branch that is not the CPU's (`device.type == "cpu"`) is the one CUDA takes; `meta`
also counts as CUDA for flash attention (`model/merge._flash_cuda`), whose meta kernels exist.
Parameters are bf16 (as a bf16 run computes), memory states and constants keep their own dtypes.
A dispatch mode sees every aten op below autograd:
  launches    ops on a device tensor that run a kernel: views (`OpOverload.is_view`) and allocations
              without a fill (`empty*`, `new_empty`, `_unsafe_view`) are not counted;
  f64         launches with a float64 operand or result (slow on GPUs: 1/64 of the fp32 rate on many);
  host syncs  reads of a device value on the host (`.item()`, `bool()`, `.tolist()`, `.cpu()`): the
              host waits for the device to drain. On `meta` they return zeros, so the code runs on.
What it cannot see: kernels fused or replayed by torch.compile / CUDA graphs (it counts the eager
path), and autocast's casts (meta tensors have no autocast).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from elastic_cli.data.loader import Batch
from elastic_cli.model.decoder import Decoder
from elastic_cli.bench.history import stream_after
from elastic_cli.train.optim import build_optimizer
from elastic_cli.train.step import train_step
from elastic_cli.build import build_model

_NO_KERNEL = frozenset({"empty.memory_format", "empty_strided.default", "empty_like.default", "new_empty.default",
                        "new_empty_strided.default", "_unsafe_view.default", "lift_fresh.default"})
_TO_HOST = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)


def _on_device(t: torch.Tensor) -> bool:
    return t.device.type == "meta"


class Launches(TorchDispatchMode):
    """Counts launches, float64 launches and host syncs of the ops run inside it (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.f64 = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func is torch.ops.aten._local_scalar_dense.default and any(_on_device(t) for t in inputs):
            self.syncs += 1  # .item() / bool() / int() of a device value
            return False if inputs[0].dtype == torch.bool else 0
        if func in _TO_HOST and self._to_host(func, args, kwargs):
            self.syncs += 1  # .cpu() / .tolist(): the host waits for the value
            src = args[0] if func is torch.ops.aten._to_copy.default else args[1]
            out = torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)
            return out if func is torch.ops.aten._to_copy.default else args[0].copy_(out)
        out = func(*args, **kwargs)
        tensors = inputs + [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(_on_device(t) for t in tensors) and not func.is_view and func._overloadname and \
                f"{func._opname}.{func._overloadname}" not in _NO_KERNEL:
            self.ops += 1
            self.f64 += any(t.dtype == torch.float64 for t in tensors)
        return out

    @staticmethod
    def _to_host(func, args, kwargs) -> bool:
        if func is torch.ops.aten._to_copy.default:
            device = kwargs.get("device")
            return _on_device(args[0]) and device is not None and torch.device(device).type == "cpu"
        return args[0].device.type == "cpu" and _on_device(args[1])


def count(fn: Callable[[], object]) -> Launches:
    with Launches() as launches:
        fn()
    return launches


def traced(model: Decoder) -> Decoder:
    """The model on `meta` with bf16 parameters (buffers keep their dtype: RoPE tables, sampling matrices)."""
    model = model.to("meta")
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    return model


META = torch.device("meta")


@torch.no_grad()
def after_one_segment(model: Decoder) -> tuple:
    """Memory states after one segment of one row (t = segment_len > 0: the memory is read and written)."""
    tokens = torch.zeros(1, model.segment_len, dtype=torch.long, device=META)
    return model(tokens, model.empty_states(1, META))[1]


@torch.no_grad()
def segment_counts(model: Decoder) -> tuple[Launches, Launches]:
    """One eval segment at t > 0 with its write, and the same without the write."""
    states = after_one_segment(model)
    tokens = torch.zeros(1, model.segment_len, dtype=torch.long, device=META)
    return count(lambda: model(tokens, states)), count(lambda: model(tokens, states, write=False))


@torch.no_grad()
def token_count(model: Decoder) -> float:
    """Launches per generated token, the mean over one whole segment of single-token steps from a
    segment boundary at t > 0 (the segment's fold into memory and the next reads included)."""

    stream, token = stream_after(model, after_one_segment(model)), torch.zeros(1, 1, dtype=torch.long, device=META)

    def run():
        s = stream
        for _ in range(model.segment_len):
            _, s = model.step(token, s)

    return count(run).ops / model.segment_len


def train_step_syncs(cfg, model: Decoder) -> int:
    """Host syncs of one `step.train_step` at the recipe's micro-batch and window (the batch comes from
    the host, as the loader's does)."""

    t, m = cfg.train, cfg.model
    shape = (t.micro_batch, t.segments, m.segment_len)
    batch = Batch(torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long),
                  torch.arange(t.segments).expand(t.micro_batch, t.segments) == 0)
    optimizer = build_optimizer(model, t.lr, t.betas, t.weight_decay, META)
    return count(lambda: train_step(cfg, model, optimizer, batch, nullcontext(), META)).syncs


def gpu_path(configs: dict) -> dict:
    """The proxies for every kind in `configs` (kind -> RunConfig), and the headline keys:
    gpu_path_ops_per_write_layer (elastic: launches its write adds to a segment, per memory layer),
    gpu_path_f64_ops_per_segment (elastic: float64 launches of an eval segment with its write),
    gpu_path_ops_per_token {kind: launches per generated token}, host_syncs_per_train_step (the most
    over the kinds)."""

    per_kind: dict[str, dict] = {}
    for kind, cfg in configs.items():
        model = traced(build_model(cfg))
        with_write, without = segment_counts(model)
        layers = max(1, len(model.memory_layers))
        per_kind[kind] = {"ops_per_segment": with_write.ops, "f64_ops_per_segment": with_write.f64,
                          "ops_per_write_layer": (with_write.ops - without.ops) / layers,
                          "ops_per_token": token_count(model), "host_syncs_per_train_step": train_step_syncs(cfg, model)}
    result: dict = {"gpu_path": per_kind,
                    "gpu_path_ops_per_token": {k: v["ops_per_token"] for k, v in per_kind.items()},
                    **{f"gpu_path_ops_per_token_{k}": v["ops_per_token"] for k, v in per_kind.items()},
                    "host_syncs_per_train_step": max(v["host_syncs_per_train_step"] for v in per_kind.values())}
    if "elastic" in per_kind:
        result["gpu_path_ops_per_write_layer"] = per_kind["elastic"]["ops_per_write_layer"]
        result["gpu_path_f64_ops_per_segment"] = per_kind["elastic"]["f64_ops_per_segment"]
    if "elastic" in per_kind and "none" in per_kind:
        result["gpu_path_ops_per_token_elastic_vs_none"] = (per_kind["elastic"]["ops_per_token"]
                                                            / per_kind["none"]["ops_per_token"])
    return result
