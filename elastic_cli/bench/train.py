"""`elastic bench`: one model per memory kind at the recipe's size, the trainer's own step on each
(train.train_step, with train.compile honoured), its tokens/s, peak memory and, on CUDA, MFU."""
from __future__ import annotations

import platform
from typing import Callable, NamedTuple

import torch

from elastic_cli import flops
from elastic_cli.bench import measure
from elastic_cli.data.loader import Batch
from elastic_cli.memory import REGISTRY
from elastic_cli.model.decoder import Decoder
from elastic_cli.config import load_config
from elastic_cli.build import build_model
from elastic_cli.model.init import init_weights
from elastic_cli.train.optim import build_optimizer
from elastic_cli.train.step import train_step
from elastic_cli.train.autobatch import resolve, with_micro_batch


def kind_configs(recipe: str, overrides: list[str], kinds: list[str] | None = None) -> dict:
    """The recipe once per memory kind in the registry (`none` and `elastic` first), or per kind in
    `kinds`: the recipe and overrides with memory.kind=KIND (the recipe's own options for its kind,
    defaults for the others), plus the overrides KIND.key=value as memory.key=value of that kind only."""

    order = [k for k in ("none", "elastic") if k in REGISTRY] + sorted(set(REGISTRY) - {"none", "elastic"})
    shared = [o for o in overrides if o.split(".", 1)[0] not in REGISTRY]
    return {kind: load_config(recipe, [*shared, f"memory.kind={kind}",
                                       *(f"memory.{o.split('.', 1)[1]}" for o in overrides if o.split(".", 1)[0] == kind)])
            for kind in order if kinds is None or kind in kinds}


def cpu_name() -> str:
    """The CPU model and the vector instructions torch's kernels dispatch to, e.g. "AMD EPYC (AVX2)":
    the same code's train ratios differ between machines (docs/results-cpu.md)."""
    model = platform.processor() or platform.machine() or "cpu"
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({torch.backends.cpu.get_cpu_capability()})"


WARMUP_STEPS = 4  # untimed steps per kind: the host heap grows over the first few (allocator.py), then is reused


class Variants(NamedTuple):
    configs: dict  # kind -> RunConfig
    models: dict[str, Decoder]  # kind -> model on the device (with train.compile its blocks are compiled for
    #                             whole segments: eval uses them; generation streams eagerly)
    steps: dict[str, Callable[[], object]]  # kind -> one train step (compiled forward if train.compile)


def build_variants(cfg, configs: dict, device: torch.device, autocast) -> Variants:
    """Models, optimizers and train-step closures on one fixed random batch (B, S, L); `cfg` gives
    the model and train settings, `configs` one config per kind (`kind_configs`)."""


    cfg = resolve(cfg, 1, device)  # train.micro_batch=auto: as one training process would choose (by the estimate)
    configs = {k: with_micro_batch(c, cfg.train.micro_batch) for k, c in configs.items()}
    m, t = cfg.model, cfg.train
    shape = (t.micro_batch, t.segments, m.segment_len)
    fake = Batch(measure.random_tokens(shape, m.vocab_size, 1, device),  # inputs (B, S, L)
                 measure.random_tokens(shape, m.vocab_size, 2, device),  # targets (B, S, L)
                 torch.arange(t.segments).expand(t.micro_batch, t.segments) == 0)  # doc_start (B, S), CPU
    models, steps = {}, {}
    for kind, c in configs.items():
        model = build_model(c).to(device)
        init_weights(model, t.seed)
        models[kind] = model
        opt = build_optimizer(model, t.lr, t.betas, t.weight_decay, device)
        if t.compile:
            model.compile_blocks()  # as training does (streaming generation stays eager)
        steps[kind] = (lambda c=c, model=model, opt=opt:  # the trainer's own step (train/step.py)
                       train_step(c, model, opt, fake, autocast, device))
    return Variants(configs, models, steps)


def train_costs(variants: Variants, cfg, repeats: int, device: torch.device) -> tuple[dict, dict]:
    """Tokens/s (interleaved repeats), peak bytes of one step, ratios to `none`, FLOPs and MFU.
    Returns (result entries, spread entries)."""
    batch, segments, seg_len = cfg.train.micro_batch, cfg.train.segments, cfg.model.segment_len
    window = batch * segments * seg_len
    times = measure.interleave(variants.steps, repeats, device, warmup=WARMUP_STEPS)
    result: dict = {"train_tokens_per_s": {k: measure.summarize([window / s for s in v]) for k, v in times.items()},
                    "train_peak_bytes": {k: measure.peak_bytes(fn, device)[0] for k, fn in variants.steps.items()}}
    spread: dict[str, float] = {}
    for kind in variants.models:
        if kind != "none" and "none" in variants.models:
            ratios = measure.summarize(measure.paired_ratios(times["none"], times[kind]))
            result[f"train_ratio_{kind}_vs_none"], spread[f"train_ratio_{kind}_vs_none"] = ratios["median"], ratios["spread"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    peak = flops.peak_flops(name) if device.type == "cuda" else None
    result["train_flops_per_step"] = {k: flops.train_step_flops(mm, batch, segments, seg_len)
                                      for k, mm in variants.models.items()}
    for kind in variants.models:
        f = result["train_flops_per_step"][kind]
        value = flops.mfu(f, measure.summarize(times[kind])["median"], peak) if f else None
        result[f"mfu_{kind}"] = "n/a" if value is None else value
    result["peak_bf16_flops"], result["device_name"] = peak, name
    return result, spread
