"""`elastic bench`: what Elastic Memory costs, measured in one process with the variants interleaved.

Five measurements (each computed by a function below, each with a unit test):
  1. train tokens/s of every memory kind in the registry, at the recipe's model size   (train_tokens_per_s)
  2. peak memory while evaluating a 4k- and a 64k-token document segment by segment     (eval_peak_bytes)
  3. time per generated token after a 1k- and a 64k-token prefix read with Decoder.step (generate_s_per_token)
  4. Elastic Memory write (absorb) and read (sampling) against a plain matmul of the same FLOPs (kernel_times)
  5. on CUDA, model FLOPs utilisation of the train step (flops.py)
Inputs are random tokens: cost does not depend on the data. Ratios are medians of per-repeat ratios.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import flops, measure, precision
from .atomic import write_atomic
from .memory import REGISTRY
from .memory.base import SegmentView
from .data.loader import Batch
from .memory.elastic import ElasticMemory
from .model.decoder import Decoder, Stream

HISTORY_KINDS = ("none", "elastic", "memorizing")  # --quick: the baseline, ours, and a kNN memory
TARGETS = {"train_ratio_elastic_vs_none": (">=", 0.90), "eval_memory_ratio_64k_vs_4k": ("<=", 1.05),
           "generate_latency_ratio_64k_vs_1k": ("<=", 1.10)}


class Plan(NamedTuple):
    train_repeats: int  # interleaved train steps per variant (after one warm-up step)
    generate_repeats: int  # interleaved generation runs per history
    kernel_repeats: int  # interleaved kernel timings
    kernel_inner: int  # calls averaged in one kernel timing
    eval_histories: tuple[int, int]  # document lengths for the peak memory (short, long)
    generate_histories: tuple[int, int]  # prefix lengths for the generation latency (short, long)
    generate_tokens: int | None  # tokens per generation run; None: one segment (includes one fold into memory)


# The keys keep the full run's names (..._64k_vs_4k); --quick compares 1k with 16k tokens of history
# instead (recorded in the JSON under "plan"), and measures history costs only for HISTORY_KINDS,
# so that it finishes in under a minute on 2 cores.
FULL = Plan(9, 7, 9, 50, eval_histories=(4096, 65536), generate_histories=(1024, 65536), generate_tokens=None)
QUICK = Plan(3, 3, 3, 5, eval_histories=(1024, 16384), generate_histories=(1024, 16384), generate_tokens=32)


def random_tokens(shape: tuple[int, ...], vocab: int, seed: int, device: torch.device) -> Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed)).to(device)


# ------------------------------------------------------------------------------ 1. training cost

def interleave(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
               inner: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn: one warm-up call each, then `repeats` rounds calling every fn in turn."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(measure.timed(fn, device, inner))
    return times


# ------------------------------------------------------------------------------ 2. memory vs history

@torch.no_grad()
def evaluate_document(model: Decoder, tokens: Tensor, autocast) -> float:
    """Mean next-token loss of documents tokens (B, n) read segment by segment (as eval does)."""
    states = model.empty_states(tokens.shape[0], tokens.device)
    nll, count, seg = 0.0, 0, model.segment_len
    for s in range(0, tokens.shape[1] - 1, seg):
        x, y = tokens[:, s:s + seg], tokens[:, s + 1:s + seg + 1]  # (B, l), (B, l') with l' <= l
        with autocast:
            logits, states = model(x, states)  # (B, l, V)
        nll += float(F.cross_entropy(logits[:, :y.shape[1]].float().flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    return nll / count


def eval_peak(model: Decoder, tokens: Tensor, autocast) -> tuple[int, str]:
    """Peak bytes allocated while evaluating tokens (B, n), and how they were measured."""
    return measure.peak_bytes(lambda: evaluate_document(model, tokens, autocast), tokens.device)


# ------------------------------------------------------------------------------ 3. generation vs history

@torch.no_grad()
def read_prefix(model: Decoder, prefix: Tensor, autocast) -> tuple[Stream, Tensor]:
    """Stream after reading prefix (B, n) with Decoder.step, one segment per call; and its last logits."""
    stream = model.start_stream(prefix.shape[0], prefix.device)
    with autocast:
        for s in range(0, prefix.shape[1], model.segment_len):
            logits, stream = model.step(prefix[:, s:s + model.segment_len], stream)  # (B, l, V)
    return stream, logits[:, -1]


@torch.no_grad()
def generate_greedy(model: Decoder, stream: Stream, last_logits: Tensor, n: int, autocast) -> Tensor:
    """n greedy tokens (B, n) from a stream (not changed: streams are values)."""
    out = []
    token = last_logits.argmax(-1, keepdim=True)  # (B, 1)
    with autocast:
        for _ in range(n):
            out.append(token)
            logits, stream = model.step(token, stream)  # (B, 1, V)
            token = logits[:, -1].argmax(-1, keepdim=True)
    return torch.cat(out, dim=1)


# ------------------------------------------------------------------------------ 4. memory kernels

class KernelShapes(NamedTuple):
    batch: int
    heads: int
    head_dim: int
    order: int  # N
    samples: int  # M
    segment: int  # l


def kernel_fns(memory: ElasticMemory, shapes: KernelShapes, device: torch.device) -> dict[str, Callable[[], object]]:
    """Elastic Memory write and read, each beside a plain matmul with exactly its FLOPs.

    write_fresh: a new t at every call (a long document: the R/W banks are built each segment);
    write_cached: the same t (training windows revisit the same t, the banks come from the cache).
    A write of K and V is C <- R C + W X twice: 2 * 2 N (N + l) (B H d) FLOPs, the same as one
    (N, N + l) @ (N + l, 2 B H d) matmul. A read is S @ C_K and S @ C_V: one (M, N) @ (N, 2 B H d).
    """
    b, h, d, n, m, l = shapes
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(b, h, n, d, generator=gen).to(device)  # (B, H, N, d)
    x = torch.randn(b, h, l, d, generator=gen).to(device)  # (B, H, l, d)
    seg = SegmentView(x=torch.zeros(b, l, h * d, device=device), q=x, k=x, v=x)
    base = 10 * l
    state = memory.empty(b, device)._replace(ck=c, cv=c.clone(), t=torch.full((b,), base, device=device))
    counter = iter(range(base + l, 2**62, l))
    write_a = torch.randn(n, n + l, generator=gen).to(device)  # (N, N + l)
    write_b = torch.randn(n + l, 2 * b * h * d, generator=gen).to(device)  # (N + l, 2BHd)
    read_a = torch.randn(m, n, generator=gen).to(device)  # (M, N)
    read_b = torch.randn(n, 2 * b * h * d, generator=gen).to(device)  # (N, 2BHd)
    return {
        "write_fresh": lambda: memory.write(state._replace(t=torch.full((b,), next(counter), device=device)), seg),
        "write_cached": lambda: memory.write(state, seg),
        "write_floor": lambda: write_a @ write_b,
        "read": lambda: memory.read(state, seg),
        "read_floor": lambda: read_a @ read_b,
    }


def kernel_ratios(times: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per-repeat ratios of each Elastic Memory kernel to its matmul floor."""
    return {
        "absorb_vs_matmul_floor": measure.paired_ratios(times["write_fresh"], times["write_floor"]),
        "absorb_cached_vs_matmul_floor": measure.paired_ratios(times["write_cached"], times["write_floor"]),
        "sampling_vs_matmul_floor": measure.paired_ratios(times["read"], times["read_floor"]),
    }


# ------------------------------------------------------------------------------ the whole run

def history_ratio(values: dict[int, float], long: int, short: int) -> float:
    """values[long] / values[short]: how a cost grows with the history read."""
    return values[long] / values[short]


def estimate_seconds(plan: Plan, step_s: float, segment_s: float, token_s: float, segment_len: int) -> float:
    """Rough duration of a run from one train step, one eval segment and one generated token of
    every variant (seconds, summed over the variants). The peak memory tracker of the CPU makes
    eval about 3x slower; the kernels are not counted (they take well under a second)."""
    eval_s = 3 * segment_s * sum(plan.eval_histories) / segment_len
    tokens = plan.generate_tokens or segment_len
    gen_s = segment_s * sum(plan.generate_histories) / segment_len + 2 * (1 + plan.generate_repeats) * tokens * token_s
    return (2 + plan.train_repeats) * step_s + eval_s + gen_s


def kind_configs(recipe: str, overrides: list[str]) -> dict:
    """The recipe once per memory kind in the registry (`none` and `elastic` first): the recipe and
    overrides with memory.kind=KIND (the recipe's own options for its kind, defaults for the others),
    plus the overrides KIND.key=value as memory.key=value of that kind only."""
    from .config import load_config

    kinds = [k for k in ("none", "elastic") if k in REGISTRY] + sorted(set(REGISTRY) - {"none", "elastic"})
    shared = [o for o in overrides if o.split(".", 1)[0] not in REGISTRY]
    return {kind: load_config(recipe, [*shared, f"memory.kind={kind}",
                                       *(f"memory.{o.split('.', 1)[1]}" for o in overrides if o.split(".", 1)[0] == kind)])
            for kind in kinds}


def run_bench(cfg, configs: dict, device: torch.device, quick: bool, recipe: str, say: Callable[[str], None]) -> dict:
    """All five measurements for the recipe's model size on `device`; returns the JSON-able result."""
    from .build import build_model
    from .config import to_dict
    from .model.init import init_weights
    from .optim import build_optimizer
    from .train import train_step

    plan, start = (QUICK if quick else FULL), time.perf_counter()
    m, t = cfg.model, cfg.train
    batch, segments, seg_len = t.micro_batch, t.segments, m.segment_len
    bf16 = precision.uses_bf16(device.type, t.dtype)
    autocast = precision.autocast(device, t.dtype)
    models: dict[str, Decoder] = {}
    for kind, c in configs.items():
        models[kind] = build_model(c).to(device)
        init_weights(models[kind], t.seed)
    fake = Batch(random_tokens((batch, segments, seg_len), m.vocab_size, 1, device),  # inputs (B, S, L)
                   random_tokens((batch, segments, seg_len), m.vocab_size, 2, device),  # targets (B, S, L)
                   torch.arange(segments, device=device).expand(batch, segments) == 0)  # doc_start (B, S)
    steps = {}
    for kind, model in models.items():
        opt = build_optimizer(model, t.lr, t.betas, t.weight_decay, device)
        steps[kind] = (lambda c=configs[kind], model=model, opt=opt:  # the trainer's own step (train.py)
                       train_step(c, model, opt, fake, autocast, device))
    history = {k: mm for k, mm in models.items() if not quick or k in HISTORY_KINDS}
    one_segment = random_tokens((1, seg_len), m.vocab_size, 3, device)
    step_s = sum(measure.timed(fn, device) for fn in steps.values())
    segment_s = sum(measure.timed(lambda mm=mm: evaluate_document(mm, one_segment, autocast), device)
                    for mm in history.values())
    no_logits = torch.zeros(1, m.vocab_size, device=device)  # (1, V): the first generated token is 0
    token_s = sum(measure.timed(lambda mm=mm: generate_greedy(mm, mm.start_stream(1, device), no_logits, 1, autocast),
                                device) for mm in history.values())
    say(f"bench: {len(models)} variants ({', '.join(models)}) on {device.type}, {'quick' if quick else 'full'} run, "
        f"about {estimate_seconds(plan, step_s, segment_s, token_s, seg_len):.0f} s")

    say(f"bench: 1/5 train step (at {time.perf_counter() - start:.0f} s)")
    train_times = interleave(steps, plan.train_repeats, device)
    window = batch * segments * seg_len
    result: dict = {"train_tokens_per_s": {k: measure.summarize([window / s for s in v]) for k, v in train_times.items()}}
    spread: dict[str, float] = {}
    for kind in models:
        if kind != "none" and "none" in models:
            ratios = measure.summarize(measure.paired_ratios(train_times["none"], train_times[kind]))
            result[f"train_ratio_{kind}_vs_none"], spread[f"train_ratio_{kind}_vs_none"] = ratios["median"], ratios["spread"]

    say(f"bench: 2/5 kernels (at {time.perf_counter() - start:.0f} s)")
    if "elastic" in models:
        mem = next(b.memory for b in models["elastic"].blocks if b.memory is not None)
        shapes = KernelShapes(batch, m.n_head, m.d_model // m.n_head, mem.order, mem.samples, seg_len)
        ktimes = interleave(kernel_fns(mem, shapes, device), plan.kernel_repeats, device, plan.kernel_inner)
        result["kernel_seconds"] = {k: measure.summarize(v) for k, v in ktimes.items()}
        result["kernel_shapes"] = shapes._asdict()
        for key, ratios in kernel_ratios(ktimes).items():
            summary = measure.summarize(ratios)
            result[key], spread[key] = summary["median"], summary["spread"]

    say(f"bench: 3/5 memory vs history (eval) (at {time.perf_counter() - start:.0f} s)")
    peaks: dict[str, dict[int, float]] = {}
    for kind, model in history.items():
        peaks[kind] = {}
        for n in plan.eval_histories:
            peaks[kind][n], how = eval_peak(model, random_tokens((1, n), m.vocab_size, 4, device), autocast)
    result["eval_peak_bytes"] = {k: {str(n): v for n, v in p.items()} for k, p in peaks.items()}
    result["eval_memory_measure"] = how
    for kind in history:
        result[f"eval_memory_ratio_64k_vs_4k_{kind}"] = history_ratio(peaks[kind], *plan.eval_histories[::-1])

    say(f"bench: 4/5 generation vs history (at {time.perf_counter() - start:.0f} s)")
    gen_fns, new_tokens = {}, plan.generate_tokens or seg_len
    for kind, model in history.items():
        for n in plan.generate_histories:
            stream, last = read_prefix(model, random_tokens((1, n), m.vocab_size, 5, device), autocast)
            gen_fns[(kind, n)] = (lambda model=model, stream=stream, last=last:
                                  generate_greedy(model, stream, last, new_tokens, autocast))
    gen = interleave(gen_fns, plan.generate_repeats, device)
    per_token = {key: [s / new_tokens for s in v] for key, v in gen.items()}
    result["generate_s_per_token"] = {k: {str(n): measure.summarize(per_token[(k, n)]) for n in plan.generate_histories}
                                      for k in history}
    long, short = plan.generate_histories[::-1]
    for kind in history:
        summary = measure.summarize(measure.paired_ratios(per_token[(kind, long)], per_token[(kind, short)]))
        result[f"generate_latency_ratio_64k_vs_1k_{kind}"] = summary["median"]
        spread[f"generate_latency_ratio_64k_vs_1k_{kind}"] = summary["spread"]

    say(f"bench: 5/5 model FLOPs utilisation (at {time.perf_counter() - start:.0f} s)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = flops.peak_flops(name) if device.type == "cuda" else None
    result["train_flops_per_step"] = {k: flops.train_step_flops(mm, batch, segments, seg_len) for k, mm in models.items()}
    for kind in models:
        f = result["train_flops_per_step"][kind]
        value = flops.mfu(f, measure.summarize(train_times[kind])["median"], peak) if f else None
        result[f"mfu_{kind}"] = "n/a" if value is None else value

    for key in ("eval_memory_ratio_64k_vs_4k", "generate_latency_ratio_64k_vs_1k", "mfu"):
        if f"{key}_elastic" in result:
            result[key] = result[f"{key}_elastic"]
            if f"{key}_elastic" in spread:
                spread[key] = spread[f"{key}_elastic"]
    return {
        "device": device.type, "device_name": name, "torch": torch.__version__, "recipe": recipe,
        "quick": quick, "plan": plan._asdict(), "history_kinds": list(history), "peak_bf16_flops": peak,
        "model": to_dict(cfg)["model"], "train": {"micro_batch": batch, "segments": segments,
                                                  "bptt_segments": t.bptt_segments, "dtype": "bf16" if bf16 else "fp32"},
        "variants": {k: {"memory": c.memory.model_dump(mode="json"),
                         "parameters": sum(p.numel() for p in models[k].parameters()),
                         "memory_floats_per_sequence": models[k].numel(models[k].empty_states(1, device))}
                     for k, c in configs.items()},
        **result, "spread": spread, "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "duration_s": time.perf_counter() - start,
    }


def summary_rows(result: dict) -> list[list[str]]:
    """Rows (metric, value, spread, target) for the console table."""
    rows = []
    for key in sorted(k for k in result if k.startswith(("train_ratio", "eval_memory_ratio", "generate_latency",
                                                         "absorb", "sampling", "mfu"))):
        value = result[key]
        shown = value if isinstance(value, str) else f"{value:.3f}"
        spread = result["spread"].get(key)
        target = ""
        if key in TARGETS:
            op, bound = TARGETS[key]
            met = value >= bound if op == ">=" else value <= bound
            target = f"{op} {bound} ({'met' if met else 'MISSED'})"
        rows.append([key, shown, "" if spread is None else f"{spread:.3f}", target])
    return rows


def run(recipe: str, overrides: list[str], device: str | None, quick: bool, json_path: str | None) -> dict:
    """`elastic bench`: load the recipe, measure, print a table, write the JSON (atomically; "-": stdout)."""
    import json
    from pathlib import Path

    from . import console
    from .config import load_config
    from .errors import UsageError

    cfg = load_config(recipe, [o for o in overrides if o.split(".", 1)[0] not in REGISTRY])
    configs = kind_configs(recipe, overrides)
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    result = run_bench(cfg, configs, torch.device(name), quick, recipe, console.info)
    text = json.dumps(result, indent=1, sort_keys=True)
    if json_path == "-":
        console.out(text)
        return result
    console.table(f"elastic bench ({result['device_name']}, {result['duration_s']:.0f} s)",
                  ["metric", "median", "spread", "target"], summary_rows(result))
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (text + "\n").encode("utf-8"))
    return result
