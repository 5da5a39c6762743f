"""`elastic bench`: what memory costs, measured in one process with the variants interleaved.

Measurements, each computed by a function with a unit test:
  1. train tokens/s and peak memory of the trainer's step, every memory kind, at the recipe's size;
     on CUDA, model FLOPs utilisation                                              (bench_train.py)
  2. Elastic Memory's write and read against plain matmuls of the same FLOPs at the recipe's shape,
     and a write at a never-seen t against one at a seen t at N=64, l=2048          (bench_kernels.py)
  3. eval peak memory and eval time per token after a short and a long history, and time per
     generated token after a short and a long prefix, for every kind              (bench_history.py)
Ratio keys name the sizes measured: eval_memory_ratio_1M_vs_4k in the full run, _16k_vs_1k with
--quick, other sizes with --history. Inputs are random tokens: cost does not depend on the data.
Ratios are medians of per-repeat ratios of interleaved measurements. Times are CPU seconds of this
process on the CPU, wall-clock seconds on CUDA (`measure.clock`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from elastic_cli import allocator, console, precision
from elastic_cli.atomic import write_atomic
from elastic_cli.bench import measure
from elastic_cli.bench.gpu_path import gpu_path
from elastic_cli.bench.history import (Timing, evaluate_document, generate_greedy, history_pass, stream_after,
                                       timed_after)
from elastic_cli.bench.kernels import KernelShapes, kernel_fns, kernel_ratios
from elastic_cli.bench.train import WARMUP_STEPS, build_variants, cpu_name, kind_configs, train_costs
from elastic_cli.code_version import code_version
from elastic_cli.config import load_config, to_dict
from elastic_cli.errors import UsageError
from elastic_cli.memory import REGISTRY
from elastic_cli.train.autobatch import with_micro_batch

HISTORY_KINDS = ("none", "elastic", "memorizing")  # --quick: the baseline, ours, and a kNN memory
WRITE_BAR_SHAPE = (64, 2048)  # (N, l) of the new-t write measurement


class Plan(NamedTuple):
    train_repeats: int  # interleaved train steps per variant (after bench_train.WARMUP_STEPS untimed ones)
    generate_repeats: int  # interleaved timings per history (eval after it and generation after it)
    kernel_repeats: int  # interleaved kernel timings
    kernel_inner: int  # calls averaged in one kernel timing
    eval_histories: tuple[int, int]  # history lengths for eval peak memory and time per token (short, long)
    generate_histories: tuple[int, int]  # prefix lengths for the generation latency (short, long)
    generate_tokens: int | None  # tokens per generation run; None: one segment (includes one fold into memory)
    eval_segments: int  # segments evaluated (timed) after each history


FULL = Plan(100, 7, 9, 20, eval_histories=(4096, 1 << 20), generate_histories=(1024, 1 << 20),
            generate_tokens=None, eval_segments=4)
QUICK = Plan(3, 3, 3, 5, eval_histories=(1024, 16384), generate_histories=(1024, 16384),
             generate_tokens=32, eval_segments=2)


def size_name(n: int) -> str:
    """Token counts as written in keys: 1024 -> 1k, 4096 -> 4k, 1048576 -> 1M, 1000 -> 1000."""
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    return f"{n >> 10}k" if n % 1024 == 0 else str(n)


def make_plan(quick: bool, history: int | None, train_steps: int | None, segment_len: int) -> Plan:
    """The full or quick plan, with the long history and the train repeats overridden if given;
    every history is rounded up to whole segments (the memory is written a segment at a time)."""
    plan = QUICK if quick else FULL
    if history is not None:
        plan = plan._replace(eval_histories=(plan.eval_histories[0], history),
                             generate_histories=(plan.generate_histories[0], history))
    if train_steps is not None:
        plan = plan._replace(train_repeats=train_steps)

    def whole(n: int) -> int:
        return max(1, -(-n // segment_len)) * segment_len

    return plan._replace(eval_histories=tuple(whole(n) for n in plan.eval_histories),
                         generate_histories=tuple(whole(n) for n in plan.generate_histories))


def ratio_names(plan: Plan) -> tuple[str, str, str]:
    """Keys of the history ratios, named after the sizes measured: eval memory, eval time, generation."""
    (es, el), (gs, gl) = plan.eval_histories, plan.generate_histories
    e, g = f"{size_name(el)}_vs_{size_name(es)}", f"{size_name(gl)}_vs_{size_name(gs)}"
    return f"eval_memory_ratio_{e}", f"eval_time_ratio_{e}", f"generate_latency_ratio_{g}"


def targets(plan: Plan) -> dict[str, tuple[str, float]]:
    """The bars (issues 13 and 24), keyed like the result."""
    memory, _, latency = ratio_names(plan)
    return {"train_ratio_elastic_vs_none": (">=", 0.95), memory: ("<=", 1.02), latency: ("<=", 1.05),
            "write_new_t_vs_seen_t": ("<=", 1.5), **GPU_PATH_TARGETS}


GPU_PATH_TARGETS = {  # counted along the accelerator path on any machine (bench_gpu_path.py; issue 24)
    "gpu_path_ops_per_write_layer": ("<=", 4), "gpu_path_f64_ops_per_segment": ("<=", 0),
    "gpu_path_ops_per_token_none": ("<=", 150), "gpu_path_ops_per_token_elastic_vs_none": ("<=", 1.2),
    "host_syncs_per_train_step": ("<=", 2)}
GPU_PATH_KINDS = ("none", "elastic")  # the kinds traced


def estimate_seconds(plan: Plan, step_s: float, segment_s: float, token_s: float, segment_len: int,
                     meter_factor: float) -> float:
    """Rough duration from one train step, one eval segment and one generated token (seconds,
    summed over the variants). The long pass runs under the peak meter (on the CPU about 3x slower:
    meter_factor); the short histories are read again outside it. Kernels are not counted."""
    shorts = {*plan.eval_histories[:1], *plan.generate_histories[:1]}
    read = segment_s * (meter_factor * plan.eval_histories[1] + sum(shorts)) / segment_len
    tokens = plan.generate_tokens or segment_len
    timed = (1 + plan.generate_repeats) * 2 * (plan.eval_segments * segment_s + tokens * token_s)
    return (1 + WARMUP_STEPS + plan.train_repeats) * step_s + read + timed


def _kernels(model, m, batch: int, plan: Plan, device: torch.device) -> tuple[dict, dict]:
    """Elastic Memory kernels at the recipe's shape, and the new-t write at N=64, l=2048."""
    mem = next(b.memory for b in model.blocks if b.memory is not None)
    result, spread = {}, {}
    order, seg = WRITE_BAR_SHAPE
    bar = type(mem)(mem.n_head, mem.head_dim, order=order, samples=order, schedule=mem.schedule).to(device)
    for name, memory, shapes in (
            ("recipe", mem, KernelShapes(batch, m.n_head, m.d_model // m.n_head, mem.order, mem.samples, m.segment_len)),
            ("write_bar", bar, KernelShapes(batch, m.n_head, m.d_model // m.n_head, order, order, seg))):
        times = measure.interleave(kernel_fns(memory, shapes, device), plan.kernel_repeats, device, plan.kernel_inner)
        result[f"kernel_seconds_{name}"] = {k: measure.summarize(v) for k, v in times.items()}
        result[f"kernel_shapes_{name}"] = shapes._asdict()
        for key, ratios in kernel_ratios(times).items():
            if (key == "write_new_t_vs_seen_t") == (name == "write_bar"):
                summary = measure.summarize(ratios)
                result[key], spread[key] = summary["median"], summary["spread"]
    return result, spread


def _history(variants, kinds: list[str], plan: Plan, m, autocast, device, say) -> tuple[dict, dict]:
    """Peaks and per-token times against the history, for `kinds`; with the ratio keys."""
    memory_key, time_key, latency_key = ratio_names(plan)
    lengths = sorted({*plan.eval_histories, *plan.generate_histories})
    passes = {}
    for kind in kinds:
        say(f"bench:   {kind}: reading {plan.eval_histories[1]:,} tokens")
        passes[kind] = history_pass(variants.models[kind], m.vocab_size, lengths, autocast, device)
    new_tokens = plan.generate_tokens or m.segment_len
    timing = Timing(plan.eval_histories, plan.generate_histories, plan.eval_segments * m.segment_len, new_tokens,
                    plan.generate_repeats)
    evals, gens = timed_after({k: variants.models[k] for k in kinds}, passes, timing, autocast, device)
    (es, el), (gs, gl) = plan.eval_histories, plan.generate_histories
    result: dict = {
        "eval_peak_bytes": {k: {str(n): passes[k].peaks[n] for n in plan.eval_histories} for k in kinds},
        "eval_memory_measure": next(iter(passes.values())).how if passes else "",
        "state_floats": {k: {str(n): v for n, v in passes[k].floats.items()} for k in kinds},
        "eval_s_per_token": {k: {str(n): measure.summarize(evals[(k, n)]) for n in plan.eval_histories} for k in kinds},
        "generate_s_per_token": {k: {str(n): measure.summarize(gens[(k, n)]) for n in plan.generate_histories}
                                 for k in kinds},
    }
    spread = {}
    for kind in kinds:
        result[f"{memory_key}_{kind}"] = passes[kind].peaks[el] / passes[kind].peaks[es]
        for key, table, long, short in ((time_key, evals, el, es), (latency_key, gens, gl, gs)):
            summary = measure.summarize(measure.paired_ratios(table[(kind, long)], table[(kind, short)]))
            result[f"{key}_{kind}"], spread[f"{key}_{kind}"] = summary["median"], summary["spread"]
    for key in (memory_key, time_key, latency_key):  # the headline: Elastic Memory's
        if f"{key}_elastic" in result:
            result[key] = result[f"{key}_elastic"]
            if f"{key}_elastic" in spread:
                spread[key] = spread[f"{key}_elastic"]
    return result, spread


def run_bench(cfg, configs: dict, device: torch.device, plan: Plan, opts: BenchOptions,
              say: Callable[[str], None], save: Callable[[dict], None] | None = None) -> dict:
    """Every measurement for the recipe's model size on `device`, one variant per config in
    `configs` (`kind_configs`); returns the JSON-able result. `save` gets the result so far after
    every phase (a run killed later keeps what it measured); with `deadline` (seconds) a phase that
    would start after it is skipped (listed in `skipped_phases`) and the timed train steps are cut to
    fit a third of it."""
    recipe, quick, deadline = opts.recipe, opts.quick, opts.deadline
    start, m, t, code = time.perf_counter(), cfg.model, cfg.train, code_version()  # the code measured, not later
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as training sets it
    bf16 = precision.uses_bf16(device.type, t.dtype)
    autocast = precision.autocast(device, t.dtype)
    variants = build_variants(cfg, configs, device, autocast)
    cfg = with_micro_batch(cfg, next(iter(variants.configs.values())).train.micro_batch)  # auto: as resolved
    t = cfg.train
    history = [k for k in variants.models if not quick or k in HISTORY_KINDS]
    one = measure.random_tokens((1, m.segment_len + 1), m.vocab_size, 3, device)
    first = torch.zeros(1, m.vocab_size, device=device)
    # each call twice: the first compiles (torch.compile) and warms caches, the second is what repeats cost
    calls = {k: [measure.timed(fn, device) for _ in range(2)] for k, fn in variants.steps.items()}
    step_s = sum(c[1] for c in calls.values())
    segment_s = sum(measure.timed(lambda mm=variants.models[k]: evaluate_document(mm, one, autocast), device)
                    for k in history)
    token_s = sum(measure.timed(lambda mm=variants.models[k]: generate_greedy(
        mm, stream_after(mm, mm.empty_states(1, device)), first, 1, autocast), device) for k in history)
    if deadline is not None:  # the train phase gets a third of what is left
        left = deadline - (time.perf_counter() - start)
        fit = int(left / 3 / max(step_s, 1e-9)) - WARMUP_STEPS
        plan = plan._replace(train_repeats=max(3, min(plan.train_repeats, fit)))
    estimate = estimate_seconds(plan, step_s, segment_s, token_s, m.segment_len, 1.0 if device.type == "cuda" else 3.0)
    say(f"bench: {len(variants.models)} variants ({', '.join(variants.models)}) on {device.type}, "
        f"{'quick' if quick else 'full'} run, histories {plan.eval_histories} / {plan.generate_histories}, "
        f"{plan.train_repeats} train steps, about {estimate:.0f} s (warm calls; first calls "
        f"{', '.join(f'{k} {c[0]:.1f} s' for k, c in calls.items())})")
    result: dict = {
        "device": device.type, "torch": torch.__version__, "recipe": recipe, "quick": quick, "code": code,
        "clock": measure.clock(device)[1], "threads": torch.get_num_threads(),
        "host_malloc": allocator.policy(),
        "plan": plan._asdict(), "history_kinds": history, "model": to_dict(cfg)["model"],
        "train": {"micro_batch": t.micro_batch, "segments": t.segments, "bptt_segments": t.bptt_segments,
                  "dtype": "bf16" if bf16 else "fp32", "compile": bool(t.compile)},
        "variants": {k: {"memory": c.memory.model_dump(mode="json"),
                         "parameters": sum(p.numel() for p in variants.models[k].parameters()),
                         "memory_floats_per_sequence": variants.models[k].numel(variants.models[k].empty_states(1, device))}
                     for k, c in variants.configs.items()},
        "train_first_call_s": {k: c[0] for k, c in calls.items()},  # compilation included (train.compile)
        "train_warm_call_s": {k: c[1] for k, c in calls.items()},
        "train_compile_s": {k: max(0.0, c[0] - c[1]) for k, c in calls.items()},
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "estimate_s": estimate, "deadline_s": deadline, "phases_done": [], "skipped_phases": [], "duration_s": 0.0,
        "spread": {}, "targets": {k: f"{op} {v}" for k, (op, v) in targets(plan).items()},
    }
    if save is not None:
        save(result)  # the set-up, before any phase

    def gpu_path_phase():
        traced = {k: c for k, c in variants.configs.items() if k in GPU_PATH_KINDS}
        return (gpu_path(traced) if traced else {}), {}

    def kernels_phase():
        if "elastic" not in variants.models:
            return {}, {}
        return _kernels(variants.models["elastic"], m, t.micro_batch, plan, device)

    phases = (("launches along the accelerator path (traced on the meta device)", "gpu_path", gpu_path_phase),
              ("train step", "train", lambda: train_costs(variants, cfg, plan.train_repeats, device)),
              ("kernels", "kernels", kernels_phase),
              ("eval and generation vs history", "history",
               lambda: _history(variants, history, plan, m, autocast, device, say)))
    for i, (title, name, phase) in enumerate(phases):
        now = time.perf_counter() - start
        if deadline is not None and now > deadline:
            say(f"bench: {i}/{len(phases) - 1} {title}: skipped, past the deadline ({now:.0f} s > {deadline:.0f} s)")
            result["skipped_phases"].append(name)
            if save is not None:
                save(result)
            continue
        say(f"bench: {i}/{len(phases) - 1} {title} (at {now:.0f} s)")
        more, more_spread = phase()
        result.update(more)
        result["spread"].update(more_spread)
        result["phases_done"].append(name)
        if "mfu_elastic" in result:
            result["mfu"] = result["mfu_elastic"]
        result["duration_s"] = time.perf_counter() - start
        if save is not None:
            save(result)
    result["duration_s"] = time.perf_counter() - start
    return result


def summary_rows(result: dict) -> list[list[str]]:
    """Rows (metric, value, spread, target) for the console table; targets from result["targets"]."""
    rows, bars = [], result.get("targets", {})
    for key in sorted(k for k in result if k.startswith(("train_ratio", "eval_memory_ratio", "eval_time_ratio",
                                                         "generate_latency", "absorb", "sampling", "write_new_t",
                                                         "mfu", "gpu_path_ops_per_", "gpu_path_f64", "host_syncs"))
                      and not isinstance(result[k], dict)):
        value = result[key]
        shown = value if isinstance(value, str) else f"{value:.3f}"
        spread = result["spread"].get(key)
        target = ""
        if key in bars and not isinstance(value, str):
            op, bound = bars[key].split()
            met = value >= float(bound) if op == ">=" else value <= float(bound)
            target = f"{bars[key]} ({'met' if met else 'MISSED'})"
        rows.append([key, shown, "" if spread is None else f"{spread:.3f}", target])
    return rows


@dataclass(frozen=True)
class BenchOptions:
    """Everything `elastic bench` takes (the CLI builds it)."""

    recipe: str = "recipes/tiny.yaml"  # the model size
    overrides: tuple[str, ...] = ()  # key=value for every variant; KIND.key=value for one kind's
    device: str | None = None  # cpu | cuda (default: cuda when available)
    quick: bool = False  # few repeats, 1k vs 16k tokens of history
    out: str | None = None  # JSON path, written after every phase ('-': stdout at the end)
    kinds: str | None = None  # "k1,k2": only these memory kinds
    history: int | None = None  # long history for eval and generation, tokens
    train_steps: int | None = None  # timed train steps per kind
    deadline: float | None = None  # seconds: later phases are skipped


def run(opts: BenchOptions) -> dict:
    """`elastic bench`: load the recipe, measure, print a table, write the JSON (atomically after every
    phase, so a killed run keeps what it measured; "-": stdout at the end)."""
    kinds, history, train_steps, deadline, json_path = opts.kinds, opts.history, opts.train_steps, opts.deadline, opts.out
    chosen = None if kinds is None else [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = sorted(set(chosen or []) - set(REGISTRY))
    if unknown:
        raise UsageError(f"--kinds: unknown memory kind(s) {', '.join(unknown)}; choose from {', '.join(sorted(REGISTRY))}")
    if history is not None and history < 1:
        raise UsageError(f"--history must be >= 1 token, got {history}")
    if train_steps is not None and train_steps < 1:
        raise UsageError(f"--train-steps must be >= 1, got {train_steps}")
    if deadline is not None and not deadline > 0:
        raise UsageError(f"--deadline must be > 0 seconds, got {deadline}")
    overrides = list(opts.overrides)
    cfg = load_config(opts.recipe, [o for o in overrides if o.split(".", 1)[0] not in REGISTRY])
    configs = kind_configs(opts.recipe, overrides, chosen)
    name = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    plan = make_plan(opts.quick, history, train_steps, cfg.model.segment_len)
    path = Path(json_path) if json_path not in (None, "-") else None

    def save(result: dict) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode("utf-8"))

    result = run_bench(cfg, configs, torch.device(name), plan, opts, console.info, save)
    if json_path == "-":
        console.out(json.dumps(result, indent=1, sort_keys=True))
        return result
    console.table(f"elastic bench ({result.get('device_name', name)}, {result['duration_s']:.0f} s)",
                  ["metric", "median", "spread", "target"], summary_rows(result))
    return result
