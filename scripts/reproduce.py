"""Run the results experiments through the real CLI, then write docs/results.md (scripts/results.py).

  python scripts/reproduce.py --size cpu-seeds   # CPU, every kind x 3 seeds x 2 learning rates (about 5 hours
                                                 # of one core: 2.6 h with --jobs 2; see --plan)
  python scripts/reproduce.py --size cpu         # CPU, the same plus the footprint sweep, paper settings, longer runs
  python scripts/reproduce.py --size smoke       # minutes: tiny sizes, the whole pipeline
  python scripts/reproduce.py --size gpu         # one GPU: a larger model and longer documents
  python scripts/reproduce.py --size cpu-seeds --plan   # the runs and their estimated core-minutes; runs nothing
  python scripts/reproduce.py --kinds none,elastic --only mqar --steps 400 --seeds 0,1 --lrs 3e-3
  python scripts/reproduce.py --only babilong --babilong-kinds none,elastic --babilong-qa 1   # bAbI qa1 in books
  python scripts/reproduce.py --only mqar,probe   # several parts

What runs (every command is appended to OUT/commands.txt, relative to the repository):
- mqar (multi-query associative recall, `elastic prepare --task mqar`) with facts 0..S-1 segments before
  their queries. Every memory kind at a matched footprint (group `matched`): the learning rate is chosen
  per kind from `--lrs` by answer accuracy on the validation split (seed 0 at each), then the other
  seeds train at the chosen rate (seeds change the weights and the data order: `train.seed`); every
  matched row trains the same steps; rmt, armt and caching train with a segment-count curriculum
  (`train.curriculum`, as their papers); each memory kind also trains on a d = 1-only task
  (`--distance 1:1`: the sanity check its row must pass) and every seed is evaluated on new documents
  (another generator seed) of 8, 32 and 128 segments (length generalisation). Controls (a full-attention
  segment, facts in their query's segment) and ablations train once at the size's learning rate; the
  full `cpu` and `gpu` sizes add a footprint sweep, each kind at its paper's setting and longer runs.
- babilong: bAbI tasks (`--babilong-qa`) hidden in the shipped books (haystack/kjv), every kind (or
  `--babilong-kinds`) at the matched footprint of its window, the learning rate chosen and the seeds run
  as for mqar, evaluated on new documents 1x, 4x and 16x the training length.
- babilong-ablation: the ablations of babilong (none and Elastic Memory, every seed, at the rate chosen
  for their babilong row), evaluated on the same new documents as the babilong rows: trained on
  documents BABILONG_WINDOW x as long (memory carried through all their segments), and trained with
  the loss on every token (`train.loss_on=all`) instead of the answer alone; and the babilong Elastic
  Memory weights read at test time with PROBE_SAMPLES x the samples (uniform and exponential).
- language modelling on the Python standard library: loss by segment, long-context gain, xz floor.
Runs go `--jobs` at a time (each with its share of the cores); a run that fails is reported as failed
and the rest go on. A run whose eval file exists is not run again (delete OUT to redo).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from elastic_cli.errors import EXIT_DIVERGED  # noqa: E402  (the exit code of a NaN/inf loss)

SCHEDULES = ("uniform", "exponential", "gauss", "power")
PARTS = ("mqar", "probe", "babilong", "babilong-ablation", "lm")  # what `--only` can choose
SINGLE_GROUPS = ("control", "ablation", "sweep", "paper", "long", "lm")  # rows trained once (`single`)
ABLATION_KINDS = ("none", "elastic")  # babilong-ablation trains these kinds (of those asked for) ...
BABILONG_WINDOW = 4  # ... on documents this many times their babilong row's, and with the loss on every token
CURRICULUM_KINDS = ("rmt", "armt", "caching")
CODE_TOKENIZER, BOOKS_TOKENIZER = "tokenizers/code-8k.model", "tokenizers/books-8k.model"
BOOKS = "haystack/kjv"  # the shipped haystack: three books of the King James Bible (public domain)
PROBE_SAMPLES = 4  # the length probes read the matched Elastic Memory at this many times its samples  # recurrent kinds whose papers train on few segments first
PAPER_KL = 1e-6  # the ∞-former's KL weight on the sum over heads and queries (Martins et al. 2022)

# babilong: the training length of the tasks that do not fit `length` (qa2 needs 135 tokens, qa3 141; the
# generator refuses less); the others train on `length`
QA_LENGTHS = {"2": 160, "3": 160}

# task: mqar documents; model: the shared shape; train: steps, batch, seeds, learning rates; sanity: the
# d = 1 task's steps; lengths: eval document lengths in segments and documents per length; lm: the
# language-modelling runs; extras: the footprint sweep, paper settings and longer runs
_CPU = dict(length=128, seg=16, count=8000, pairs=8, keys=16, values=16, d=128, layers=2, heads=4, mlp=384,
            order=32, steps=700, batch=32, lr=3e-3, lrs=(1e-3, 3e-3), seeds=(0, 1, 2), sanity_steps=300,
            eval_docs=300, val_docs=160, lengths=(8, 32, 128), length_docs=(300, 120, 48), lm_steps=300,
            lm_segments=8, lm_batch=8, lm_seg=64, lm_docs=12, device="cpu", jobs=2, extras=True,
            sweep={"elastic": (8, 64)},
            # babilong: bAbI qa tasks hidden in the shipped books; documents of `length` tokens (`segments` of
            # `seg`), evaluated at `multiples` of that length on new documents
            babilong=dict(qa=(1, 2), length=128, seg=32, count=4000, multiples=(1, 4, 16), docs=(96, 48, 24),
                          lengths=QA_LENGTHS))
SIZES = {
    "smoke": dict(length=128, seg=16, count=400, pairs=4, keys=16, values=16, d=32, layers=2, heads=2, mlp=64,
                  order=8, steps=30, batch=8, lr=3e-3, lrs=(1e-3, 3e-3), seeds=(0, 1, 2), sanity_steps=20,
                  eval_docs=40, val_docs=20, lengths=(8, 32, 128), length_docs=(16, 8, 4), lm_steps=10,
                  lm_segments=4, lm_batch=4, lm_seg=16, lm_docs=4, device="cpu", jobs=2, extras=True,
                  sweep={"elastic": (4, 16), "xl": (4,), "memorizing": (4,)},
                  babilong=dict(qa=(1, 2), length=128, seg=32, count=200, multiples=(1, 4, 16), docs=(8, 4, 2),
                                lengths=QA_LENGTHS)),
    # the multi-seed CPU comparison: no sweep, paper settings or longer runs, fewer test and length
    # documents. 1000 steps, because the matched elastic run is still before its transition at 500 steps
    # of a 500-step schedule (0.23 at d >= 2) and saturated at 1000 (0.94; both measured 2026-12-04,
    # seed 0, lr 3e-3); about 100 core-minutes would allow ~300 steps per run. `--plan` prints the estimate.
    # The d = 1 sanity task trains 300 steps: at that budget xl failed it (0.333) although its matched row answers
    # every d = 1 query (1.000); 1000 steps for all eight memory kinds would add ~40 core-minutes, which the
    # 2026-12-05 run could not afford. The page says so beside the sanity column.
    # babilong trains 500 steps: in the 2026-12-05 runs at 1000 steps (none and elastic, 3 seeds and both rates)
    # the validation answer accuracy moved by at most 0.05 after step 200 (0.75-0.78 at step 100, 0.78-0.83 at
    # 1000) and the validation answer loss was lowest at step 200-500 in 6 of 8 runs; 500 steps for all nine
    # kinds is ~130 core-minutes where 1000 would be ~270.
    "cpu-seeds": {**_CPU, "steps": 1000, "sanity_steps": 300, "eval_docs": 200, "val_docs": 96,
                  "length_docs": (96, 48, 32), "extras": False, "sweep": {},
                  "babilong": {**_CPU["babilong"], "steps": 500}},
    "cpu": _CPU,
    "gpu": dict(length=2048, seg=256, count=40000, pairs=32, keys=128, values=64, d=512, layers=8, heads=8,
                mlp=1536, order=128, steps=4000, batch=64, lr=1e-3, lrs=(3e-4, 1e-3), seeds=(0, 1, 2),
                sanity_steps=1000, eval_docs=1000, val_docs=256, lengths=(8, 32, 128), length_docs=(400, 200, 50),
                lm_steps=4000, lm_segments=16, lm_seg=512, lm_batch=16, lm_docs=200, device="cuda", jobs=1,
                extras=True, sweep={"elastic": (32, 64, 256), "xl": (32, 512), "memorizing": (32, 512)},
                babilong=dict(qa=(1, 2), length=2048, seg=256, count=20000, multiples=(1, 4, 16), docs=(400, 100, 25))),
}
# Seconds per training step of each matched row at the `cpu` shape on one thread (2-vCPU AMD EPYC,
# the other core busy with another job), measured 2026-12-04 over steps 10..50 without validation;
# `--plan` uses them (a kind not listed counts as elastic). rmt at the matched footprint (128 memory
# tokens, 16,384 floats) took 5.56 s per step, 18x elastic: no size runs it.
CPU_SECONDS_PER_STEP = {"none": 0.264, "elastic": 0.306, "xl": 0.361, "memorizing": 0.419, "melodi": 0.599,
                        "infinity": 0.551, "armt": 0.540, "caching": 0.529, "rmt": 0.441}


def matched_floats(z: dict) -> int:
    """Memory floats per sequence of the matched footprint: Elastic Memory of order z['order'] on every
    layer, 2 * order * d_model per layer."""
    return 2 * z["order"] * z["d"] * z["layers"]


def memory(kind: str, z: dict, size: int | None = None) -> tuple[str, list[str]]:
    """(variant name, overrides) for `kind` holding about the floats of Elastic Memory of order `size`
    (default: the size's order) on every layer: 2 * size * d_model floats per layer. rmt is the
    exception: its tokens are model-width rows through every layer, so matching would multiply its
    cost; its row keeps n/4 tokens and the page states its footprint beside its name."""
    n, layers, segs = size or z["order"], z["layers"], z["length"] // z["seg"]
    mid = layers // 2
    entries = layers * n  # key/value entries of the matched footprint at one layer
    cache = min(z["seg"], entries // 4)  # memorizing: its XL cache (one segment, as the paper) beside the store
    long_store = max(1, entries // 4)  # melodi: short tokens per layer S and long FIFO C with L S + C = L n
    short = max(1, (entries - long_store) // layers)
    table = {
        "none": ("none", ["memory.kind=none"]),
        "elastic": (f"elastic-order{n}-uniform", ["memory.kind=elastic", f"memory.order={n}", f"memory.samples={n}",
                                                  "memory.schedule=uniform"]),
        "xl": (f"xl-cache{n}", ["memory.kind=xl", f"memory.cache={n}"]),
        "memorizing": (f"memorizing-store{entries - cache}-cache{cache}", [
            "memory.kind=memorizing", f"memory.layers=[{mid}]", f"memory.store={entries - cache}",
            f"memory.topk={max(1, min(n // 2, entries - cache))}", f"memory.cache={cache}"]),
        # the long FIFO gets long_tokens per window so that it spans the whole training document
        "melodi": (f"melodi-short{short}-long{long_store}", [
            "memory.kind=melodi", f"memory.short_tokens={short}", f"memory.summary_tokens={max(1, n // 4)}",
            f"memory.long_layer={mid}", f"memory.long_tokens={max(1, long_store // segs)}",
            f"memory.long_store={long_store}"]),
        # infinity holds basis * d_model floats per layer; armt about 6 * key_dim * (d_model + 1) (nu = 3);
        # caching (max_caches + 1) armt states
        "infinity": (f"infinity-basis{2 * n}", ["memory.kind=infinity", f"memory.basis={2 * n}",
                                                f"memory.resample={8 * n}"]),
        "armt": (f"armt-keydim{max(2, round(n / 3))}", ["memory.kind=armt", f"memory.tokens={max(1, n // 4)}",
                                                        f"memory.key_dim={max(2, round(n / 3))}"]),
        "caching": (f"caching-armt-keydim{max(2, round(n / 12))}", [
            "memory.kind=caching", "memory.base=armt", f"memory.tokens={max(1, n // 8)}",
            f"memory.key_dim={max(2, round(n / 12))}", "memory.max_caches=3"]),
        "rmt": (f"rmt-tokens{max(1, n // 4)}", ["memory.kind=rmt", "memory.layers=[0]", f"memory.tokens={max(1, n // 4)}"]),
    }
    return table[kind]


def curriculum(kind: str, steps: int, segments: int) -> list[str]:
    """train.curriculum for the recurrent kinds (RMT/ARMT train on a few segments first): 2 segments,
    then half the window from a quarter of the steps, the whole window from half of them."""
    if kind not in CURRICULUM_KINDS or segments < 4 or steps < 8:
        return []
    stages = [[0, 2], [steps // 4, max(2, segments // 2)], [steps // 2, segments]]
    return [f"train.curriculum={json.dumps(stages).replace(' ', '')}"]


def matched_row(kind: str, z: dict) -> dict:
    """A kind's mqar row at the matched footprint (Elastic Memory's also read with every schedule)."""
    name, over = memory(kind, z)
    return {"name": name, "kind": kind, "data": "mqar", "over": over, "group": "matched",
            "compare": list(SCHEDULES) if kind == "elastic" else None}


def wants(only: list[str] | None, *part: str) -> bool:
    """Whether `--only` (None: every part) asks for any of these parts."""
    return only is None or any(p in only for p in part)


def variants(z: dict, kinds: list[str], only: list[str] | None) -> list[dict]:
    """Every row: name, dataset, overrides, group, and what to evaluate. Group `matched` rows train
    with every seed and learning rate of the size; the others once."""
    out = []
    if wants(only, "mqar"):
        out += [matched_row(kind, z) for kind in kinds]
        if "none" in kinds:  # the control: one segment holds the whole document (plain full attention)
            control = ["memory.kind=none", f"model.segment_len={z['length']}", "train.segments=1", "train.bptt_segments=1"]
            out.append({"name": "none-one-segment", "kind": "none", "data": "mqar", "group": "control", "over": control})
            # the within-segment control: every fact in its query's segment (mqar-near, --distance 0:0)
            out.append({"name": "none-distance0", "kind": "none", "data": "mqar-near", "group": "control",
                        "over": ["memory.kind=none"]})
        if "xl" in kinds:  # ablation, not the paper: does the detached write keep xl from learning?
            name, over = memory("xl", z)
            out.append({"name": name + "-grad", "kind": "xl", "data": "mqar", "group": "ablation",
                        "over": [*over, "memory.grad=true"]})
    if wants(only, "mqar", "probe"):
        out += probe_variants(z, kinds)
    if wants(only, "mqar") and z["extras"]:
        out += extra_variants(z, kinds)
    if wants(only, "babilong"):
        out += babilong_variants(z, kinds)
    if wants(only, "babilong-ablation"):
        out += ablation_variants(z, kinds)
    if wants(only, "lm"):
        for kind in [k for k in ("none", "elastic") if k in kinds]:
            name, over = memory(kind, z)
            out.append({"name": name, "kind": kind, "data": "code", "over": over, "group": "lm",
                        "compare": ["uniform", "exponential"] if kind == "elastic" else None})
    return out


def babilong_length(b: dict, qa: int) -> int:
    """The training document length of bAbI task `qa` (its length multiples are of this)."""
    return int(b.get("lengths", {}).get(str(qa), b["length"]))


def babilong_variants(z: dict, kinds: list[str]) -> list[dict]:
    """Every kind on each bAbI task in books (group `babilong`): matched footprint at the babilong window,
    the learning rate chosen per kind as for mqar, every seed, evaluated at every length multiple."""
    b = z["babilong"]
    out = []
    for qa in b["qa"]:
        n = babilong_length(b, qa)
        zb = {**z, "length": n, "seg": b["seg"]}  # the footprint and curriculum of the task's window
        shape = {"seg": b["seg"], "segments": n // b["seg"], "tokenizer": BOOKS_TOKENIZER, "prev_embed": False,
                 "steps": b.get("steps", z["steps"])}
        for kind in b.get("kinds") or kinds:
            name, over = memory(kind, zb)
            out.append({"name": name, "kind": kind, "data": f"babilong-qa{qa}", "over": over, "group": "babilong",
                        "shape": shape, "length": n})
    return out


def ablation_variants(z: dict, kinds: list[str]) -> list[dict]:
    """The babilong ablations (group `babilong-ablation`), each a babilong row ("base", whose chosen rate
    it takes) trained otherwise: "window", on documents BABILONG_WINDOW x as long, memory carried through
    all their segments; "loss", with the loss on every token rather than the answer alone."""
    w, out = BABILONG_WINDOW, []
    for row in babilong_variants(z, [k for k in kinds if k in ABLATION_KINDS]):
        shape = {**row["shape"], "segments": w * row["shape"]["segments"]}
        out.append({**row, "name": f"{row['name']}-window{w * row['length']}", "group": "babilong-ablation",
                    "ablation": "window", "base": row["name"], "train_data": f"{row['data']}-w{w}", "shape": shape})
        out.append({**row, "name": f"{row['name']}-loss-all", "group": "babilong-ablation", "ablation": "loss",
                    "base": row["name"], "over": [*row["over"], "train.loss_on=all"]})
    return out


def probe_variants(z: dict, kinds: list[str]) -> list[dict]:
    """What might carry facts past the training window (group `probe`, every seed at the matched
    elastic row's learning rate, evaluated at every length): Elastic Memory at twice the order (twice
    the footprint: a finer polynomial over the same history). The test-time probes of the matched
    weights (more samples, other schedules) are `read_probe`'s."""
    if "elastic" not in kinds:
        return []
    name, over = memory("elastic", z, 2 * z["order"])
    return [{"name": name, "kind": "elastic", "data": "mqar", "over": over, "group": "probe"}]


def extra_variants(z: dict, kinds: list[str]) -> list[dict]:
    """The footprint sweep, each kind at its paper's setting, longer runs and the prev-embed ablation
    (single seed, the size's learning rate)."""
    out, steps2 = [], 2 * z["steps"]
    if "elastic" in kinds:  # the matched elastic run, twice as long: is it still learning at the end?
        name, over = memory("elastic", z)
        out.append({"name": f"{name}-steps{steps2}", "kind": "elastic", "data": "mqar", "group": "long",
                    "over": [*over, f"train.steps={steps2}"], "compare": list(SCHEDULES)})
    if "none" in kinds:  # ablation: without the previous-token embedding, even full attention sits on a plateau
        out.append({"name": "none-one-segment-no-prev-embed", "kind": "none", "data": "mqar", "group": "ablation",
                    "over": ["memory.kind=none", f"model.segment_len={z['length']}", "train.segments=1",
                             "train.bptt_segments=1", "model.prev_embed=false"]})
    for kind, sizes in z["sweep"].items():
        if kind in kinds:
            for n in sizes:
                name, over = memory(kind, z, n)
                out.append({"name": name, "kind": kind, "data": "mqar", "over": over, "group": "sweep"})
    if "memorizing" in kinds:  # Wu et al. 2022: a store that holds the whole document, an XL cache of one segment
        paper = ["memory.kind=memorizing", f"memory.layers=[{z['layers'] // 2}]", f"memory.store={z['length']}",
                 "memory.topk=32", f"memory.cache={z['seg']}"]
        out.append({"name": f"memorizing-store{z['length']}-cache{z['seg']}-paper", "kind": "memorizing",
                    "data": "mqar", "group": "paper", "over": paper})
    if "infinity" in kinds:  # Martins et al. 2022: detached memory, sticky, an STM of one segment, the KL on
        name, over = memory("infinity", z)
        out.append({"name": f"{name}-stm{z['seg']}-paper", "kind": "infinity", "data": "mqar", "group": "paper",
                    "over": [*over, "memory.detach=true", "memory.sticky=true", f"memory.stm={z['seg']}",
                             f"train.aux_weight={PAPER_KL * z['heads'] * z['seg']:g}"]})
    if "xl" in kinds:  # Dai et al. 2019 cache as many tokens as the segment (and more at eval): cover the document
        name, over = memory("xl", z)
        out.append({"name": f"{name}-steps{steps2}", "kind": "xl", "data": "mqar", "group": "long",
                    "over": [*over, f"train.steps={steps2}"]})
        out.append({"name": f"xl-cache{z['length']}-paper", "kind": "xl", "data": "mqar", "group": "paper",
                    "over": ["memory.kind=xl", f"memory.cache={z['length']}"]})
    return out


def dedupe(vs: list[dict]) -> list[dict]:
    seen, out = set(), []
    for v in vs:
        key = (v["data"], v["name"])
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def tag(v: dict, lr: float | None = None, seed: int | None = None) -> str:
    """The file name of a run: <data>-<variant>, plus -lr<lr>-seed<seed> for the runs of a matched row."""
    base = f"{v['data']}-{v['name']}"
    return base if lr is None else f"{base}-lr{lr:g}-seed{seed}"


def trials(z: dict) -> list[tuple[float, int]]:
    """(lr, seed) of a matched row's first phase: seed 0 (the first seed) at every learning rate."""
    return [(lr, z["seeds"][0]) for lr in z["lrs"]]


def relative(text: str, root: Path = ROOT) -> str:
    """Paths under the repository written relative to it (commands are recorded and shown that way)."""
    return text.replace(f"{root}{os.sep}", "")


class Runner:
    """Runs CLI commands with logs, recording each command (repository-relative) in OUT/commands.txt."""

    def __init__(self, out: Path, python: str, threads: int):
        self.out, self.python, self.threads = out, python, threads
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "eval").mkdir(parents=True, exist_ok=True)

    def __call__(self, log: str, *args: str) -> int:
        shown = relative(shlex.join(["python", "-m", "elastic_cli", *args]))
        with open(self.out / "commands.txt", "a", encoding="utf-8") as f:
            f.write(shown + "\n")
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads))
        with open(self.out / "logs" / f"{log}.log", "w", encoding="utf-8") as f:
            done = subprocess.run([self.python, "-m", "elastic_cli", *args], cwd=ROOT, env=env, stdout=f,
                                  stderr=subprocess.STDOUT)
        if done.returncode:
            print(f"  failed ({done.returncode}): {shown} (see {self.out}/logs/{log}.log)", flush=True)
        return done.returncode


def datasets(z: dict) -> dict[str, list[str]]:
    """name -> `elastic prepare` arguments: the training data, the within-segment control's, the d = 1
    sanity task's and, per eval length (segments), new documents from another generator seed."""
    segs = z["length"] // z["seg"]

    def mqar(length: int, distance: str, count: int, seed: int, test_frac: str = "0.05") -> list[str]:
        return ["--task", "mqar", "--length", str(length), "--count", str(count), "--pairs", str(z["pairs"]),
                "--keys", str(z["keys"]), "--values", str(z["values"]), "--segment-len", str(z["seg"]),
                "--distance", distance, "--seed", str(seed), "--val-frac", "0.05", "--test-frac", test_frac]

    out = {"mqar": mqar(z["length"], f"0:{segs - 1}", z["count"], 0),  # facts 0..S-1 segments back
           "mqar-near": mqar(z["length"], "0:0", z["count"], 0),  # every fact in its query's segment
           "mqar-d1": mqar(z["length"], "1:1", z["count"], 0)}  # the sanity task: every fact one segment back
    for n, docs in zip(z["lengths"], z["length_docs"]):  # half the documents in the test split
        out[f"mqar-len{n}"] = mqar(n * z["seg"], f"0:{n - 1}", 2 * docs + 8, 1, "0.5")
    return out


def babilong_datasets(z: dict) -> dict[str, list[str]]:
    """name -> `elastic prepare` arguments: per bAbI task, the training documents and, per length multiple,
    new documents (another generator seed, half in the test split)."""
    b, out = z["babilong"], {}
    for qa in b["qa"]:
        def task(length: int, count: int, seed: int, test_frac: str = "0.05") -> list[str]:
            return ["--task", "babilong", "--qa", str(qa), "--haystack", BOOKS, "--length", str(length), "--count",
                    str(count), "--seed", str(seed), "--val-frac", "0.05", "--test-frac", test_frac]
        n = babilong_length(b, qa)
        out[f"babilong-qa{qa}"] = task(n, b["count"], 0)
        out[f"babilong-qa{qa}-w{BABILONG_WINDOW}"] = task(BABILONG_WINDOW * n, b["count"], 0)
        for k, docs in zip(b["multiples"], b["docs"]):
            out[f"babilong-qa{qa}-x{k}"] = task(k * n, 2 * docs + 8, 1, "0.5")
    return out


def prepare(run: Runner, z: dict, data: Path, only: list[str] | None) -> None:
    """Prepare each dataset once (a folder that holds it already is kept, and its command not repeated)."""
    if wants(only, "mqar", "probe"):
        for name, args in datasets(z).items():
            if not (data / name / "meta.json").is_file():
                run(f"prepare-{name}", "prepare", *args, "--tokenizer", CODE_TOKENIZER, "--out", str(data / name))
    if wants(only, "babilong", "babilong-ablation"):
        for name, args in babilong_datasets(z).items():
            if name.endswith(f"-w{BABILONG_WINDOW}") and not wants(only, "babilong-ablation"):
                continue
            if not (data / name / "meta.json").is_file():
                run(f"prepare-{name}", "prepare", *args, "--tokenizer", BOOKS_TOKENIZER, "--out", str(data / name))
    if wants(only, "lm") and not (data / "code" / "meta.json").is_file():
        run("prepare-code", "prepare", "--corpus", "python-stdlib", "--tokenizer", CODE_TOKENIZER,
            "--out", str(data / "code"))


def train_args(z: dict, v: dict, data: Path, run_dir: Path, lr: float, seed: int, steps: int | None = None,
               dataset: str | None = None) -> list[str]:
    """The `elastic train` arguments of one run of variant v."""
    task = v["data"].startswith(("mqar", "babilong"))
    own = v.get("shape", {})  # babilong rows: their segment, window, tokenizer
    segs = own.get("segments", z["length"] // z["seg"] if task else z["lm_segments"])
    steps = steps or own.get("steps") or (z["steps"] if task else z["lm_steps"])
    batch = z["batch"] if task else z["lm_batch"]
    shape = [f"model.d_model={z['d']}", f"model.n_layer={z['layers']}", f"model.n_head={z['heads']}",
             f"model.mlp_hidden={z['mlp']}", f"model.segment_len={own.get('seg', z['seg'] if task else z['lm_seg'])}",
             # mqar: each token also embeds its predecessor, so recall is one attention hop (model/decoder.py)
             *(["model.prev_embed=true"] if task and own.get("prev_embed", True) else [])]
    schedule = [f"train.steps={steps}", f"train.warmup={max(1, steps // 20)}", f"train.lr={lr:g}",
                f"train.min_lr={lr / 10:g}", f"train.global_batch={batch}", f"train.micro_batch={batch}",
                f"train.segments={segs}", f"train.bptt_segments={segs}", f"train.eval_every={max(1, steps // 10)}",
                "train.eval_batches=2", "train.save_every=0", "train.log_every=10", f"train.seed={seed}",
                f"train.loss_on={'answers' if task else 'all'}", *(curriculum(v["kind"], steps, segs) if task else [])]
    where = [f"data.path={data / (dataset or v['data'])}", f"data.tokenizer={own.get('tokenizer', CODE_TOKENIZER)}",
             f"run.dir={run_dir}", f"run.device={z['device']}"]
    # the variant's own overrides come last: the control changes the segment length and window
    return ["train", "recipes/tiny.yaml", *shape, *schedule, *where, *v["over"], "--overwrite"]


def train(run: Runner, z: dict, v: dict, data: Path, name: str, lr: float, seed: int, steps: int | None = None,
          dataset: str | None = None) -> int:
    """Train one run into OUT/runs/<name> (skipped when its checkpoint is complete); once more at a
    third of the learning rate after a divergence (OUT/eval/<name>.lr records it)."""
    run_dir = run.out / "runs" / name
    if (run.out / "eval" / f"{name}.trained").is_file():
        return 0
    print(f"  {name}: training", flush=True)
    args = train_args(z, v, data, run_dir, lr, seed, steps, dataset)
    rc = run(f"train-{name}", *args)
    if rc == EXIT_DIVERGED:
        print(f"  {name}: diverged; training again at train.lr={lr / 3:g}", flush=True)
        rc = run(f"train-{name}-lr", *args, f"train.lr={lr / 3:g}", f"train.min_lr={lr / 30:g}")
        (run.out / "eval" / f"{name}.lr").write_text(f"{lr / 3}\n")
    if rc == 0:
        (run.out / "eval" / f"{name}.trained").write_text("")
    return rc


def evaluate(run: Runner, name: str, report: Path, split: str, docs: int, flags: list[str] = ()) -> int:
    """`elastic eval` of the run OUT/runs/<name> into `report` (skipped when it exists); `flags`: more
    of its options (`--data`, `--samples`, ...; see `eval_flags`). Without `--gain` in them: `--no-gain`."""
    if report.is_file():
        return 0
    gain = ["--no-gain"] if "--gain" not in flags else []
    return run(f"eval-{report.stem}", "eval", "--ckpt", str(run.out / "runs" / name), "--split", split, "--max-docs",
               str(docs), *[f for f in flags if f != "--gain"], *gain, "--json", str(report))


def eval_flags(data: Path | None = None, compare: list[str] | None = None) -> list[str]:
    """`elastic eval` options: other prepared data, several read schedules side by side."""
    return (["--data", str(data)] if data else []) + (["--compare-schedules", ",".join(compare)] if compare else [])


def single(run: Runner, z: dict, v: dict, data: Path) -> None:
    """A row trained once (seed 0, the size's learning rate), then evaluated on the test split."""
    name, task = tag(v), v["data"].startswith("mqar")
    if (run.out / "eval" / f"{name}.json").is_file() or train(run, z, v, data, name, z["lr"], z["seeds"][0]):
        return
    flags = eval_flags(compare=v.get("compare")) + ([] if task else ["--gain"])
    evaluate(run, name, run.out / "eval" / f"{name}.json", "test", z["eval_docs"] if task else z["lm_docs"], flags)


def trial(run: Runner, z: dict, v: dict, data: Path, lr: float, seed: int) -> None:
    """A matched row's first phase: train at `lr`, evaluate on the validation split (the choice)."""
    name = tag(v, lr, seed)
    if train(run, z, v, data, name, lr, seed) == 0:
        evaluate(run, name, run.out / "eval" / f"{name}-val.json", "val", z["val_docs"])


def choose_lr(out: Path, z: dict, v: dict) -> float | None:
    """The learning rate of the best validation answer accuracy among a matched row's trials (ties:
    the lower answer loss); None when every trial failed. Writes OUT/eval/<data>-<variant>.lrs.json."""
    tried = []
    for lr, seed in trials(z):
        path = out / "eval" / f"{tag(v, lr, seed)}-val.json"
        r = json.loads(path.read_text())["results"][0] if path.is_file() else None
        tried.append({"lr": lr, "val_accuracy": r and r["answer_token_accuracy"], "val_loss": r and r["answer_loss"]})
    ok = [t for t in tried if t["val_accuracy"] is not None]
    chosen = max(ok, key=lambda t: (t["val_accuracy"], -t["val_loss"]))["lr"] if ok else None
    (out / "eval" / f"{tag(v)}.lrs.json").write_text(json.dumps({"tried": tried, "chosen": chosen}, indent=1) + "\n")
    return chosen


def rate_row(v: dict) -> dict:
    """The row whose learning-rate choice row v trains at: its base row for a babilong ablation, else v."""
    return {**v, "name": v.get("base", v["name"])}


def chosen_lr(out: Path, v: dict) -> float | None:
    """The learning rate `choose_lr` chose for a matched row (None before its trials ran)."""
    path = out / "eval" / f"{tag(v)}.lrs.json"
    return json.loads(path.read_text())["chosen"] if path.is_file() else None


def seed_run(run: Runner, z: dict, v: dict, data: Path, lr: float, seed: int) -> None:
    """A matched row's second phase for one seed at the chosen rate: train (the first seed's run exists
    from its trial), evaluate on the test split and on the documents of every eval length."""
    name = tag(v, lr, seed)
    if train(run, z, v, data, name, lr, seed):
        return
    evaluate(run, name, run.out / "eval" / f"{name}.json", "test", z["eval_docs"], eval_flags(compare=v.get("compare")))
    compare = ["uniform", "exponential"] if v["kind"] == "elastic" else None  # the read schedule, at every length
    for n, docs in zip(z["lengths"], z["length_docs"]):
        evaluate(run, name, run.out / "eval" / f"length-{v['name']}-seed{seed}-seg{n}.json", "test", docs,
                 eval_flags(data / f"mqar-len{n}", compare))


def babilong_run(run: Runner, z: dict, v: dict, data: Path, lr: float, seed: int) -> None:
    """A babilong row for one seed at the chosen rate: train (the first seed's run exists from its trial),
    then evaluate on the new documents of every length multiple (test split)."""
    name = tag(v, lr, seed)
    if train(run, z, v, data, name, lr, seed, dataset=v.get("train_data")):
        return
    for k, docs in zip(z["babilong"]["multiples"], z["babilong"]["docs"]):
        evaluate(run, name, run.out / "eval" / f"{v['data']}-{v['name']}-seed{seed}-x{k}.json", "test", docs,
                 eval_flags(data / f"{v['data']}-x{k}"))


def babilong_reads(run: Runner, z: dict, v: dict, data: Path, lr: float, seed: int) -> None:
    """Test-time reads of a babilong Elastic Memory row's weights on the new documents of every length
    multiple: PROBE_SAMPLES x as many samples, uniform and exponential (OUT/eval/...-x<K>-reads.json)."""
    name = tag(v, lr, seed)
    if not (run.out / "eval" / f"{name}.trained").is_file():
        return
    samples = str(PROBE_SAMPLES * z["order"])
    for k, docs in zip(z["babilong"]["multiples"], z["babilong"]["docs"]):
        evaluate(run, name, run.out / "eval" / f"{v['data']}-{v['name']}-seed{seed}-x{k}-reads.json", "test", docs,
                 [*eval_flags(data / f"{v['data']}-x{k}"), "--samples", samples, "--compare-schedules", "uniform,exponential"])


def read_probe(run: Runner, z: dict, v: dict, data: Path, lr: float, seed: int) -> None:
    """Test-time reads of a matched Elastic Memory run (same weights) on the documents of every eval
    length: PROBE_SAMPLES x as many samples (uniform and exponential), and the gauss and power schedules."""
    name = tag(v, lr, seed)
    if not (run.out / "eval" / f"{name}.trained").is_file():
        return
    for n, docs in zip(z["lengths"], z["length_docs"]):
        base = run.out / "eval" / f"length-{v['name']}-seed{seed}-seg{n}"
        where = eval_flags(data / f"mqar-len{n}")
        evaluate(run, name, base.with_name(f"{base.name}-samples{PROBE_SAMPLES * z['order']}.json"), "test", docs,
                 [*where, "--samples", str(PROBE_SAMPLES * z["order"]), "--compare-schedules", "uniform,exponential"])
        evaluate(run, name, base.with_name(f"{base.name}-schedules.json"), "test", docs,
                 [*where, "--compare-schedules", "gauss,power"])


def sanity(run: Runner, z: dict, v: dict, data: Path, lr: float) -> None:
    """The d = 1-only task for a matched memory kind: train (the first seed, the chosen rate, the size's
    sanity steps), evaluate on its test split."""
    name = f"mqar-d1-{v['name']}"
    steps = z["sanity_steps"]
    if train(run, z, v, data, name, lr, z["seeds"][0], steps=steps, dataset="mqar-d1") == 0:
        evaluate(run, name, run.out / "eval" / f"sanity-{v['name']}.json", "test", z["val_docs"])


def runs_of(z: dict, v: dict) -> tuple[list[tuple[str, str, int]], int]:
    """(kind, run, steps) of row v's training runs, and how many `elastic eval` processes it starts."""
    steps = v.get("shape", {}).get("steps") or (z["steps"] if v["data"].startswith(("mqar", "babilong")) else z["lm_steps"])
    steps = next((int(o.split("=")[1]) for o in v["over"] if o.startswith("train.steps=")), steps)
    if v["group"] == "probe":  # every seed; test, every length, and the matched weights' two read probes
        return [(v["kind"], f"{tag(v)}-seed{s}-at-elastic-lr", steps) for s in z["seeds"]], \
            len(z["seeds"]) * (1 + 3 * len(z["lengths"]))
    if v["group"] == "babilong-ablation":  # every seed at the base row's rate; every length multiple (+ reads once)
        reads = v["kind"] == "elastic" and v["ablation"] == "window"
        return [(v["kind"], tag(v, None, s) + "-at-base-lr", steps) for s in z["seeds"]], \
            len(z["seeds"]) * len(z["babilong"]["multiples"]) * (2 if reads else 1)
    seeds = [(v["kind"], tag(v, lr, s), steps) for lr, s in trials(z)]  # the trials, then the other seeds
    seeds += [(v["kind"], tag(v, None, s) + "-at-chosen-lr", steps) for s in z["seeds"][1:]]
    if v["group"] == "babilong":  # as a matched row, without the sanity task; every length multiple
        return seeds, len(z["lrs"]) + len(z["seeds"]) * len(z["babilong"]["multiples"])
    if v["group"] != "matched":
        return [(v["kind"], tag(v), steps)], 1
    evals = len(z["lrs"]) + len(z["seeds"]) * (1 + len(z["lengths"]))  # validation, test, every length
    if v["kind"] == "none":
        return seeds, evals
    return seeds + [(v["kind"], f"mqar-d1-{v['name']}", z["sanity_steps"])], evals + 1


def plan(z: dict, todo: list[dict]) -> tuple[list[tuple[str, str, int]], float]:
    """(kind, run, steps) of every training run and the estimated core-minutes: the steps at
    CPU_SECONDS_PER_STEP (scaled by the tokens of a step relative to the cpu shape), 10% for the
    periodic validation, and every process (training or `elastic eval`) 6 s to start and evaluate."""
    runs, evals, tokens = [], 0, []  # tokens: of a step of each run, relative to the size's mqar step
    for v in todo:
        mine, n = runs_of(z, v)
        runs, evals = runs + mine, evals + n
        own = v.get("shape")
        tokens += [own["segments"] * own["seg"] / z["length"] if own else 1.0] * len(mine)
    scale = (z["d"] / 128) ** 2 * z["batch"] * z["length"] / (32 * 128)  # relative to the cpu shape
    segs = z["length"] // z["seg"]

    def share(kind: str, steps: int) -> float:
        """Mean segments per window over a curriculum, relative to the full window."""
        stages = [json.loads(c.split("=", 1)[1]) for c in curriculum(kind, steps, segs)]
        if not stages:
            return 1.0
        bounds = [st for st, _ in stages[0]] + [steps]
        return sum((b - a) * n for (a, n), b in zip(stages[0], bounds[1:])) / (steps * segs)

    seconds = sum(CPU_SECONDS_PER_STEP.get(k, CPU_SECONDS_PER_STEP["elastic"]) * scale * s * share(k, s) * t
                  for (k, _, s), t in zip(runs, tokens))
    return runs, (1.1 * seconds + 6 * (len(runs) + evals)) / 60


def parts(only: str | list | None) -> list:
    """`--only` as recorded in settings.json: a part, None (all of them) or a list of parts."""
    return [p for o in only for p in parts(o)] if isinstance(only, list) else [only]


def comparable(settings: dict) -> dict:
    """Settings as write_settings compares them: without babilong's tasks and kinds, which choose rows
    (as `--only` does) rather than how a row runs."""
    b = {k: x for k, x in settings["babilong"].items() if k not in ("qa", "kinds")}
    return json.loads(json.dumps({**settings, "babilong": b}))


def write_settings(path: Path, new: dict) -> None:
    """OUT/settings.json, what results.py reads: the rows of this invocation joined to those of earlier ones
    into the same folder at the same settings (so `--only probe` after `--only mqar` keeps both on the page);
    at other settings, this invocation's alone."""
    old = json.loads(path.read_text()) if path.is_file() else None
    if old and old["size"] == new["size"] and comparable(old["settings"]) == comparable(new["settings"]):
        ob, nb = old["settings"]["babilong"], new["settings"]["babilong"]
        joined = {**nb, "qa": sorted(set(ob["qa"]) | set(nb["qa"]))}  # babilong's tasks and kinds only choose rows
        if "kinds" in ob and "kinds" in nb:
            joined["kinds"] = list(dict.fromkeys(ob["kinds"] + nb["kinds"]))
        else:
            joined.pop("kinds", None)  # one invocation ran every kind
        new = {**new, "settings": {**new["settings"], "babilong": joined},
               "kinds": list(dict.fromkeys(old["kinds"] + new["kinds"])),
               "only": list(dict.fromkeys(parts(old["only"]) + parts(new["only"]))),  # every part run into this folder
               "variants": dedupe(old["variants"] + new["variants"])}
    path.write_text(json.dumps(new, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu-seeds")
    p.add_argument("--smoke", action="store_const", const="smoke", dest="size", help="= --size smoke")
    p.add_argument("--gpu", action="store_const", const="gpu", dest="size", help="= --size gpu")
    p.add_argument("--kinds", default="none,elastic,xl,memorizing,melodi,infinity,armt,caching,rmt")
    p.add_argument("--only", type=lambda x: x.split(","), help="run only these parts, comma-separated, of: mqar, "
                   "probe (the length probes of Elastic Memory; needs its matched runs), babilong, lm")
    p.add_argument("--steps", type=int, help="training steps of every mqar row (default: the size's)")
    p.add_argument("--seeds", help="seeds of the matched rows, e.g. 0,1,2 (default: the size's)")
    p.add_argument("--lrs", help="learning rates tried per matched row, e.g. 1e-3,3e-3 (default: the size's)")
    p.add_argument("--babilong-qa", help="babilong: the bAbI tasks, e.g. 1 or 1,2 (default: the size's)")
    p.add_argument("--babilong-kinds", help="babilong: its memory kinds (default: --kinds)")
    p.add_argument("--jobs", type=int, help="runs at a time (default: the size's)")
    p.add_argument("--plan", action="store_true", help="print the runs and the estimated core-minutes; run nothing")
    p.add_argument("--out", type=Path, help="output folder (default runs/reproduce-<size>)")
    p.add_argument("--results", type=Path, help="results page (default docs/results.md; smoke: OUT/results.md)")
    a = p.parse_args(argv)
    unknown = sorted(set(a.only or ()) - set(PARTS))
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    z = dict(SIZES[a.size])
    if a.steps:
        z["steps"] = a.steps
    if a.seeds:
        z["seeds"] = tuple(int(s) for s in a.seeds.split(","))
    if a.lrs:
        z["lrs"] = tuple(float(x) for x in a.lrs.split(","))
    if a.babilong_qa:
        z["babilong"] = {**z["babilong"], "qa": tuple(int(q) for q in a.babilong_qa.split(","))}
    if a.babilong_kinds:
        z["babilong"] = {**z["babilong"], "kinds": [k for k in a.babilong_kinds.split(",") if k]}
    out = a.out or Path("runs") / f"reproduce-{a.size}"
    results = a.results or (out / "results.md" if a.size == "smoke" else Path("docs/results.md"))
    kinds = [k for k in a.kinds.split(",") if k]
    jobs = a.jobs or z["jobs"]
    todo = dedupe(variants(z, kinds, a.only))
    if a.plan:
        runs, minutes = plan(z, todo)
        for kind, name, steps in runs:
            print(f"  {name}: {steps} steps")
        print(f"reproduce ({a.size}): {len(runs)} training runs, {sum(s for *_, s in runs)} steps, about "
              f"{minutes:.0f} core-minutes ({minutes / jobs:.0f} minutes with --jobs {jobs})")
        return 0
    os.chdir(ROOT)
    run = Runner(out, os.environ.get("PYTHON", sys.executable), max(1, (os.cpu_count() or 2) // jobs))
    write_settings(out / "settings.json", {"size": a.size, "settings": z, "kinds": kinds, "only": a.only, "variants": todo})
    t0 = time.time()
    matched = [v for v in todo if v["group"] in ("matched", "babilong")]  # both choose a learning rate per row
    print(f"reproduce ({a.size}): {len(todo)} rows ({len(matched)} matched: seeds {list(z['seeds'])}, learning rates "
          f"{list(z['lrs'])}), {jobs} at a time -> {out}", flush=True)
    data = out / "data"
    prepare(run, z, data, a.only)
    first = [lambda v=v: single(run, z, v, data) for v in todo if v["group"] in SINGLE_GROUPS]
    first += [lambda v=v, lr=lr, s=s: trial(run, z, v, data, lr, s) for v in matched for lr, s in trials(z)]
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda f: f(), first))
    chosen = {tag(v): choose_lr(out, z, v) for v in matched}
    second = []  # (the seed's place in z["seeds"], job): run seed-major, so a stopped run has whole seeds
    rank = {s: i for i, s in enumerate(z["seeds"])}
    for v in matched:
        lr = chosen[tag(v)]
        if lr is None:
            continue
        runner = babilong_run if v["group"] == "babilong" else seed_run
        second += [(rank[s], lambda v=v, lr=lr, s=s, f=runner: f(run, z, v, data, lr, s)) for s in z["seeds"]]
        if v["kind"] != "none" and v["group"] == "matched":
            second.append((0, lambda v=v, lr=lr: sanity(run, z, v, data, lr)))
    for v in (v for v in todo if v["group"] == "babilong-ablation"):  # at the rate chosen for its babilong row
        lr = chosen_lr(out, rate_row(v))
        if lr is None:
            print(f"  {tag(v)}: skipped (no rate chosen for {v['data']}-{v['base']}: run --only babilong first)", flush=True)
            continue
        second += [(rank[s], lambda v=v, lr=lr, s=s: babilong_run(run, z, v, data, lr, s)) for s in z["seeds"]]
        if v["kind"] == "elastic" and v["ablation"] == "window":  # the base row's own weights, read with more samples
            base = {**v, "name": v["base"], "group": "babilong"}
            second += [(len(rank) + rank[s], lambda v=base, lr=lr, s=s: babilong_reads(run, z, v, data, lr, s))
                       for s in z["seeds"]]  # reads of trained weights: after every training
    probes = [v for v in todo if v["group"] == "probe"]
    if probes:  # at the matched elastic row's learning rate
        elastic = matched_row("elastic", z)
        lr = chosen.get(tag(elastic)) or chosen_lr(out, elastic) or z["lr"]
        second += [(rank[s], lambda v=v, s=s: seed_run(run, z, v, data, lr, s)) for v in probes for s in z["seeds"]]
        second += [(len(rank) + rank[s], lambda s=s: read_probe(run, z, elastic, data, lr, s)) for s in z["seeds"]]
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda f: f(), [job for _, job in sorted(second, key=lambda t: t[0])]))
    print(f"reproduce ({a.size}): runs done in {time.time() - t0:.0f} s; writing {results}", flush=True)
    return subprocess.run([run.python, str(ROOT / "scripts" / "results.py"), str(out), "--out", str(results)],
                          cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
