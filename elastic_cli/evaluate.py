"""`elastic eval`: perplexity, bits per byte, loss by segment index, exact match, speed, peak memory.

Whole documents are read in order, segment by segment, memory carried through each document
(the rows of a batch are documents that start together). Everything but `speed` is a
deterministic function of the checkpoint, the data and the memory options.

Axis legend: B documents in a batch, L segment length, V vocabulary.
"""
from __future__ import annotations

import math
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from elastic_cli import console, inference
from elastic_cli.atomic import write_atomic
from elastic_cli.errors import DataError, UsageError

LN2 = math.log(2.0)


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp of the mean token negative log-likelihood (nats)."""
    return math.exp(nll_sum / n_tokens)


def bits_per_byte(nll_sum: float, n_bytes: int) -> float:
    """Total NLL in nats / (ln 2 x UTF-8 bytes of the evaluated text): comparable across tokenizers."""
    return nll_sum / (LN2 * n_bytes)


def answer_positions(answer: tuple[int, int]) -> tuple[int, int]:
    """Input positions [a-1, b-1) whose next-token targets are the answer tokens [a, b) of a document."""
    a, b = answer
    return a - 1, b - 1


@dataclass
class Tally:
    """Running sums over scored tokens; NLL sums in float64."""

    nll: float = 0.0
    tokens: int = 0
    seg_nll: list = field(default_factory=list)  # per segment index: NLL sum
    seg_tokens: list = field(default_factory=list)  # per segment index: scored tokens
    answers: int = 0  # documents with an answer span
    exact: int = 0  # of those, every answer token predicted by argmax
    answer_tokens: int = 0  # answer tokens scored
    answer_correct: int = 0  # of those, predicted by argmax
    answer_nll: float = 0.0  # NLL sum over answer tokens (a graded signal where exact match is still 0)

    def add_segment(self, index: int, nll: torch.Tensor, valid: torch.Tensor) -> None:
        """nll, valid: (B, L) for segment `index` of the batch's documents."""
        while len(self.seg_nll) <= index:
            self.seg_nll.append(0.0)
            self.seg_tokens.append(0)
        total = float(nll.double()[valid].sum())
        count = int(valid.sum())
        self.nll += total
        self.tokens += count
        self.seg_nll[index] += total
        self.seg_tokens[index] += count

    def add_answers(self, all_correct: list[bool]) -> None:
        self.answers += len(all_correct)
        self.exact += sum(all_correct)

    def add_answer_tokens(self, nll: torch.Tensor, correct: torch.Tensor) -> None:
        """nll, correct: (n,) over the answer tokens of one segment."""
        self.answer_tokens += int(nll.numel())
        self.answer_correct += int(correct.sum())
        self.answer_nll += float(nll.double().sum())

    def loss_by_segment(self) -> list[float | None]:
        return [s / n if n else None for s, n in zip(self.seg_nll, self.seg_tokens)]


def batch_arrays(docs: list[np.ndarray], segment_len: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Documents -> inputs (B, S*L) long (0-padded), targets (B, S*L) (-1: no target), S segments."""
    longest = max(len(d) for d in docs)
    n_seg = -(-longest // segment_len)
    inputs = torch.zeros(len(docs), n_seg * segment_len, dtype=torch.long)  # (B, S*L)
    targets = torch.full_like(inputs, -1)  # (B, S*L)
    for row, d in enumerate(docs):
        t = torch.from_numpy(d.astype(np.int64))
        inputs[row, : len(t)] = t
        targets[row, : len(t) - 1] = t[1:]
    return inputs, targets, n_seg


@torch.no_grad()
def score(model, docs: list[np.ndarray], answers: list, batch_size: int, device: torch.device,
          amp=nullcontext, bar=None) -> Tally:
    """Teacher-forced NLL of every next token of every document, memory carried per document.

    answers[i] is None or (start, end) token offsets of document i's answer; amp() gives the
    autocast context of each forward."""
    tally, L = Tally(), model.segment_len
    order = sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i))  # similar lengths share a batch
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        inputs, targets, n_seg = batch_arrays([docs[i] for i in rows], L)
        inputs, targets = inputs.to(device), targets.to(device)
        spans = [answers[i] and answer_positions(answers[i]) for i in rows]
        wrong = torch.zeros(len(rows), dtype=torch.long, device=device)  # (B,) answer tokens missed
        states = model.empty_states(len(rows), device)
        for s in range(n_seg):
            x, y = inputs[:, s * L : (s + 1) * L], targets[:, s * L : (s + 1) * L]  # (B, L)
            with amp():
                logits, states = model(x, states)  # (B, L, V)
            logits = logits.float()
            nll = F.cross_entropy(logits.transpose(1, 2), y.clamp(min=0), reduction="none")  # (B, L)
            valid = y >= 0  # (B, L)
            tally.add_segment(s, nll, valid)
            pos = torch.arange(s * L, (s + 1) * L, device=device)  # (L,)
            miss = (logits.argmax(-1) != y) & valid  # (B, L)
            for r, span in enumerate(spans):
                if span:
                    inside = (pos >= span[0]) & (pos < span[1]) & valid[r]  # (L,)
                    wrong[r] += int((miss[r] & inside).sum())
                    tally.add_answer_tokens(nll[r][inside], ~miss[r][inside])
            if bar is not None:
                bar.update(int(valid.sum()))
        tally.add_answers([bool(wrong[r] == 0) for r, span in enumerate(spans) if span])
    return tally


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA max allocated by tensors, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024), "cpu_peak_rss"


def evaluate_one(ckpt: str, data, split: str, sampling: str | None, samples: int | None,
                 batch_size: int | None, max_docs: int | None) -> dict:
    """One model variant on one split -> a result record."""
    loaded = inference.load(ckpt, sampling, samples)
    cfg, model, device = loaded.cfg, loaded.model, loaded.device
    batch = batch_size or cfg.eval.batch
    if max_docs is None and cfg.eval.max_batches is not None:  # the run's eval.max_batches batches of documents
        max_docs = cfg.eval.max_batches * batch
    ids = data.documents(split)[:max_docs]
    docs = [np.asarray(data.tokens(i)) for i in ids]
    metas = data.meta["docs"]
    answers = [tuple(metas[i]["answer"]) if metas[i].get("answer") else None for i in ids]
    n_bytes = sum(int(data.doc_bytes(i)) for i in ids)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    label = f"eval {cfg.memory.kind}" + (f"/{cfg.memory.sampling}" if cfg.memory.kind == "elastic" else "")
    t0 = time.perf_counter()
    with console.progress(sum(len(d) - 1 for d in docs), label, unit="tok") as bar:
        tally = score(model, docs, answers, batch, device, lambda: inference.autocast(cfg, device), bar)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak, peak_kind = peak_memory(device)
    mem = cfg.memory
    return {
        "checkpoint": str(loaded.ckpt),
        "memory": {"kind": mem.kind, **({"sampling": mem.sampling, "samples": mem.samples, "order": mem.order}
                                        if mem.kind == "elastic" else {})},
        "docs": len(ids), "tokens": tally.tokens, "bytes": n_bytes,
        "loss": tally.nll / tally.tokens,
        "perplexity": perplexity(tally.nll, tally.tokens),
        "bits_per_byte": bits_per_byte(tally.nll, n_bytes),
        "loss_by_segment": tally.loss_by_segment(),
        "tokens_by_segment": tally.seg_tokens,
        "exact_match": tally.exact / tally.answers if tally.answers else None,
        "answers": tally.answers,
        "answer_token_accuracy": tally.answer_correct / tally.answer_tokens if tally.answer_tokens else None,
        "answer_loss": tally.answer_nll / tally.answer_tokens if tally.answer_tokens else None,
        "speed": {"tokens_per_s": tally.tokens / seconds, "seconds": seconds, "device": str(device),
                  "peak_memory_bytes": peak, "peak_memory_kind": peak_kind},
    }


def run_eval(ckpt: str, data_dir: str | None, split: str | None, sampling: str | None, samples: int | None,
             compare: list[str], batch_size: int | None, max_docs: int | None) -> dict:
    """`elastic eval`: one result per sampling schedule (just one without --compare-sampling)."""
    from elastic_cli.data.loader import PreparedData

    if compare and sampling:
        raise UsageError("use either --sampling or --compare-sampling, not both")
    _, cfg = inference.read_config(ckpt)  # fail early on a bad checkpoint; its config names the data
    path = Path(data_dir or cfg.data.path)
    if not (path / "meta.json").is_file():
        raise DataError(f"no prepared data at {path} (no meta.json); run `elastic prepare` or pass --data")
    data = PreparedData(path)
    warning = inference.check_data_matches(cfg, data.meta, path)
    if warning:
        console.warn(warning)
    split = split or cfg.eval.split
    if not data.documents(split):
        raise DataError(f"{path} has no documents in split {split!r}")
    results = [evaluate_one(ckpt, data, split, s, samples, batch_size, max_docs) for s in (compare or [sampling])]
    return {"data": str(path), "split": split, "results": results}


def shown_segments(n: int) -> list[int]:
    """Segment indices for the table: 1, 2, 3, 4, then powers of two, and the last (JSON has all)."""
    picked = {i for i in range(min(n, 4))} | {(1 << k) - 1 for k in range(3, 32) if (1 << k) <= n} | {n - 1}
    return sorted(i for i in picked if 0 <= i < n)


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Metrics down, variants across (side by side for --compare-sampling)."""
    res = report["results"]
    names = [r["memory"]["kind"] + (f" {r['memory']['sampling']} M={r['memory']['samples']}"
                                     if "sampling" in r["memory"] else "") for r in res]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    rows = [["perplexity"] + [fmt(r["perplexity"], ".3f") for r in res],
            ["bits per byte"] + [fmt(r["bits_per_byte"], ".4f") for r in res],
            ["loss (nats/token)"] + [fmt(r["loss"], ".4f") for r in res]]
    if any(r["exact_match"] is not None for r in res):
        rows.append(["exact match"] + [fmt(r["exact_match"], ".3f") for r in res])
        rows.append(["answer token accuracy"] + [fmt(r["answer_token_accuracy"], ".3f") for r in res])
        rows.append(["answer loss (nats/token)"] + [fmt(r["answer_loss"], ".4f") for r in res])
    for i in shown_segments(max(len(r["loss_by_segment"]) for r in res)):
        rows.append([f"loss, segment {i + 1}"] + [fmt(r["loss_by_segment"][i] if i < len(r["loss_by_segment"]) else None,
                                                      ".4f") for r in res])
    rows.append(["tokens / docs"] + [f"{r['tokens']} / {r['docs']}" for r in res])
    rows.append(["tokens/s"] + [f"{r['speed']['tokens_per_s']:.0f}" for r in res])
    rows.append(["peak memory (MiB)"] + [f"{r['speed']['peak_memory_bytes'] / 2**20:.0f} "
                                         f"({r['speed']['peak_memory_kind']})" for r in res])
    return ["metric"] + names, rows


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
    """Loss by segment index, one line per variant, written atomically in the format of the suffix."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r, name in zip(report["results"], table_rows(report)[0][1:]):
        points = [(i + 1, v) for i, v in enumerate(r["loss_by_segment"]) if v is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel("segment index in the document")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"loss by segment ({report['split']})")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lower().lstrip("."), dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
