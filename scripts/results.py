"""Write docs/results.md and the loss-by-segment PNG from a `scripts/reproduce.sh` output folder.

Every number comes from the run's files: $OUT/eval/<dataset>-<kind>.json (`elastic eval --json`),
$OUT/runs/<dataset>-<kind>/config.yaml (floats of memory per sequence, by building the model),
$OUT/commands.txt and $OUT/settings.txt. A variant without an eval file is reported as failed.

  python scripts/results.py runs/reproduce-full --out docs/results.md --mode full
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

TASKS = ("passkey", "recall")
LM = "code"


def variant_name(result: dict) -> str:
    mem = result["memory"]
    schedule = mem.get("schedule") or mem.get("sampling")  # eval JSON before the rename says "sampling"
    return mem["kind"] + (f" ({schedule})" if schedule else "")


def load_results(out: Path, kinds: list[str]) -> dict[str, dict[str, dict | None]]:
    """{dataset: {variant name: eval result or None (failed)}}, variants in the order of `kinds`."""
    table: dict[str, dict[str, dict | None]] = {}
    for dataset in (*TASKS, LM):
        rows: dict[str, dict | None] = {}
        for kind in kinds:
            path = out / "eval" / f"{dataset}-{kind}.json"
            if not path.is_file():
                rows[kind] = None
                continue
            for result in json.loads(path.read_text())["results"]:
                rows[variant_name(result)] = result
        table[dataset] = rows
    return table


def memory_floats(run_dir: Path) -> int | None:
    """Floats of memory state per sequence of the run's model (Decoder.numel of its empty states)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    from elastic_cli.build import build_model
    from elastic_cli.config import load_config

    model = build_model(load_config(config))
    return model.numel(model.empty_states(1, "cpu"))


def fmt(value, spec: str) -> str:
    return "failed" if value is None else format(value, spec)


def verdicts(rows: dict[str, dict | None], metric: str, higher_better: bool, label: str) -> list[str]:
    """One line per Elastic Memory variant: which variants it beats and which beat it on `metric`."""
    lines = []
    scored = {name: r[metric] for name, r in rows.items() if r is not None and r.get(metric) is not None}
    for name, value in scored.items():
        if not name.startswith("elastic"):
            continue
        better = [o for o, v in scored.items() if not o.startswith("elastic") and (v > value if higher_better else v < value)]
        worse = [o for o, v in scored.items() if not o.startswith("elastic") and (v < value if higher_better else v > value)]
        if better:
            lines.append(f"- {label}: **{name} loses** to {', '.join(better)} ({metric} {value:.4g} vs "
                         + ", ".join(f"{scored[o]:.4g}" for o in better) + ")" + (f"; beats {', '.join(worse)}" if worse else ""))
        else:
            lines.append(f"- {label}: {name} is not beaten ({metric} {value:.4g})" + (f"; beats {', '.join(worse)}" if worse else ""))
    return lines


def task_table(table: dict, floats: dict[str, int | None]) -> list[str]:
    """Per task: exact match of the whole answer, per-token answer accuracy and answer loss (nats/token)."""
    names = list(dict.fromkeys(n for d in TASKS for n in table[d]))
    metrics = (("exact_match", "exact match", ".3f"), ("answer_token_accuracy", "token acc.", ".3f"),
               ("answer_loss", "answer loss", ".3f"))
    lines = ["| variant | " + " | ".join(f"{t} {label}" for t in TASKS for _, label, _ in metrics)
             + " | answers | memory floats / sequence |",
             "|---|" + "---|" * (len(TASKS) * len(metrics) + 2)]
    for name in names:
        cells = [("n/a" if table[t][name].get(key) is None else format(table[t][name][key], spec))
                 if table[t].get(name) else "failed" for t in TASKS for key, _, spec in metrics]
        answers = "/".join(str(table[t][name]["answers"]) if table[t].get(name) else "-" for t in TASKS)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {answers} | {fmt(floats.get(name.split()[0]), 'd')} |")
    return lines


def lm_table(rows: dict[str, dict | None], floats: dict[str, int | None]) -> list[str]:
    lines = ["| variant | perplexity | bits per byte | loss, segment 1 | loss, last segment | tokens | memory floats / sequence |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if r is None:
            lines.append(f"| {name} | failed | failed | failed | failed | - | {fmt(floats.get(name), 'd')} |")
            continue
        curve = [v for v in r["loss_by_segment"] if v is not None]
        lines.append(f"| {name} | {r['perplexity']:.3f} | {r['bits_per_byte']:.4f} | {curve[0]:.4f} | {curve[-1]:.4f} "
                     f"| {r['tokens']} | {fmt(floats.get(name.split()[0]), 'd')} |")
    return lines


def binned(losses: list, tokens: list, width: int) -> tuple[list[float], list[float]]:
    """Token-weighted mean loss over bins of `width` segment indices: (bin centres, 1-based), means."""
    xs, ys = [], []
    for b in range(0, len(losses), width):
        pairs = [(v, n) for v, n in zip(losses[b : b + width], tokens[b : b + width]) if v is not None and n]
        if pairs:
            xs.append(b + (min(width, len(losses) - b) + 1) / 2)
            ys.append(sum(v * n for v, n in pairs) / sum(n for _, n in pairs))
    return xs, ys


def plot(rows: dict[str, dict | None], path: Path, width: int = 10) -> None:
    """Loss by segment index on the held-out code split (token-weighted bins of `width` segments),
    and each variant's difference to `none` in the same bins; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: binned(r["loss_by_segment"], r.get("tokens_by_segment") or [1] * len(r["loss_by_segment"]), width)
              for name, r in rows.items() if r is not None}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    base = curves.get("none")
    for i, (name, (xs, ys)) in enumerate(curves.items()):
        colour = f"C{i % 10}"  # the same colour for a variant in both panels
        top.plot(xs, ys, marker=".", color=colour, label=name)
        if base is not None and name != "none":
            bottom.plot(xs, [y - b for y, b in zip(ys, base[1])], marker=".", color=colour, label=name)
    top.set_ylabel("loss (nats/token)")
    top.set_title(f"held-out code: loss by segment index (token-weighted bins of {width} segments)")
    top.legend(fontsize=7, ncol=2)
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_ylabel("loss minus none's (nats/token)")
    bottom.set_xlabel("segment index in the document")
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def provenance() -> list[str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    import torch

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [f"- commit: `{git('rev-parse', 'HEAD')}`{dirty}",
            f"- written: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- hardware: {platform.system()} {cpu}, {os.cpu_count()} CPU cores, GPU: {gpu}",
            f"- software: Python {platform.python_version()}, torch {torch.__version__}"]


def write(out: Path, dest: Path, mode: str) -> None:
    settings = dict(line.split("=", 1) for line in (out / "settings.txt").read_text().splitlines() if "=" in line)
    kinds = settings["kinds"].split(",")
    table = load_results(out, kinds)
    floats = {kind: memory_floats(out / "runs" / f"{LM}-{kind}") for kind in kinds}
    png = dest.with_name(dest.stem + "-loss-by-segment.png")
    plot(table[LM], png)
    commands = (out / "commands.txt").read_text().strip()
    lines = [
        "# Results", "",
        f"Written by `scripts/results.py` from the runs in `{out}` (`scripts/reproduce.sh{'' if mode == 'full' else ' --' + mode}`,"
        f" seed {settings.get('seed', '?')}). Nothing here is typed in by hand: rerun the script to regenerate.", "",
        *provenance(), "",
        "## Long-range tasks (test split; exact match of the whole answer and per-token accuracy by argmax, answer loss in nats/token)", "",
        "Memory floats per sequence are counted from each run's model (`Decoder.numel`); the sizes are "
        "chosen to match Elastic Memory's footprint where the kind allows it.", "",
        *task_table(table, floats), "",
        *[v for t in TASKS for v in verdicts(table[t], "exact_match", True, t)],
        *[v for t in TASKS for v in verdicts(table[t], "answer_loss", False, t)], "",
        f"## Language modelling (held-out `{LM}` test split: the Python standard library)", "",
        *lm_table(table[LM], floats), "",
        *verdicts(table[LM], "bits_per_byte", False, LM), "",
        f"![loss by segment index]({png.name})", "",
        "## Commands", "", "```", commands, "```", "",
    ]
    tmp = dest.with_name(dest.name + ".tmp")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, dest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the reproduce.sh output folder")
    parser.add_argument("--out", dest="dest", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--mode", default="full")
    args = parser.parse_args(argv)
    write(args.out, args.dest, args.mode)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
