"""The needle-in-a-haystack heatmap: answer accuracy over document length x depth of the facts
(as in RULER's NIAH tasks and the EasyContext plots), from `elastic eval` results on haystack data.

A document counts as right when every token of every answer span is the argmax (all values of a
multi-value document). Its length is its stored tokens; its depth is meta.json's `depth` (the share
of the haystack before the first supporting fact), put on the task's `--depth` grid when it was one
(nearest point), else into DEPTH_BINS equal bins labelled by their lower edge.
"""

from __future__ import annotations

import io
from pathlib import Path

from elastic_cli.atomic import write_atomic

DEPTH_BINS = 5
MAX_NUMBERED = 144  # cells written into the image up to this many


def depth_grid(task: dict | None) -> list[float] | None:
    """The task's --depth points when it was a grid ("0,0.5,1"), else None (a range)."""
    spec = str(((task or {}).get("options") or {}).get("depth", ""))
    if not spec or ":" in spec:
        return None
    return [float(x) for x in spec.split(",")]


def has_depths(meta: dict) -> bool:
    return any(d.get("depth") is not None for d in meta.get("docs", ()))


def cells(meta: dict, ids: list[int], doc_exact: dict) -> dict:
    """{"lengths", "depths" (row labels), "accuracy", "docs"}: rows are depths, columns lengths;
    `doc_exact[k]` are the span results of document ids[k] (scoring.Tally.doc_exact)."""
    grid = depth_grid(meta.get("task"))
    docs = meta["docs"]
    lengths = sorted({docs[i]["tokens"] for i in ids})
    rows = grid if grid is not None else [b / DEPTH_BINS for b in range(DEPTH_BINS)]
    right = [[0] * len(lengths) for _ in rows]
    count = [[0] * len(lengths) for _ in rows]
    for k, i in enumerate(ids):
        d, spans = docs[i].get("depth"), doc_exact.get(k, [])
        if d is None or not spans:
            continue
        if grid is not None:
            r = min(range(len(grid)), key=lambda j: (abs(grid[j] - d), j))
        else:
            r = min(int(d * DEPTH_BINS), DEPTH_BINS - 1)
        c = lengths.index(docs[i]["tokens"])
        count[r][c] += 1
        right[r][c] += all(spans)
    return {"lengths": lengths, "depths": rows, "binned": grid is None,
            "accuracy": [[right[r][c] / count[r][c] if count[r][c] else None for c in range(len(lengths))]
                         for r in range(len(rows))],
            "docs": count}


def draw(panels: list[tuple[str, dict]], path: Path, per_row: int | None = None) -> None:
    """One heatmap per (title, cells), side by side (`per_row` a line, default all), sharing a colour bar
    (accuracy 0-1); the image format is the suffix of `path` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = 1.0 + max(len(c["lengths"]) for _, c in panels) * 0.9
    height = 2.2 + 0.55 * max(len(c["depths"]) for _, c in panels)
    cols = min(per_row or len(panels), len(panels))
    lines = -(-len(panels) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(1.8 + width * cols, height * lines), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    image = None
    for k, (ax, (title, c)) in enumerate(zip(axes.flat, panels)):
        ax.set_facecolor("0.85")                                        # cells without documents: grey
        acc = np.array([[np.nan if v is None else v for v in row] for row in c["accuracy"]], dtype=float)
        image = ax.imshow(acc, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(c["lengths"])), [str(n) for n in c["lengths"]])
        step = 1 / DEPTH_BINS
        ax.set_yticks(range(len(c["depths"])), [f"{d:.0%}-{d + step:.0%}" if c["binned"] else f"{d:.0%}"
                                                 for d in c["depths"]])
        ax.set_xlabel("document length (tokens)")
        if k % cols == 0:
            ax.set_ylabel("depth of the first supporting fact")
        ax.set_title(title)
        if acc.size <= MAX_NUMBERED:
            for (r, col), v in np.ndenumerate(acc):
                label = "n/a" if np.isnan(v) else f"{v:.2f}\n({c['docs'][r][col]})"
                ax.text(col, r, label, ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=list(axes.flat), label="exact-match accuracy (cells: accuracy, documents in brackets)")
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=120)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
