"""What `elastic eval` shows: the table (metrics down, variants across) and the loss or accuracy plot."""
from __future__ import annotations

import io
from pathlib import Path

from elastic_cli.atomic import write_atomic
from elastic_cli.errors import UsageError
from elastic_cli.evaluate.scoring import GAIN_THRESHOLD


def title(report: dict) -> str:
    """The table's title: what was scored (checkpoint and its step) on which documents."""
    return f"eval of {report['checkpoint']} (step {report['step']}) on {report['split']} of {report['data']}"


def shown_segments(n: int) -> list[int]:
    """Segment indices for the table: 1, 2, 3, 4, then powers of two, and the last (JSON has all)."""
    picked = {i for i in range(min(n, 4))} | {(1 << k) - 1 for k in range(3, 32) if (1 << k) <= n} | {n - 1}
    return sorted(i for i in picked if 0 <= i < n)


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Metrics down, variants across (side by side for --compare-schedules)."""
    res = report["results"]
    names = [r["memory"]["kind"] + (f" {r['memory']['schedule']} M={r['memory']['samples']}"
                                     if "schedule" in r["memory"] else "") for r in res]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    rows = [["perplexity"] + [fmt(r["perplexity"], ".3f") for r in res],
            ["bits per byte"] + [fmt(r["bits_per_byte"], ".4f") for r in res],
            ["loss (nats/token)"] + [fmt(r["loss"], ".4f") for r in res]]
    if any(r.get("xz_bits_per_byte") is not None for r in res):
        rows.append(["xz -9 bits per byte (floor)"] + [fmt(r.get("xz_bits_per_byte"), ".4f") for r in res])
    if any(r.get("long_context_gain") for r in res):
        gains = [r.get("long_context_gain") or {} for r in res]
        rows.append(["long-context gain (nats/token)"] + [fmt(g.get("mean_nats"), ".4f") for g in gains])
        rows.append([f"key tokens (gain > {GAIN_THRESHOLD:g} nats)"] + [fmt(g.get("key_fraction"), ".4f") for g in gains])
        rows.append(["key-token perplexity"] + [fmt(g.get("key_perplexity"), ".3f") for g in gains])
    if any(r["exact_match"] is not None for r in res):
        rows.append(["exact match"] + [fmt(r["exact_match"], ".3f") for r in res])
        rows.append(["answer token accuracy"] + [fmt(r["answer_token_accuracy"], ".3f") for r in res])
        rows.append(["answer loss (nats/token)"] + [fmt(r["answer_loss"], ".4f") for r in res])
        rows.append(["answers in the task's format"] + [fmt((r.get("answer_start") or {}).get("well_formed"), ".3f")
                                                          for r in res])
        distances = sorted({d for r in res for d in r.get("answer_by_distance", {})}, key=_distance_key)
        for d in distances:
            rows.append([f"answer accuracy, distance {d}"] + [fmt(r["answer_by_distance"][d]["accuracy"], ".3f")
                                                             if d in r["answer_by_distance"] else "n/a" for r in res])
    for i in shown_segments(max(len(r["loss_by_segment"]) for r in res)):
        rows.append([f"loss, segment {i + 1}"] + [fmt(r["loss_by_segment"][i] if i < len(r["loss_by_segment"]) else None,
                                                      ".4f") for r in res])
    rows.append(["tokens / docs"] + [f"{r['tokens']} / {r['docs']}" for r in res])
    rows.append(["tokens/s"] + [f"{r['speed']['tokens_per_s']:.0f}" for r in res])
    rows.append(["peak memory (MiB)"] + [f"{r['speed']['peak_memory_bytes'] / 2**20:.0f} "
                                         f"({r['speed']['peak_memory_kind']})" for r in res])
    return ["metric"] + names, rows


def _distance_key(d: str) -> tuple[int, int]:
    return (1, 0) if d == "unknown" else (0, int(d))


def check_plot_available(path: Path | None = None) -> None:
    """UsageError (exit 2) before any work: no matplotlib, or a --plot suffix it cannot write."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'elastic-cli[plot]' (or pip install matplotlib)") from None
    if path is not None:
        formats = FigureCanvasAgg.get_supported_filetypes()
        if Path(path).suffix.lower().lstrip(".") not in formats:
            raise UsageError(f"--plot {path}: the suffix must name an image format: {', '.join('.' + f for f in sorted(formats))}")


def plot_curves(report: dict, path: Path) -> None:
    """Task data: answer accuracy against distance in segments; otherwise loss by segment index.
    One line per variant; the image format is the suffix of `path` (written atomically)."""
    import matplotlib  # optional (elastic-cli[plot]): checked by check_plot_available before any work

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_distance = any(r.get("answer_by_distance") for r in report["results"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for r, name in zip(report["results"], table_rows(report)[0][1:]):
        if by_distance:
            points = [(int(d), v["accuracy"]) for d, v in r["answer_by_distance"].items() if d != "unknown"]
        else:
            points = [(i + 1, v) for i, v in enumerate(r["loss_by_segment"]) if v is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if by_distance:
        ax.set_xlabel("distance from fact to question (segments)")
        ax.set_ylabel("answer token accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"answer accuracy by distance ({report['split']})")
    else:
        ax.set_xlabel("segment index in the document")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(f"loss by segment ({report['split']})")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
