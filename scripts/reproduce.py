"""Run the results experiments through the real CLI, then write docs/results.md (scripts/results.py).

  python scripts/reproduce.py                    # CPU size (about 90 minutes on 2 cores)
  python scripts/reproduce.py --size smoke       # minutes: tiny sizes, the whole pipeline
  python scripts/reproduce.py --size gpu         # one GPU: a larger model and longer documents
  python scripts/reproduce.py --kinds none,elastic --only mqar

What runs (every command is appended to OUT/commands.txt, relative to the repository):
- mqar (multi-query associative recall, `elastic prepare --task mqar`) with facts 0..S-1 segments before
  their queries: every memory kind at a matched footprint, a full-attention control (one segment spans
  the whole document), a footprint sweep (elastic orders, xl caches, memorizing stores, each kind at
  its paper's own setting), Elastic Memory's trained weights read with every sampling schedule;
- language modelling on the Python standard library: loss by segment, long-context gain, xz floor.
Variants run `--jobs` at a time (each with its share of the cores); a variant that fails is reported
as failed and the rest go on. A variant whose eval file exists is not run again (delete OUT to redo).
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

# task: mqar documents; model: the shared shape; train: steps and batch; lm: the language-modelling runs
SIZES = {
    "smoke": dict(length=128, seg=16, count=400, pairs=4, keys=16, values=16, d=32, layers=2, heads=2, mlp=64,
                  order=8, steps=30, batch=8, lr=3e-3, eval_docs=40, lm_steps=10, lm_segments=4, lm_batch=4, lm_seg=16,
                  lm_docs=4, device="cpu", jobs=2, sweep={"elastic": (4, 16), "xl": (4,), "memorizing": (4,)}),
    "cpu": dict(length=128, seg=16, count=8000, pairs=8, keys=16, values=16, d=128, layers=2, heads=4, mlp=384,
                order=32, steps=700, batch=32, lr=3e-3, eval_docs=300, lm_steps=300, lm_segments=8, lm_batch=8,
                lm_seg=64, lm_docs=12, device="cpu", jobs=2, sweep={"elastic": (8, 64)}),
    "gpu": dict(length=2048, seg=256, count=40000, pairs=32, keys=128, values=64, d=512, layers=8, heads=8,
                mlp=1536, order=128, steps=4000, batch=64, lr=1e-3, eval_docs=1000, lm_steps=4000, lm_segments=16, lm_seg=512,
                lm_batch=16, lm_docs=200, device="cuda", jobs=1, sweep={"elastic": (32, 64, 256), "xl": (32, 512), "memorizing": (32, 512)}),
}


def memory(kind: str, z: dict, size: int | None = None) -> tuple[str, list[str]]:
    """(variant name, overrides) for `kind` holding about the floats of Elastic Memory of order `size`
    (default: the size's order) on every layer: 2 * size * d_model floats per layer."""
    n, layers = size or z["order"], z["layers"]
    mid = layers // 2
    table = {
        "none": ("none", ["memory.kind=none"]),
        "elastic": (f"elastic-order{n}-uniform", ["memory.kind=elastic", f"memory.order={n}", f"memory.samples={n}",
                                                  "memory.schedule=uniform"]),
        "xl": (f"xl-cache{n}", ["memory.kind=xl", f"memory.cache={n}"]),
        "memorizing": (f"memorizing-store{layers * n}", ["memory.kind=memorizing", f"memory.layers=[{mid}]",
                                                         f"memory.store={layers * n}", f"memory.topk={max(1, n // 2)}"]),
        "melodi": (f"melodi-{n}", ["memory.kind=melodi", f"memory.short_tokens={n // 2}",
                                   f"memory.summary_tokens={max(1, n // 4)}", f"memory.long_layer={mid}",
                                   f"memory.long_tokens={max(1, n // 4)}", f"memory.long_store={layers * n // 4}"]),
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


def variants(z: dict, kinds: list[str], only: str | None) -> list[dict]:
    """Every run: name, dataset, overrides, and what to evaluate."""
    out = []
    if only in (None, "mqar"):
        for kind in kinds:
            name, over = memory(kind, z)
            out.append({"name": name, "kind": kind, "data": "mqar", "over": over, "group": "matched",
                        "compare": list(SCHEDULES) if kind == "elastic" else None})
        if "none" in kinds:  # the control: one segment holds the whole document (plain full attention)
            control = ["memory.kind=none", f"model.segment_len={z['length']}", "train.segments=1", "train.bptt_segments=1"]
            out.append({"name": "none-one-segment", "kind": "none", "data": "mqar", "group": "control", "over": control})
            # the within-segment control: every fact in its query's segment (mqar-near, --distance 0:0)
            out.append({"name": "none-distance0", "kind": "none", "data": "mqar-near", "group": "control",
                        "over": ["memory.kind=none"]})
        if "elastic" in kinds:  # the matched elastic run, twice as long: is it still learning at the end?
            name, over = memory("elastic", z)
            out.append({"name": f"{name}-steps{2 * z['steps']}", "kind": "elastic", "data": "mqar", "group": "long",
                        "over": [*over, f"train.steps={2 * z['steps']}"], "compare": list(SCHEDULES)})
        if "none" in kinds:  # ablation: without the previous-token embedding, even full attention sits on a plateau
            out.append({"name": "none-one-segment-no-prev-embed", "kind": "none", "data": "mqar", "group": "ablation",
                        "over": [*control, "model.prev_embed=false"]})
        for kind, sizes in z["sweep"].items():
            if kind in kinds:
                for n in sizes:
                    name, over = memory(kind, z, n)
                    out.append({"name": name, "kind": kind, "data": "mqar", "over": over, "group": "sweep"})
        if "memorizing" in kinds:  # Wu et al. 2022 keep 8k+ entries: a store that holds the whole document
            paper = ["memory.kind=memorizing", f"memory.layers=[{z['layers'] // 2}]", f"memory.store={z['length']}",
                     "memory.topk=32"]
            out.append({"name": f"memorizing-store{z['length']}-paper", "kind": "memorizing", "data": "mqar",
                        "group": "paper", "over": paper})
            # is it the budget? the same store trained twice as long
            out.append({"name": f"memorizing-store{z['length']}-paper-steps{2 * z['steps']}", "kind": "memorizing",
                        "data": "mqar", "group": "long", "over": [*paper, f"train.steps={2 * z['steps']}"]})
        if "infinity" in kinds:  # Martins et al. 2022 detach the long-term memory; ours passes gradients
            name, over = memory("infinity", z)
            out.append({"name": name + "-detached-paper", "kind": "infinity", "data": "mqar", "group": "paper",
                        "over": [*over, "memory.detach=true"]})
        if "xl" in kinds:  # ablation, not the paper: does the detached write keep xl from learning?
            name, over = memory("xl", z)
            out.append({"name": name + "-grad", "kind": "xl", "data": "mqar", "group": "ablation",
                        "over": [*over, "memory.grad=true"]})
            # or the budget? the detached cache trained twice as long
            out.append({"name": f"{name}-steps{2 * z['steps']}", "kind": "xl", "data": "mqar", "group": "long",
                        "over": [*over, f"train.steps={2 * z['steps']}"]})
        if "xl" in kinds:  # Dai et al. 2019 cache as many tokens as the segment (and more at eval): cover the document
            out.append({"name": f"xl-cache{z['length']}-paper", "kind": "xl", "data": "mqar", "group": "paper",
                        "over": ["memory.kind=xl", f"memory.cache={z['length']}"]})
    if only in (None, "lm"):
        for kind in [k for k in ("none", "elastic") if k in kinds]:
            name, over = memory(kind, z)
            out.append({"name": name, "kind": kind, "data": "code", "over": over, "group": "lm",
                        "compare": ["uniform", "exponential"] if kind == "elastic" else None})
    return out


def dedupe(vs: list[dict]) -> list[dict]:
    seen, out = set(), []
    for v in vs:
        key = (v["data"], v["name"])
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


class Runner:
    """Runs CLI commands with logs, recording each command (repository-relative) in OUT/commands.txt."""

    def __init__(self, out: Path, python: str, threads: int):
        self.out, self.python, self.threads = out, python, threads
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "eval").mkdir(parents=True, exist_ok=True)

    def __call__(self, log: str, *args: str) -> int:
        shown = shlex.join(["python", "-m", "elastic_cli", *args])
        with open(self.out / "commands.txt", "a", encoding="utf-8") as f:
            f.write(shown + "\n")
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads))
        with open(self.out / "logs" / f"{log}.log", "w", encoding="utf-8") as f:
            done = subprocess.run([self.python, "-m", "elastic_cli", *args], cwd=ROOT, env=env, stdout=f,
                                  stderr=subprocess.STDOUT)
        if done.returncode:
            print(f"  failed ({done.returncode}): {shown} (see {self.out}/logs/{log}.log)", flush=True)
        return done.returncode


def prepare(run: Runner, z: dict, data: Path, only: str | None) -> None:
    """Prepare each dataset once (a folder that holds it already is kept, and its command not repeated)."""
    for name, far in (("mqar", z["length"] // z["seg"] - 1), ("mqar-near", 0)):  # facts 0..S-1 / 0 segments back
        if only in (None, "mqar") and not (data / name / "meta.json").is_file():
            run(f"prepare-{name}", "prepare", "--task", "mqar", "--length", str(z["length"]), "--count",
                str(z["count"]), "--pairs", str(z["pairs"]), "--keys", str(z["keys"]), "--values", str(z["values"]),
                "--segment-len", str(z["seg"]), "--distance", f"0:{far}", "--val-frac", "0.05", "--test-frac", "0.05",
                "--tokenizer", "tokenizers/code-8k.model", "--out", str(data / name))
    if only in (None, "lm") and not (data / "code" / "meta.json").is_file():
        run("prepare-code", "prepare", "--corpus", "python-stdlib", "--tokenizer", "tokenizers/code-8k.model",
            "--out", str(data / "code"))


def train_and_eval(run: Runner, z: dict, v: dict, data: Path) -> None:
    """One variant: train (unless its eval file exists), then evaluate on the test split."""
    tag = f"{v['data']}-{v['name']}"
    report = run.out / "eval" / f"{tag}.json"
    if report.is_file():
        return
    run_dir = run.out / "runs" / tag
    task = v["data"].startswith("mqar")
    segs, steps = (z["length"] // z["seg"], z["steps"]) if task else (z["lm_segments"], z["lm_steps"])
    batch = z["batch"] if task else z["lm_batch"]
    shape = [f"model.d_model={z['d']}", f"model.n_layer={z['layers']}", f"model.n_head={z['heads']}",
             f"model.mlp_hidden={z['mlp']}", f"model.segment_len={z['seg'] if task else z['lm_seg']}",
             # mqar: each token also embeds its predecessor, so recall is one attention hop (model/decoder.py)
             *(["model.prev_embed=true"] if task else [])]
    schedule = [f"train.steps={steps}", f"train.warmup={max(1, steps // 20)}", f"train.lr={z['lr']}",
                f"train.min_lr={z['lr'] / 10}", f"train.global_batch={batch}", f"train.micro_batch={batch}",
                f"train.segments={segs}", f"train.bptt_segments={segs}", f"train.eval_every={max(1, steps // 10)}",
                "train.eval_batches=2", "train.save_every=0", "train.log_every=10", "train.seed=0",
                f"train.loss_on={'answers' if task else 'all'}"]
    where = [f"data.path={data / v['data']}", "data.tokenizer=tokenizers/code-8k.model", f"run.dir={run_dir}",
             f"run.device={z['device']}"]
    print(f"  {tag}: training", flush=True)
    # the variant's own overrides come last: the control changes the segment length and window
    train = ["train", "recipes/tiny.yaml", *shape, *schedule, *where, *v["over"], "--overwrite"]
    rc = run(f"train-{tag}", *train)
    if rc == EXIT_DIVERGED:  # once, at a third of the learning rate; the page says so (OUT/eval/TAG.lr)
        lr = z["lr"] / 3
        print(f"  {tag}: diverged; training again at train.lr={lr:g}", flush=True)
        rc = run(f"train-{tag}-lr", *train, f"train.lr={lr}", f"train.min_lr={lr / 10}")
        (run.out / "eval" / f"{tag}.lr").write_text(f"{lr}\n")
    if rc:
        return
    compare = ["--compare-schedules", ",".join(v["compare"])] if v.get("compare") else []
    run(f"eval-{tag}", "eval", "--ckpt", str(run_dir), "--split", "test", "--max-docs",
        str(z["eval_docs"] if task else z["lm_docs"]), *compare, "--json", str(report))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--smoke", action="store_const", const="smoke", dest="size", help="= --size smoke")
    p.add_argument("--gpu", action="store_const", const="gpu", dest="size", help="= --size gpu")
    p.add_argument("--kinds", default="none,elastic,xl,memorizing,melodi,infinity,armt,caching,rmt")
    p.add_argument("--only", choices=["mqar", "lm"], help="run one part only")
    p.add_argument("--jobs", type=int, help="variants at a time (default: the size's)")
    p.add_argument("--out", type=Path, help="output folder (default runs/reproduce-<size>)")
    p.add_argument("--results", type=Path, help="results page (default docs/results.md; smoke: OUT/results.md)")
    a = p.parse_args(argv)
    z = SIZES[a.size]
    out = a.out or Path("runs") / f"reproduce-{a.size}"
    results = a.results or (out / "results.md" if a.size == "smoke" else Path("docs/results.md"))
    kinds = [k for k in a.kinds.split(",") if k]
    jobs = a.jobs or z["jobs"]
    os.chdir(ROOT)
    run = Runner(out, os.environ.get("PYTHON", sys.executable), max(1, (os.cpu_count() or 2) // jobs))
    todo = dedupe(variants(z, kinds, a.only))
    (out / "settings.json").write_text(json.dumps({"size": a.size, "settings": z, "kinds": kinds, "only": a.only,
                                                   "variants": todo}, indent=1))
    t0 = time.time()
    print(f"reproduce ({a.size}): {len(todo)} variants, {jobs} at a time -> {out}", flush=True)
    prepare(run, z, out / "data", a.only)
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda v: train_and_eval(run, z, v, out / "data"), todo))
    print(f"reproduce ({a.size}): runs done in {time.time() - t0:.0f} s; writing {results}", flush=True)
    return subprocess.run([run.python, str(ROOT / "scripts" / "results.py"), str(out), "--out", str(results)],
                          cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
