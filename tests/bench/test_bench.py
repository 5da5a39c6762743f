"""bench: every measured quantity's function against a closed form or an equivalence; the whole
`elastic bench --quick` once, for completeness of its JSON (no timing thresholds anywhere)."""
import copy
from contextlib import nullcontext
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from elastic_cli.bench import job as bench
from elastic_cli.bench import history as bench_history
from elastic_cli.bench import kernels as bench_kernels
from elastic_cli.bench import measure
from elastic_cli.data.loader import Batch
from elastic_cli.memory import REGISTRY, hippo
from elastic_cli.memory.base import Memory, Read, detach_state
from elastic_cli.model.decoder import Decoder, DecoderShape
from elastic_cli.model.init import init_weights
from elastic_cli.train.step import train_step

V, D, HEADS, HIDDEN, SEG = 29, 16, 2, 24, 8
CPU = torch.device("cpu")


def build(kind="elastic", **options):
    opts = {"order": 6, "samples": 4, **options} if kind == "elastic" else options
    model = Decoder(DecoderShape(V, D, 2, HEADS, HIDDEN, SEG), {i: REGISTRY[kind](HEADS, D // HEADS, **opts) for i in (0, 1)})
    init_weights(model, seed=0)
    return model


def toks(*shape, seed=0):
    return measure.random_tokens(shape, V, seed, CPU)


# ---------------------------------------------------------------- summaries

def test_summarize_closed_form():
    s = measure.summarize([3.0, 1.0, 10.0, 2.0])
    assert s == {"median": 2.5, "min": 1.0, "max": 10.0, "spread": pytest.approx(9 / 2.5), "n": 4}
    with pytest.raises(ValueError):
        measure.summarize([])


def test_paired_ratios():
    assert measure.paired_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]
    with pytest.raises(ValueError):
        measure.paired_ratios([1.0], [1.0, 2.0])


def test_kernel_ratios_pair_each_kernel_with_its_floor():
    times = {"write_fresh": [4.0, 6.0], "write_cached": [2.0, 3.0], "write_floor": [1.0, 2.0],
             "read": [3.0, 3.0], "read_floor": [1.0, 3.0]}
    assert bench_kernels.kernel_ratios(times) == {
        "absorb_vs_matmul_floor": [4.0, 3.0], "absorb_cached_vs_matmul_floor": [2.0, 1.5],
        "sampling_vs_matmul_floor": [3.0, 1.0], "write_new_t_vs_seen_t": [2.0, 2.0]}


def test_size_names_and_ratio_keys_name_what_is_measured():
    assert [bench.size_name(n) for n in (1024, 4096, 16384, 1 << 20, 3 << 20, 1000, 2560)] == \
        ["1k", "4k", "16k", "1M", "3M", "1000", "2560"]
    assert bench.ratio_names(bench.make_plan(False, None, None, 64)) == (
        "eval_memory_ratio_1M_vs_4k", "eval_time_ratio_1M_vs_4k", "generate_latency_ratio_1M_vs_1k")
    assert bench.ratio_names(bench.make_plan(True, None, None, 64)) == (
        "eval_memory_ratio_16k_vs_1k", "eval_time_ratio_16k_vs_1k", "generate_latency_ratio_16k_vs_1k")
    plan = bench.make_plan(False, 65536, 50, 2048)  # --history 65536 --train-steps 50, segments of 2048
    assert plan.eval_histories == (4096, 65536) and plan.generate_histories == (2048, 65536)  # 1k -> 2k
    assert plan.train_repeats == 50
    assert bench.ratio_names(plan)[2] == "generate_latency_ratio_64k_vs_2k"
    assert set(bench.targets(plan)) == {"train_ratio_elastic_vs_none", "eval_memory_ratio_64k_vs_4k",
                                        "generate_latency_ratio_64k_vs_2k", "write_new_t_vs_seen_t",
                                        "gpu_path_ops_per_write_layer", "gpu_path_f64_ops_per_segment",
                                        "gpu_path_ops_per_token_none", "gpu_path_ops_per_token_elastic_vs_none",
                                        "host_syncs_per_train_step"}


def test_estimate_closed_form():
    plan = bench.Plan(3, 2, 1, 1, eval_histories=(8, 32), generate_histories=(16, 32), generate_tokens=None,
                      eval_segments=2)
    # train (1 + 4 warm-up + 3) * 1; reads 0.5 * (3 * 32 + 8 + 16) / 8 = 7.5; timed (1 + 2) * 2 * (2 * 0.5 + 8 * 0.1) = 10.8
    assert bench.WARMUP_STEPS == 4
    assert bench.estimate_seconds(plan, 1.0, 0.5, 0.1, 8, 3.0) == pytest.approx(8 + 7.5 + 10.8)
    assert bench.estimate_seconds(plan._replace(generate_tokens=4), 1.0, 0.5, 0.1, 8, 3.0) == \
        pytest.approx(8 + 7.5 + 6 * (1 + 0.4))


def test_interleave_calls_warm_up_then_alternates():
    calls = []
    times = measure.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, CPU, inner=2)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 2
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
    calls.clear()
    measure.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 1, CPU, warmup=3)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a", "b"]


# ---------------------------------------------------------------- live bytes

def test_live_bytes_closed_form():
    weights = torch.randn(1000)
    with measure.LiveBytes() as live:
        x = None
        for _ in range(10):
            x = torch.ones(250) * 2  # alive at once: previous x, ones, product (1000 bytes each)
        assert (live.current, live.peak) == (1000, 3000)
        del x
        assert live.current == 0
        view = weights.view(10, 100)  # a view of a storage from before: not an allocation
        assert live.current == 0
        y = weights * 1
        y.add_(1)  # in place: no new storage
        head = y[:5]
        del y
        assert live.current == 4000  # the view keeps the storage alive
        del head, view
        assert (live.current, live.peak) == (0, 4000)


def test_peak_bytes_cpu():
    peak, how = measure.peak_bytes(lambda: torch.zeros(100, dtype=torch.float64).sum(), CPU)
    assert peak == 808 and "live tensor" in how  # 800 for the zeros + 8 for the sum


class GrowState(NamedTuple):
    keys: torch.Tensor  # (B, t, D): every token ever read


class GrowingMemory(Memory):
    """A memory that keeps everything (like a kNN memory without a bound): it must look like growth."""

    def empty(self, batch, device):
        return GrowState(torch.zeros(batch, 0, self.n_head * self.head_dim, device=device))

    def read(self, state, seg):
        return Read()

    def write(self, state, seg):
        return GrowState(torch.cat([state.keys, seg.x], dim=1))

    def numel(self, state):
        return state.keys[0].numel()


def test_eval_peak_flat_for_none_and_elastic_and_grows_for_a_growing_memory():
    doc = toks(1, 8 * SEG)
    peaks = {}
    for kind in ("none", "elastic", "grow"):
        model = build(kind, schedule="exponential") if kind == "elastic" else build("none")
        if kind == "grow":
            for block in model.blocks:
                block.memory = GrowingMemory(HEADS, D // HEADS)
        bench_history.evaluate_document(model, doc, nullcontext())  # warm up (the sampling matrix of a fixed schedule)
        peaks[kind] = [bench_history.eval_peak(model, doc[:, :n], nullcontext())[0] for n in (2 * SEG, 8 * SEG)]
        one = bench_history.history_pass(model, V, [2 * SEG, 8 * SEG], nullcontext(), CPU)  # one pass, two marks
        if kind == "grow":
            assert one.peaks[8 * SEG] - one.peaks[2 * SEG] >= 2 * 6 * SEG * D * 4
            assert one.floats[8 * SEG] - one.floats[2 * SEG] == 2 * 6 * SEG * D  # two layers
        else:
            assert one.peaks[2 * SEG] == one.peaks[8 * SEG]
    assert peaks["none"][0] == peaks["none"][1]
    assert peaks["elastic"][0] == peaks["elastic"][1]
    # two layers keep 6 more segments of (SEG, D) fp32 each
    assert peaks["grow"][1] - peaks["grow"][0] >= 2 * 6 * SEG * D * 4


# ---------------------------------------------------------------- what is timed computes the right thing

def test_evaluate_document_is_the_mean_next_token_loss():
    model = build()
    doc = toks(2, 3 * SEG + 3)
    states, logits = model.empty_states(2, CPU), []
    for s in range(0, doc.shape[1], SEG):
        out, states = model(doc[:, s:s + SEG], states)
        logits.append(out)
    want = F.cross_entropy(torch.cat(logits, 1)[:, :-1].flatten(0, 1), doc[:, 1:].flatten()).detach()
    loss, after = bench_history.evaluate_document(model, doc, nullcontext())
    assert loss == pytest.approx(float(want), rel=1e-5)
    for a, b in zip(after, states):
        torch.testing.assert_close(a.ck, b.ck)


def test_history_pass_states_equal_reading_in_one_go():
    """The pass reads one segment per call, carrying states; at every length they equal the states
    of reading that prefix of the same document in one call."""
    model = build(schedule="exponential")
    lengths = [2 * SEG, 5 * SEG]
    one = bench_history.history_pass(model, V, lengths, nullcontext(), CPU)
    doc = measure.random_tokens((1, 5 * SEG + 1), V, 4, CPU)  # the pass's document
    for n in lengths:
        want = bench_history.evaluate_document(model, doc[:, :n + 1], nullcontext())[1]
        for a, b in zip(one.states[n], want):
            torch.testing.assert_close(a.ck, b.ck)
            assert int(a.t[0]) == n
    assert one.floats[2 * SEG] == one.floats[5 * SEG] == model.numel(model.empty_states(1, CPU))


def test_timed_after_times_every_kind_and_history():
    models = {"none": build("none"), "elastic": build()}
    passes = {k: bench_history.history_pass(m, V, [SEG, 3 * SEG], nullcontext(), CPU) for k, m in models.items()}
    timing = bench_history.Timing((SEG, 3 * SEG), (SEG, 3 * SEG), SEG, 4, 2)
    evals, gens = bench_history.timed_after(models, passes, timing, nullcontext(), CPU)
    assert set(evals) == set(gens) == {(k, n) for k in models for n in (SEG, 3 * SEG)}
    assert all(len(v) == 2 and min(v) > 0 for v in [*evals.values(), *gens.values()])


def test_generation_is_greedy_decoding_of_the_full_forward():
    model = build(schedule="exponential")
    prefix = toks(1, 2 * SEG)
    _, states = bench_history.evaluate_document(model, torch.cat([prefix, toks(1, 1)], 1), nullcontext())
    first = torch.zeros(1, V)  # the first generated token is 0
    got = bench_history.generate_greedy(model, bench_history.stream_after(model, states), first, SEG, nullcontext())
    seq = torch.cat([prefix, torch.zeros(1, 1, dtype=torch.long)], 1)
    for _ in range(SEG - 1):
        states, out = model.empty_states(1, CPU), None
        for s in range(0, seq.shape[1], SEG):
            out, states = model(seq[:, s:s + SEG], states)
        seq = torch.cat([seq, out[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, seq[:, prefix.shape[1]:])


@pytest.mark.parametrize("bptt", [1, 3])
def test_train_step_is_sgd_on_the_truncated_bptt_loss(bptt):
    """The bench times train.train_step, the trainer's own step: check it against the TBPTT loss."""
    model = build()
    ref = copy.deepcopy(model)
    x, y = toks(2, 3, SEG, seed=1), toks(2, 3, SEG, seed=2)
    cfg = SimpleNamespace(train=SimpleNamespace(micro_batch=2, bptt_segments=bptt, aux_weight=0.0, grad_clip=0.0,
                                                checkpoint_segments=False, loss_on="all"))
    batch = Batch(x, y, torch.tensor([[True, False, False]] * 2))
    loss, n_tokens, _ = train_step(cfg, model, torch.optim.SGD(model.parameters(), lr=1.0), batch, nullcontext(), CPU)
    assert n_tokens == 2 * 3 * SEG
    states, total = ref.empty_states(2, CPU), 0
    for s in range(3):
        if s % bptt == 0:
            states = detach_state(states)
        logits, states = ref(x[:, s], states)
        total = total + F.cross_entropy(logits.flatten(0, 1), y[:, s].flatten()) / 3
    total.backward()
    assert loss == pytest.approx(float(total.detach()), rel=1e-5)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q.detach() - q.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aux_weight, writes", [(0.0, 2), (0.5, 3)])
def test_train_step_skips_the_write_whose_state_it_drops(aux_weight, writes):
    """The window's last segment writes no memory (its state is dropped) unless an auxiliary loss
    reads that state; every other segment writes once per memory layer."""
    model = build()
    layers = [b.memory for b in model.blocks if b.memory is not None]
    seen = []
    for mem in layers:
        mem.write = (lambda state, seg, plan=None, _w=mem.write: seen.append(int(state.t[0])) or _w(state, seg, plan))
    cfg = SimpleNamespace(train=SimpleNamespace(micro_batch=2, bptt_segments=2, aux_weight=aux_weight, grad_clip=0.0,
                                                checkpoint_segments=False, loss_on="all"))
    batch = Batch(toks(2, 3, SEG, seed=1), toks(2, 3, SEG, seed=2), torch.tensor([[True, False, False]] * 2))
    train_step(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), batch, nullcontext(), CPU)
    assert sorted(seen) == sorted(s * SEG for s in range(writes) for _ in layers)


def test_kernels_compute_the_memory_ops_and_floors_have_their_flops():
    shapes = bench_kernels.KernelShapes(batch=2, heads=HEADS, head_dim=D // HEADS, order=6, samples=4, segment=SEG)
    memory = REGISTRY["elastic"](HEADS, D // HEADS, order=6, samples=4)
    fns = bench_kernels.kernel_fns(memory, shapes, CPU)
    first, second = fns["write_fresh"](), fns["write_fresh"]()
    assert int(first.t[0]) + SEG == int(second.t[0])  # a new t at every call
    cached = fns["write_cached"]()
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(2, HEADS, 6, D // HEADS, generator=gen)
    x = torch.randn(2, HEADS, SEG, D // HEADS, generator=gen)
    torch.testing.assert_close(cached.ck, hippo.absorb(c, 10 * SEG, x))

    def count(fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    # the step banks [R | (1-ρ)A] come from numpy on the host (not seen by the counter); the device carries
    # the base injection to t, (1-ρ)A @ W(0, l): 2 N^2 l more than the product the floor matches
    assert count(fns["write_cached"]) == count(fns["write_fresh"]) == count(fns["write_floor"]) + 2 * 6 * 6 * SEG
    assert count(fns["write_floor"]) == 2 * 2 * 6 * (6 + SEG) * 2 * D
    assert count(fns["read"]) == count(fns["read_floor"]) == 2 * 2 * 4 * 6 * 2 * D


def test_summary_rows_mark_targets():
    plan = bench.make_plan(False, 65536, None, 64)
    result = {"train_ratio_elastic_vs_none": 0.85, "eval_memory_ratio_64k_vs_4k": 1.0, "mfu": "n/a",
              "spread": {"train_ratio_elastic_vs_none": 0.1},
              "targets": {k: f"{op} {v}" for k, (op, v) in bench.targets(plan).items()}}
    rows = {r[0]: r for r in bench.summary_rows(result)}
    assert rows["train_ratio_elastic_vs_none"] == ["train_ratio_elastic_vs_none", "0.850", "0.100", ">= 0.95 (MISSED)"]
    assert rows["eval_memory_ratio_64k_vs_4k"][3] == "<= 1.02 (met)"
    assert rows["mfu"][1] == "n/a"


RECIPE = """
model: {vocab_size: 64, d_model: 16, n_layer: 2, n_head: 2, mlp_hidden: 32, segment_len: 512}
memory: {kind: elastic, order: 8, samples: 8}
data: {path: unused-by-bench}
train: {global_batch: 2, micro_batch: 2, segments: 2, bptt_segments: 1, steps: 1, lr: 1.0e-3}
"""


@pytest.mark.slow
def test_cli_quick_run_emits_every_key(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("elastic_cli.build", reason="needs config/build/optim from the train branch")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    root = Path(__file__).resolve().parents[2]
    from elastic_cli import allocator

    env = {**{k: v for k, v in os.environ.items() if k not in ("ELASTIC_MALLOC", *allocator.USER_SETTINGS)},
           "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "b" / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "elastic_cli", "bench", "--recipe", str(recipe), "--quick",
                           "--device", "cpu", "--json", str(out), "xl.cache=8", "memorizing.store=16", "memorizing.topk=4",
                           "melodi.short_tokens=4", "melodi.summary_tokens=2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["variants"]["xl"]["memory"] == {"kind": "xl", "layers": "all", "cache": 8, "grad": False}  # KIND.key=value
    assert result["variants"]["elastic"]["memory"]["order"] == 8  # the recipe's own kind keeps its options
    kinds = [k for k in REGISTRY if k in result["variants"]]
    assert {"none", "elastic"} <= set(kinds)
    for key in ("device", "torch", "recipe", "variants", "train_ratio_elastic_vs_none", "eval_memory_ratio_16k_vs_1k",
                "eval_time_ratio_16k_vs_1k", "generate_latency_ratio_16k_vs_1k", "absorb_vs_matmul_floor",
                "sampling_vs_matmul_floor", "write_new_t_vs_seen_t", "train_peak_bytes", "mfu"):
        assert key in result, key
    for kind in kinds:
        assert f"mfu_{kind}" in result and result["train_tokens_per_s"][kind]["median"] > 0
        if kind != "none":
            assert result[f"train_ratio_{kind}_vs_none"] > 0
    assert result["mfu"] == "n/a"  # CPU
    assert result["threads"] == 1  # OMP_NUM_THREADS above: recorded with the clock
    assert result["device_name"].endswith(f"({torch.backends.cpu.get_cpu_capability()})")  # the CPU and its SIMD level
    assert result["host_malloc"] == ("system" if allocator._glibc() is None else  # the entry point's policy
                                     "kept (glibc mmap threshold 32 MiB, trim threshold 1 GiB)")
    assert result["kernel_shapes_write_bar"]["order"] == 64 and result["kernel_shapes_write_bar"]["segment"] == 2048
    assert set(result["eval_peak_bytes"]["elastic"]) == {"1024", "16384"}
    assert not any("64k" in key for key in result)  # keys name what was measured
    assert result["variants"]["elastic"]["memory_floats_per_sequence"] == 2 * 2 * 8 * 16  # layers * 2 N d_model
    assert "about" in proc.stderr and "train_ratio_elastic_vs_none" in proc.stdout
    assert result["phases_done"] == ["gpu_path", "train", "kernels", "history"] and result["skipped_phases"] == []
    assert set(result["train_compile_s"]) == set(kinds) and result["gpu_path_f64_ops_per_segment"] == 0
    assert set(result["gpu_path_ops_per_token"]) == {"none", "elastic"}  # the traced kinds
    # past the deadline every phase is skipped, and the JSON written at the start says so
    cut = tmp_path / "cut.json"
    proc = subprocess.run([sys.executable, "-m", "elastic_cli", "bench", "--recipe", str(recipe), "--quick",
                           "--device", "cpu", "--kinds", "none,elastic", "--deadline", "0.001", "--json", str(cut)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cut_result = json.loads(cut.read_text())
    assert cut_result["skipped_phases"] == ["gpu_path", "train", "kernels", "history"]
    assert cut_result["phases_done"] == [] and "train_tokens_per_s" not in cut_result and "past the deadline" in proc.stderr


def test_cpu_clock_counts_this_process_only():
    """On the CPU, `timed` counts this process's CPU time: sleeping (as when another job holds the
    core) costs nothing, spinning does."""
    import time

    assert measure.timed(lambda: time.sleep(0.05), CPU) < 0.01
    spin = measure.timed(lambda: sum(range(200000)), CPU)
    assert spin > 0
    assert "process" in measure.clock(CPU)[1] and "wall" in measure.clock(torch.device("cuda"))[1]
