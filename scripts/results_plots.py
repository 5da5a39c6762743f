"""The PNGs of docs/results.md, drawn from the tables `results.collect` builds (no number of their own).

Every kind keeps one colour and one marker in every plot (STYLE); the matched comparison is drawn
apart from the controls and ablations; chance is a dashed grey line; legends sit outside the data;
rows trained with several seeds show their mean with min-max error bars.
"""
from __future__ import annotations

import math
from pathlib import Path

# kind -> (colour, marker): the tab10 colours, one each, and markers that differ in shape
STYLE = {"none": ("#7f7f7f", "o"), "elastic": ("#d62728", "*"), "xl": ("#1f77b4", "s"), "memorizing": ("#2ca02c", "^"),
         "melodi": ("#9467bd", "D"), "infinity": ("#8c564b", "v"), "armt": ("#e377c2", "P"), "caching": ("#17becf", "X"),
         "rmt": ("#bcbd22", "h")}
EXTRA_MARKERS = "o^sDv<>ph"  # controls, ablations and schedules: black/grey lines with these markers


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    import io

    from elastic_cli.atomic import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    write_atomic(path, buf.getvalue())


def style(kind: str, i: int = 0) -> tuple[str, str]:
    return STYLE.get(kind, (f"C{i % 10}", EXTRA_MARKERS[i % len(EXTRA_MARKERS)]))


def _legend_outside(ax, **kwargs) -> None:
    """The legend to the right of the axes (never over the data), or a note when nothing was drawn."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)
    else:
        ax.text(0.5, 0.5, "no runs to plot", transform=ax.transAxes, ha="center", va="center")


def _chance(ax, chance: float | None) -> None:
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3f})")


def distance_points(r: dict) -> tuple[list[int], list[float], list[float], list[float]]:
    """(distances, mean, low, high) of a row: the seeds' min and max where it has seeds, else the mean."""
    ds = sorted(int(d) for d in r["accuracy_by_distance"] if d != "unknown")
    mean = [r["accuracy_by_distance"][str(d)] for d in ds]
    seeds = r.get("seeds") or []
    lo, hi = [], []
    for d, m in zip(ds, mean):
        vals = [s["accuracy_by_distance"][str(d)] for s in seeds if str(d) in s["accuracy_by_distance"]]
        lo.append(min(vals) if vals else m)
        hi.append(max(vals) if vals else m)
    return ds, mean, lo, hi


def _errorbar(ax, xs, mean, lo, hi, label, colour, marker, linestyle="-") -> None:
    yerr = [[max(0.0, m - a) for m, a in zip(mean, lo)], [max(0.0, b - m) for m, b in zip(mean, hi)]]  # 0: rounding
    ax.errorbar(xs, mean, yerr=yerr, label=label,
                color=colour, marker=marker, linestyle=linestyle, capsize=3, markersize=6, linewidth=1.3)


def distance_plot(mq: dict, path: Path, chance: float) -> None:
    """Left: the matched comparison (mean over seeds, min-max bars); right: controls and ablations."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name, r in mq.items():
        if not r.get("failed") and r["group"] == "matched":
            colour, marker = style(r["kind"])
            _errorbar(left, *distance_points(r), f"{r.get('label', name)} ({r.get('n_seeds', 1)} seeds)", colour, marker)
    others = [(n, r) for n, r in mq.items() if not r.get("failed") and r["group"] in ("control", "ablation")]
    for i, (name, r) in enumerate(others):
        colour, _ = style(r["kind"])
        _errorbar(right, *distance_points(r), f"{name} ({r['group']})", colour, EXTRA_MARKERS[i % len(EXTRA_MARKERS)],
                  "--" if r["group"] == "ablation" else "-")
    for ax, title in ((left, "every kind at a matched footprint"), (right, "controls and ablations (one seed)")):
        _chance(ax, chance)
        ax.set_xlabel("distance from fact to query (segments)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"mqar: {title}", fontsize=10)
        _legend_outside(ax, fontsize=7)
    left.set_ylabel("answer accuracy (test)")
    fig.tight_layout()
    _save(fig, path)


def bins(max_distance: int) -> list[tuple[int, int]]:
    """Distance bins 0, 1, 2-3, 4-7, 8-15, ... up to max_distance (powers of two)."""
    out, lo = [(0, 0)], 1
    while lo <= max_distance:
        out.append((lo, min(2 * lo - 1, max_distance)))
        lo *= 2
    return out


def binned_accuracy(r: dict, lo: int, hi: int) -> float | None:
    """Token-weighted accuracy of a row over distances lo..hi (None where it has no answer there)."""
    acc, tok = r["accuracy_by_distance"], r.get("tokens_by_distance") or {}
    pairs = [(acc[d], tok.get(d, 1)) for d in acc if d != "unknown" and lo <= int(d) <= hi]
    n = sum(t for _, t in pairs)
    return sum(a * t for a, t in pairs) / n if n else None


def length_plot(length: dict, path: Path, chance: float, trained: int) -> None:
    """One panel per eval length: accuracy by distance bin (mean over seeds, min-max bars), per kind."""
    plt = _plt()
    sizes = sorted({e["eval_segments"] for rows in length.values() for e in rows})
    fig, axes = plt.subplots(1, max(1, len(sizes)), figsize=(5 * max(1, len(sizes)), 4.2), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], sizes):
        spans = bins(n - 1)
        for name, rows in length.items():
            e = next((x for x in rows if x["eval_segments"] == n), None)
            if e is None:
                continue
            xs, mean, lo, hi = [], [], [], []
            for i, (a, b) in enumerate(spans):
                m = binned_accuracy(e, a, b)
                if m is None:
                    continue
                vals = [v for v in (binned_accuracy(s, a, b) for s in e.get("seeds", [])) if v is not None] or [m]
                xs.append(i)
                mean.append(m)
                lo.append(min(vals))
                hi.append(max(vals))
            colour, marker = style(e["kind"])
            _errorbar(ax, xs, mean, lo, hi, name, colour, marker)
        ax.axvline(len(bins(trained - 1)) - 0.5, color="black", linewidth=0.8, linestyle=":",
                   label=f"beyond the training window ({trained} segments)")
        _chance(ax, chance)
        ax.set_xticks(range(len(spans)))
        ax.set_xticklabels([f"{a}" if a == b else f"{a}-{b}" for a, b in spans], rotation=45, fontsize=8)
        ax.set_xlabel("distance from fact to query (segments)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"documents of {n} segments (trained on {trained})", fontsize=10)
    axes[0][0].set_ylabel("answer accuracy (new documents)")
    _legend_outside(axes[0][-1], fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def frontier_plot(mq: dict, path: Path, far: int) -> None:
    """Accuracy at distance >= far against memory floats per sequence. A kind's sweep points (and its
    matched row, trained the same way) are joined; paper settings (hollow) and longer runs (black
    edge) are separate, unjoined markers."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    key = f"accuracy_distance_ge_{far}"
    ok = [r for r in mq.values() if not r.get("failed") and r.get("footprint_floats") and r.get(key) is not None]
    for kind in sorted({r["kind"] for r in ok}):
        colour, marker = style(kind)
        pts = sorted((r["footprint_floats"], r[key]) for r in ok if r["kind"] == kind and r["group"] in ("sweep", "matched"))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour,
                    label=f"{kind} (matched{' and sweep' if len(pts) > 1 else ''})")
        alone = [(r["footprint_floats"], r[key], r["group"]) for r in ok if r["kind"] == kind and r["group"] in ("paper", "long")]
        for x, y, group in alone:  # paper: hollow; twice the steps: filled with a black edge
            face = "none" if group == "paper" else colour
            ax.plot([x], [y], marker=marker, color=colour, markerfacecolor=face, markeredgecolor=colour if group == "paper"
                    else "black", linestyle="none", markersize=9, label=f"{kind} ({'paper setting' if group == 'paper' else 'twice the steps'})")
    ax.set_xscale("log")
    ax.set_xlabel("memory floats per sequence")
    ax.set_ylabel(f"answer accuracy, distance >= {far} segments")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("mqar: quality against memory footprint", fontsize=10)
    _legend_outside(ax, fontsize=7)
    _save(fig, path)


def sampling_plot(mq: dict, path: Path, chance: float) -> None:
    """Elastic Memory's matched weights read with every schedule (mean over seeds, min-max bars)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rows = [(r.get("read_schedule") or n, r) for n, r in mq.items()
            if not r.get("failed") and r["kind"] == "elastic" and r.get("trained_as") == "matched"]
    for i, (schedule, r) in enumerate(rows):
        _errorbar(ax, *distance_points(r), schedule, f"C{i % 10}", EXTRA_MARKERS[i % len(EXTRA_MARKERS)])
    _chance(ax, chance)
    ax.set_xlabel("distance from fact to query (segments)")
    ax.set_ylabel("answer accuracy (test)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Elastic Memory: one set of weights per seed, read with each schedule", fontsize=10)
    _legend_outside(ax, fontsize=8)
    _save(fig, path)


def learning_plot(mq: dict, path: Path, chance: float) -> None:
    """Small multiples: one panel per row with a learning curve, one thin line per seed."""
    plt = _plt()
    rows = [(n, r) for n, r in mq.items() if not r.get("failed") and (r.get("seeds") or r.get("learning_curve"))
            and r["group"] != "sampling"]
    cols = 4
    nrows = max(1, math.ceil(len(rows) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), sharex=True, sharey=True, squeeze=False)
    for ax, (name, r) in zip(axes.flat, rows):
        colour, marker = style(r["kind"])
        curves = [(s["seed"], s.get("learning_curve") or []) for s in r.get("seeds") or []] or [(0, r["learning_curve"])]
        for seed, c in curves:
            ax.plot([p[0] for p in c], [p[1] for p in c], color=colour, marker=marker, markersize=3, linewidth=1,
                    alpha=0.85, label=f"seed {seed}")
        _chance(ax, chance)
        ax.set_title(f"{name} ({r['group']})", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("val answer acc.", fontsize=8)
    fig.suptitle("mqar: validation answer accuracy against step (each line one seed; dashed: chance)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def binned(losses: list, tokens: list, width: int) -> tuple[list[float], list[float]]:
    """Token-weighted mean loss over bins of `width` segment indices: (bin centres, 1-based), means."""
    xs, ys = [], []
    for b in range(0, len(losses), width):
        pairs = [(v, n) for v, n in zip(losses[b : b + width], tokens[b : b + width]) if v is not None and n]
        if pairs:
            xs.append(b + (min(width, len(losses) - b) + 1) / 2)
            ys.append(sum(v * n for v, n in pairs) / sum(n for _, n in pairs))
    return xs, ys


def lm_plot(rows: dict, path: Path, width: int = 10) -> None:
    """Loss by segment index (token-weighted bins of `width` segments) and each memory's gain over
    `none` (none's loss minus its loss: positive where the memory helps)."""
    plt = _plt()
    curves = {name: (r["kind"], r["group"], *binned(r["loss_by_segment"], r.get("tokens_by_segment")
                                                     or [1] * len(r["loss_by_segment"]), width))
              for name, r in rows.items() if not r.get("failed")}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True)
    base = next((c for c in curves.values() if c[0] == "none"), None)
    for i, (name, (kind, group, xs, ys)) in enumerate(curves.items()):
        colour, marker = style(kind, i)
        look = dict(marker=marker, color=colour, label=name, markersize=4,  # another read schedule: dashed, hollow
                    **({"linestyle": "--", "markerfacecolor": "none"} if group == "sampling" else {}))
        top.plot(xs, ys, **look)
        if base is not None and kind != "none":
            bottom.plot(xs, [b - y for y, b in zip(ys, base[3])], **look)
    top.set_ylabel("loss (nats/token)")
    top.set_title(f"held-out code: loss by segment index (token-weighted bins of {width} segments)", fontsize=10)
    _legend_outside(top, fontsize=7)
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_ylabel("gain over none (nats/token)\n(positive: memory helps)")
    bottom.set_xlabel("segment index in the document")
    if bottom.get_legend_handles_labels()[0]:
        _legend_outside(bottom, fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def babilong_heatmap(rows: dict, path: Path) -> None:
    """One babilong task: a length x depth heatmap per row (evaluate/heatmap.py draws it), three a line."""
    from elastic_cli.evaluate.heatmap import draw

    draw([(name, r["heatmap"]) for name, r in rows.items() if r.get("heatmap")], path, per_row=3)


def write_all(table: dict, dest: Path, far: int, chance: float, trained: int) -> dict:
    """Every plot beside `dest`; returns their file names by role ("babilong": by task)."""
    names = {role: f"{dest.stem}-{role}.png" for role in ("distance", "length", "frontier", "sampling", "learning", "lm")}
    dest.parent.mkdir(parents=True, exist_ok=True)
    names["babilong"] = {}
    for task, rows in table.get("babilong", {}).items():
        if any(r.get("heatmap") for r in rows.values()):
            names["babilong"][task] = f"{dest.stem}-babilong-{task}.png"
            babilong_heatmap(rows, dest.with_name(names["babilong"][task]))
    mq = table["mqar"]
    distance_plot(mq, dest.with_name(names["distance"]), chance)
    length_plot(table.get("length", {}), dest.with_name(names["length"]), chance, trained)
    frontier_plot(mq, dest.with_name(names["frontier"]), far)
    sampling_plot(mq, dest.with_name(names["sampling"]), chance)
    learning_plot(mq, dest.with_name(names["learning"]), chance)
    if table["lm"]:
        lm_plot(table["lm"], dest.with_name(names["lm"]))
    else:  # no language-modelling runs: no empty picture (nor a stale one from an earlier page)
        dest.with_name(names["lm"]).unlink(missing_ok=True)
    return names
