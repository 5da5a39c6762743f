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

from elastic_cli import bench, measure
from elastic_cli.data.loader import Batch
from elastic_cli.memory import REGISTRY, hippo
from elastic_cli.memory.base import Memory, Read, detach_state
from elastic_cli.model.decoder import Decoder
from elastic_cli.model.init import init_weights
from elastic_cli.train import train_step

V, D, HEADS, HIDDEN, SEG = 29, 16, 2, 24, 8
CPU = torch.device("cpu")


def build(kind="elastic", **options):
    opts = {"order": 6, "samples": 4, **options} if kind == "elastic" else options
    model = Decoder(V, D, 2, HEADS, HIDDEN, SEG, {i: REGISTRY[kind](HEADS, D // HEADS, **opts) for i in (0, 1)})
    init_weights(model, seed=0)
    return model


def toks(*shape, seed=0):
    return bench.random_tokens(shape, V, seed, CPU)


# ---------------------------------------------------------------- summaries

def test_summarize_closed_form():
    s = measure.summarize([3.0, 1.0, 10.0, 2.0])
    assert s == {"median": 2.5, "min": 1.0, "max": 10.0, "spread": pytest.approx(9 / 2.5), "n": 4}
    with pytest.raises(ValueError):
        measure.summarize([])


def test_paired_ratios_and_history_ratio():
    assert measure.paired_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]
    with pytest.raises(ValueError):
        measure.paired_ratios([1.0], [1.0, 2.0])
    assert bench.history_ratio({4096: 2.0, 65536: 3.0}, 65536, 4096) == 1.5


def test_kernel_ratios_pair_each_kernel_with_its_floor():
    times = {"write_fresh": [4.0, 6.0], "write_cached": [2.0, 3.0], "write_floor": [1.0, 2.0],
             "read": [3.0, 3.0], "read_floor": [1.0, 3.0]}
    assert bench.kernel_ratios(times) == {"absorb_vs_matmul_floor": [4.0, 3.0], "absorb_cached_vs_matmul_floor": [2.0, 1.5],
                                          "sampling_vs_matmul_floor": [3.0, 1.0]}


def test_estimate_closed_form():
    plan = bench.Plan(3, 2, 1, 1, eval_histories=(8, 32), generate_histories=(8, 16), generate_tokens=None)
    # train (2 + 3) * 1; eval 3 * 0.5 * 40 / 8 = 7.5; generation 0.5 * 24 / 8 + 2 * 3 * 8 * 0.1 = 6.3
    assert bench.estimate_seconds(plan, 1.0, 0.5, 0.1, 8) == pytest.approx(5 + 7.5 + 6.3)
    assert bench.estimate_seconds(plan._replace(generate_tokens=4), 1.0, 0.5, 0.1, 8) == pytest.approx(5 + 7.5 + 3.9)


def test_interleave_calls_warm_up_then_alternates():
    calls = []
    times = bench.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, CPU, inner=2)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 2
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}


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
        bench.evaluate_document(model, doc, nullcontext())  # fill the R/W and sampling caches
        peaks[kind] = [bench.eval_peak(model, doc[:, :n], nullcontext())[0] for n in (2 * SEG, 8 * SEG)]
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
    assert bench.evaluate_document(model, doc, nullcontext()) == pytest.approx(float(want), rel=1e-5)


def test_generation_is_greedy_decoding_of_the_full_forward():
    model = build(schedule="exponential")
    prefix = toks(1, 2 * SEG + 3)
    stream, last = bench.read_prefix(model, prefix, nullcontext())
    got = bench.generate_greedy(model, stream, last, SEG, nullcontext())
    seq = prefix
    for _ in range(SEG):
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


def test_kernels_compute_the_memory_ops_and_floors_have_their_flops():
    shapes = bench.KernelShapes(batch=2, heads=HEADS, head_dim=D // HEADS, order=6, samples=4, segment=SEG)
    memory = REGISTRY["elastic"](HEADS, D // HEADS, order=6, samples=4)
    fns = bench.kernel_fns(memory, shapes, CPU)
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

    assert count(fns["write_cached"]) == count(fns["write_floor"]) == 2 * 2 * 6 * (6 + SEG) * 2 * D
    assert count(fns["read"]) == count(fns["read_floor"]) == 2 * 2 * 4 * 6 * 2 * D


def test_summary_rows_mark_targets():
    result = {"train_ratio_elastic_vs_none": 0.85, "eval_memory_ratio_64k_vs_4k": 1.0, "mfu": "n/a",
              "spread": {"train_ratio_elastic_vs_none": 0.1}}
    rows = {r[0]: r for r in bench.summary_rows(result)}
    assert rows["train_ratio_elastic_vs_none"] == ["train_ratio_elastic_vs_none", "0.850", "0.100", ">= 0.9 (MISSED)"]
    assert rows["eval_memory_ratio_64k_vs_4k"][3] == "<= 1.05 (met)"
    assert rows["mfu"][1] == "n/a"


RECIPE = """
model: {vocab_size: 64, d_model: 16, n_layer: 2, n_head: 2, mlp_hidden: 32, segment_len: 512}
memory: {kind: elastic, order: 8, samples: 8}
data: {path: unused-by-bench}
train: {global_batch: 2, micro_batch: 2, segments: 2, bptt_segments: 1, steps: 1, lr: 1.0e-3}
"""


def test_cli_quick_run_emits_every_key(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("elastic_cli.build", reason="needs config/build/optim from the train branch")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "b" / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "elastic_cli", "bench", "--recipe", str(recipe), "--quick",
                           "--device", "cpu", "--json", str(out), "xl.cache=8", "memorizing.store=16", "memorizing.topk=4",
                           "melodi.short_tokens=4", "melodi.summary_tokens=2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["variants"]["xl"]["memory"] == {"kind": "xl", "layers": "all", "cache": 8}  # KIND.key=value
    assert result["variants"]["elastic"]["memory"]["order"] == 8  # the recipe's own kind keeps its options
    kinds = [k for k in REGISTRY if k in result["variants"]]
    assert {"none", "elastic"} <= set(kinds)
    for key in ("device", "torch", "recipe", "variants", "train_ratio_elastic_vs_none", "eval_memory_ratio_64k_vs_4k",
                "generate_latency_ratio_64k_vs_1k", "absorb_vs_matmul_floor", "sampling_vs_matmul_floor", "mfu"):
        assert key in result, key
    for kind in kinds:
        assert f"mfu_{kind}" in result and result["train_tokens_per_s"][kind]["median"] > 0
        if kind != "none":
            assert result[f"train_ratio_{kind}_vs_none"] > 0
    assert result["mfu"] == "n/a"  # CPU
    assert result["variants"]["elastic"]["memory_floats_per_sequence"] == 2 * 2 * 8 * 16  # layers * 2 N d_model
    assert "about" in proc.stderr and "train_ratio_elastic_vs_none" in proc.stdout
