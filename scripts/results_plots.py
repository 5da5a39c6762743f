"""The PNGs of docs/results.md, drawn from the table `results.collect` builds (no number of their own)."""
from __future__ import annotations

from pathlib import Path


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


def _by_distance(ax, rows: dict, title: str) -> None:
    for i, (name, r) in enumerate(rows.items()):
        pts = sorted((int(d), a) for d, a in r["accuracy_by_distance"].items() if d != "unknown")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i % 10}", label=name,
                linestyle="-" if i < 10 else "--")
    ax.set_xlabel("distance from fact to query (segments)")
    ax.set_ylabel("answer token accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    _legend(ax, fontsize=7, ncol=2)


def distance_plot(mq: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _by_distance(ax, {n: r for n, r in mq.items() if not r.get("failed") and r["group"] in ("matched", "control", "ablation")},
                 "mqar: accuracy by distance, every kind at a matched footprint")
    _save(fig, path)


def frontier_plot(mq: dict, path: Path, far: int) -> None:
    """Accuracy at distance >= far against memory floats per sequence, one line per kind."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    kinds = sorted({r["kind"] for r in mq.values() if not r.get("failed") and r["group"] in ("sweep", "paper", "matched")})
    for i, kind in enumerate(kinds):
        pts = sorted((r["footprint_floats"], r[f"accuracy_distance_ge_{far}"]) for r in mq.values()
                     if not r.get("failed") and r["kind"] == kind and r["group"] in ("sweep", "paper", "matched")
                     and r["footprint_floats"] and r[f"accuracy_distance_ge_{far}"] is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i % 10}", label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("memory floats per sequence")
    ax.set_ylabel(f"answer accuracy, distance >= {far} segments")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("mqar: quality against memory footprint")
    _legend(ax, fontsize=8)
    _save(fig, path)


def sampling_plot(mq: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _by_distance(ax, {(r["read_schedule"] or n): r for n, r in mq.items()
                      if not r.get("failed") and r["kind"] == "elastic" and r.get("trained_as") == "matched"},
                 "Elastic Memory: one set of weights, read with each schedule")
    _save(fig, path)


def learning_plot(mq: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, r) in enumerate((n, r) for n, r in mq.items() if not r.get("failed") and r.get("learning_curve")):
        ax.plot([p[0] for p in r["learning_curve"]], [p[1] for p in r["learning_curve"]], marker=".",
                color=f"C{i % 10}", linestyle="-" if i < 10 else "--", label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation answer accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("mqar: learning curves")
    _legend(ax, fontsize=6, ncol=2)
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
    """Loss by segment index (token-weighted bins of `width` segments) and the difference to `none`."""
    plt = _plt()
    curves = {name: binned(r["loss_by_segment"], r.get("tokens_by_segment") or [1] * len(r["loss_by_segment"]), width)
              for name, r in rows.items() if not r.get("failed")}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    base = curves.get("none")
    for i, (name, (xs, ys)) in enumerate(curves.items()):
        top.plot(xs, ys, marker=".", color=f"C{i % 10}", label=name)
        if base is not None and name != "none":
            bottom.plot(xs, [y - b for y, b in zip(ys, base[1])], marker=".", color=f"C{i % 10}", label=name)
    top.set_ylabel("loss (nats/token)")
    top.set_title(f"held-out code: loss by segment index (token-weighted bins of {width} segments)")
    if curves:
        _legend(top, fontsize=7, ncol=2)
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_ylabel("loss minus none's (nats/token)")
    bottom.set_xlabel("segment index in the document")
    _save(fig, path)


def write_all(table: dict, dest: Path, far: int) -> dict[str, str]:
    """Every plot beside `dest`; returns their file names by role."""
    names = {role: f"{dest.stem}-{role}.png" for role in ("distance", "frontier", "sampling", "learning", "lm")}
    dest.parent.mkdir(parents=True, exist_ok=True)
    mq = table["mqar"]
    distance_plot(mq, dest.with_name(names["distance"]))
    frontier_plot(mq, dest.with_name(names["frontier"]), far)
    sampling_plot(mq, dest.with_name(names["sampling"]))
    learning_plot(mq, dest.with_name(names["learning"]))
    lm_plot(table["lm"], dest.with_name(names["lm"]))
    return names


def _legend(ax, **kwargs) -> None:
    """The legend, or a note in the plot when no run drew a line (a page of failed or missing runs)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)
    else:
        ax.text(0.5, 0.5, "no runs to plot", transform=ax.transAxes, ha="center", va="center")
