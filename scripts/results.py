"""Write docs/results.md, docs/results.json and the PNGs beside them from a `scripts/reproduce.py` folder.

Every number comes from the run's files: OUT/eval/<data>-<variant>.json (`elastic eval --json`),
OUT/runs/<data>-<variant>/config.yaml (memory floats per sequence, by building the model) and
metrics.jsonl (learning curves), OUT/commands.txt and OUT/settings.json. A variant without an eval
file is reported as failed.

  python scripts/results.py runs/reproduce-cpu --out docs/results.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import results_plots  # noqa: E402
from elastic_cli.code_version import code_version  # noqa: E402

FAR = 2  # distances of at least this many segments: local attention cannot see the fact


def memory_floats(run_dir: Path) -> int | None:
    """Floats of memory state per sequence of the run's model (Decoder.numel of its empty states)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    from elastic_cli.build import build_model
    from elastic_cli.config import load_config

    model = build_model(load_config(config))
    return model.numel(model.empty_states(1, "cpu"))


def curve(run_dir: Path) -> list[list[float]]:
    """[[step, validation answer accuracy], ...] from the run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [[r["step"], r["val_accuracy"]] for r in rows if "val_accuracy" in r]


def span_accuracy(r: dict, lo: int, hi: int | None = None) -> float | None:
    """Token-weighted answer accuracy of a table row over the distances lo..hi (segments; no hi: all
    from lo on)."""
    rows = [(r["accuracy_by_distance"][d], r["tokens_by_distance"][d]) for d in r["accuracy_by_distance"]
            if d != "unknown" and lo <= int(d) and (hi is None or int(d) <= hi)]
    n = sum(t for _, t in rows)
    return sum(a * t for a, t in rows) / n if n else None


def collect(out: Path) -> dict:
    """The numbers behind the page: {"mqar": {variant: ...}, "lm": {variant: ...}} ("failed": True when
    the variant has no eval file)."""
    settings = json.loads((out / "settings.json").read_text())
    table: dict = {"mqar": {}, "lm": {}}
    for v in settings["variants"]:
        tag = f"{v['data']}-{v['name']}"
        path, run_dir = out / "eval" / f"{tag}.json", out / "runs" / tag
        section = "mqar" if v["data"].startswith("mqar") else "lm"
        results = json.loads(path.read_text())["results"] if path.is_file() else [None]
        floats = memory_floats(run_dir)
        for i, r in enumerate(results):
            schedule = r and (r["memory"].get("schedule") or r["memory"].get("sampling"))
            name = v["name"] if i == 0 else v["name"].replace("-uniform", "") + f"-{schedule}"
            if r is None:  # failed or not run: the row stays in its table
                table[section][name] = {"kind": v["kind"], "group": v["group"], "failed": True}
                continue
            lr = out / "eval" / f"{tag}.lr"  # trained again at this learning rate after a divergence
            base = {"kind": v["kind"], "group": v["group"] if i == 0 else "sampling", "footprint_floats": floats,
                    "retrained_lr": float(lr.read_text()) if lr.is_file() else None,
                    "read_schedule": schedule, "command_run_dir": str(run_dir), "trained_as": v["group"]}
            if section == "mqar":
                by_d = r["answer_by_distance"]
                row = {**base, "accuracy_by_distance": {d: x["accuracy"] for d, x in by_d.items()},
                       "loss_by_distance": {d: x["loss"] for d, x in by_d.items()},
                       "tokens_by_distance": {d: x["tokens"] for d, x in by_d.items()}}
                table[section][name] = {**row,
                                        "answer_accuracy": r["answer_token_accuracy"], "answer_loss": r["answer_loss"],
                                        f"accuracy_distance_ge_{FAR}": span_accuracy(row, FAR),
                                        "learning_curve": curve(run_dir) if i == 0 else None}
            else:
                table[section][name] = {**base, **{k: r.get(k) for k in ("bits_per_byte", "xz_bits_per_byte", "loss",
                                                                         "perplexity", "loss_by_segment",
                                                                         "tokens_by_segment", "long_context_gain",
                                                                         "tokens")}}
    return table


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def mqar_table(rows: dict, distances: list[str]) -> list[str]:
    lines = ["| variant | group | memory floats / seq | " + " | ".join(f"d={d}" for d in distances)
             + f" | d>={FAR} | all | answer loss |", "|---|---|---|" + "---|" * (len(distances) + 3)]
    for name, r in rows.items():
        if r.get("failed"):
            lines.append(f"| {name} | {r['group']} | failed |" + " |" * (len(distances) + 3))
            continue
        acc = r["accuracy_by_distance"]
        group = r["group"] + (f" (lr {r['retrained_lr']:g}: diverged at the size's lr)" if r.get("retrained_lr") else "")
        lines.append(f"| {name} | {group} | {fmt(r['footprint_floats'], ',d')} | "
                     + " | ".join(fmt(acc.get(d), ".3f") for d in distances)
                     + f" | {fmt(r[f'accuracy_distance_ge_{FAR}'], '.3f')} | {fmt(r['answer_accuracy'], '.3f')}"
                     f" | {fmt(r['answer_loss'], '.3f')} |")
    return lines


def lm_table(rows: dict) -> list[str]:
    lines = ["| variant | bits per byte | xz -9 bits per byte | loss, seg 1 | loss, last seg | long-context gain "
             "(nats/token) | key tokens | key-token ppl | memory floats / seq |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if r.get("failed"):
            lines.append(f"| {name} | failed |" + " |" * 7)
            continue
        seg = [x for x in r["loss_by_segment"] if x is not None]
        g = r.get("long_context_gain") or {}
        lines.append(f"| {name} | {fmt(r['bits_per_byte'], '.4f')} | {fmt(r['xz_bits_per_byte'], '.4f')} | "
                     f"{fmt(seg[0] if seg else None, '.4f')} | {fmt(seg[-1] if seg else None, '.4f')} | "
                     f"{fmt(g.get('mean_nats'), '.4f')} | {fmt(g.get('key_fraction'), '.4f')} | "
                     f"{fmt(g.get('key_perplexity'), '.3f')} | {fmt(r['footprint_floats'], ',d')} |")
    return lines


def findings(rows: dict, chance: float, z: dict) -> list[str]:
    """Sentences computed from the table: the bars of the issue, met or not, with the numbers."""
    ok = {n: r for n, r in rows.items() if not r.get("failed")}
    lines = []
    ctrl = ok.get("none-one-segment")
    if ctrl:
        lines.append(f"- Control (one segment spans the document, plain attention): answer accuracy "
                     f"{ctrl['answer_accuracy']:.3f} over all distances ({'meets' if ctrl['answer_accuracy'] >= 0.95 else 'misses'} the 0.95 bar).")
    near = ok.get("none-distance0")
    if near:
        lines.append(f"- Within-segment control (`none` trained and tested with every fact in its query's segment, "
                     f"`--distance 0:0`): answer accuracy {near['answer_accuracy']:.3f} "
                     f"({'meets' if near['answer_accuracy'] >= 0.95 else 'misses'} the 0.95 bar).")
    none = ok.get("none")
    if none:
        d0 = none["accuracy_by_distance"].get("0")
        lines.append(f"- `none` (no memory, segments of the same model, the mixed-distance data): distance 0 accuracy "
                     f"{fmt(d0, '.3f')}; at distance >= {FAR}: {fmt(none[f'accuracy_distance_ge_{FAR}'], '.3f')} "
                     f"(chance {chance:.3f}): nothing before its segment reaches it.")
    far = {n: r[f"accuracy_distance_ge_{FAR}"] for n, r in ok.items() if r[f"accuracy_distance_ge_{FAR}"] is not None
           and r["kind"] != "none" and r["group"] != "sampling"}
    if far:
        best = max(far, key=far.get)
        lines.append(f"- Best memory at distance >= {FAR}: `{best}` with {far[best]:.3f} "
                     f"({'meets' if far[best] >= 0.90 else 'misses'} the 0.90 bar). Ranking: "
                     + ", ".join(f"{n} {a:.3f}" for n, a in sorted(far.items(), key=lambda kv: -kv[1])) + ".")
    lines += exact_memory_lines(ok, z)
    for trained in ("matched", "long"):
        schedules = {r["read_schedule"]: r[f"accuracy_distance_ge_{FAR}"] for r in ok.values()
                     if r["kind"] == "elastic" and r.get("trained_as") == trained and r["read_schedule"]}
        if len(schedules) > 1:
            lines.append(f"- Elastic Memory's weights ({trained} run) read with each schedule, accuracy at distance "
                         f">= {FAR}: " + ", ".join(f"{k} {fmt(v, '.3f')}" for k, v in schedules.items()) + ".")
    return lines


def exact_memory_lines(ok: dict, z: dict) -> list[str]:
    """Why exact memories (xl's cache, memorizing's kNN store) land where they do, from the rows that
    test it: xl detached vs with gradients inside its cache's reach, and each kind holding the whole
    document as in its paper."""
    lines = []
    name, reach = f"xl-cache{z['order']}", max(1, z["order"] // z["seg"])  # segments the matched cache covers
    long = f"{name}-steps{2 * z['steps']}"
    if name in ok and f"{name}-grad" in ok:
        det, grad = ok[name], ok[f"{name}-grad"]
        lines.append(f"- Exact cache inside its reach (d=1..{reach}): `{name}` (detached, as the paper) "
                     f"{fmt(span_accuracy(det, 1, reach), '.3f')}, `{name}-grad` (gradients into the cache, ablation) "
                     f"{fmt(span_accuracy(grad, 1, reach), '.3f')}"
                     + (f", `{long}` (detached, twice the steps) {fmt(span_accuracy(ok[long], 1, reach), '.3f')}"
                        if long in ok else "")
                     + f"; beyond it {fmt(span_accuracy(det, reach + 1), '.3f')} "
                     f"and {fmt(span_accuracy(grad, reach + 1), '.3f')}.")
    for n, r in ok.items():
        if r["kind"] in ("xl", "memorizing") and "-paper" in n:
            lines.append(f"- `{n}` (holds the whole document, detached as in the paper{', twice the steps' if r['group'] == 'long' else ''}): d=0 "
                         f"{fmt(span_accuracy(r, 0, 0), '.3f')}, d>={FAR} {fmt(r[f'accuracy_distance_ge_{FAR}'], '.3f')}.")
    return lines


def provenance() -> list[str]:
    import torch

    code = code_version(("elastic_cli", "scripts", "recipes"))
    dirty = " (with uncommitted changes to the code)" if code["dirty"] else ""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [f"- commit: `{code['commit'] or 'unknown'}`{dirty}",
            f"- written: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- hardware: {platform.system()} {cpu}, {os.cpu_count()} CPU cores, GPU: {gpu}",
            f"- software: Python {platform.python_version()}, torch {torch.__version__}"]


def write_text(path: Path, text: str) -> None:
    from elastic_cli.atomic import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"))


def write(out: Path, dest: Path) -> None:
    settings = json.loads((out / "settings.json").read_text())
    z, table = settings["settings"], collect(out)
    meta = out / "data" / "mqar" / "meta.json"  # what the task data really holds
    task = json.loads(meta.read_text()).get("task", {}).get("options", {}) if meta.is_file() else {}
    mq = table["mqar"]
    done = {n: r for n, r in mq.items() if not r.get("failed")}
    distances = sorted({d for r in done.values() for d in r["accuracy_by_distance"] if d != "unknown"}, key=int)
    pngs = results_plots.write_all(table, dest, FAR)
    write_text(dest.with_suffix(".json"), json.dumps({"commit": code_version()["commit"] or "unknown", "size": settings["size"],
                                                      "settings": z, **table}, indent=1) + "\n")
    matched = {n: r for n, r in mq.items() if r["group"] in ("matched", "control", "ablation", "long")}
    commands = (out / "commands.txt").read_text().strip() if (out / "commands.txt").is_file() else ""
    lines = [
        "# Results", "",
        f"Written by `scripts/results.py` from the runs in `{out}` (`python scripts/reproduce.py --size {settings['size']}`)."
        " Nothing here is typed in by hand: rerun the script to regenerate. The numbers behind every table are in "
        f"`{dest.with_suffix('.json').name}`.", "", *provenance(), "",
        "## Multi-query associative recall (mqar)", "",
        f"{z['count']} documents of {z['length']} tokens ({z['length'] // z['seg']} segments of {z['seg']}), {z['pairs']} "
        f"key-value pairs each, every pair asked once; the distance d is the number of segments between a fact and its "
        f"query (0: same segment). Keys from {z['keys']} words, values from {z['values']} (chance {1 / z['values']:.3f}), "
        f"{task.get('noise', 'n/a')} noise words around them (the task's options are in `{meta.parent}/meta.json`). "
        f"Model: d_model {z['d']}, {z['layers']} layers, {z['heads']} heads, and each token's input also embeds the token "
        "before it in its segment (`model.prev_embed=true`, a learned bigram input: without it even full attention sits "
        "on a plateau at this budget, see the `-no-prev-embed` row); "
        f"{z['steps']} steps of {z['batch']} "
        "documents, loss on answer tokens only (`train.loss_on=answers`), gradients through the whole document. "
        f"Answer-token accuracy on {z['eval_docs']} test documents.", "",
        "### Every kind at a matched footprint", "", *mqar_table(matched, distances), "",
        *findings(mq, 1 / z["values"], z), "", f"![accuracy by distance]({pngs['distance']})", "",
        "### Footprint sweep (quality against memory floats per sequence)", "",
        *mqar_table({n: r for n, r in mq.items() if r["group"] in ("sweep", "paper", "matched")
                     and r["kind"] in ("elastic", "xl", "memorizing", "infinity")}, distances), "",
        f"![frontier]({pngs['frontier']})", "",
        "### Elastic Memory's test-time sampling bias (one set of trained weights)", "",
        *mqar_table({n: r for n, r in mq.items() if r["kind"] == "elastic" and r["group"] in ("matched", "sampling", "long")},
                    distances), "", f"![sampling schedules]({pngs['sampling']})", "",
        "### Learning curves (validation answer accuracy against step)", "", f"![learning curves]({pngs['learning']})", "",
        "## Language modelling (held-out Python standard library, test split)", "",
        "The long-context gain is, per token, the NLL with memory emptied before every segment minus the NLL with "
        "memory carried (the model judges itself, as in LongPPL); key tokens gain more than 2 nats. The xz line is "
        "what `lzma` preset 9 needs for the same text: a language model should beat it.", "",
        *lm_table(table["lm"]), "", f"![loss by segment]({pngs['lm']})", "",
        "## Commands", "", "```", commands, "```", ""]
    write_text(dest, "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the reproduce output folder")
    parser.add_argument("--out", dest="dest", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args(argv)
    write(args.out, args.dest)


if __name__ == "__main__":
    main()
