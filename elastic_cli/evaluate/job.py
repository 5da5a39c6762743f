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
from pathlib import Path

import numpy as np
import torch

from elastic_cli import console, precision
from elastic_cli.evaluate import heatmap
from elastic_cli.runs import inference
from elastic_cli.atomic import write_atomic
from elastic_cli.data.compat import check_data
from elastic_cli.errors import DataError, UsageError
from elastic_cli.evaluate.scoring import GAIN_THRESHOLD, Tally, score  # noqa: F401  (Tally: part of this module's API)

LN2 = math.log(2.0)


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp of the mean token negative log-likelihood (nats)."""
    return math.exp(nll_sum / n_tokens)


def bits_per_byte(nll_sum: float, n_bytes: int) -> float:
    """Total NLL in nats / (ln 2 x UTF-8 bytes of the evaluated text): comparable across tokenizers."""
    return nll_sum / (LN2 * n_bytes)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA max allocated by tensors, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024), "cpu_peak_rss"


def evaluate_one(ckpt: str, data, split: str, schedule: str | None, samples: int | None,
                 batch_size: int | None, max_docs: int | None, settings: inference.Settings = inference.Settings(),
                 gain: bool = True) -> dict:
    """One model variant on one split -> a result record. `gain`: also score every segment with
    empty memory for the long-context gain (language data only; doubles the time)."""
    from elastic_cli.runs.checkpoint import saved_step

    loaded = inference.load(ckpt, settings, schedule, samples)
    cfg, model, device = loaded.cfg, loaded.model, loaded.device
    batch = batch_size or cfg.eval.batch
    if max_docs is None and cfg.eval.max_batches is not None:  # the run's eval.max_batches batches of documents
        max_docs = cfg.eval.max_batches * batch
    ids = data.documents(split)[:max_docs]
    docs = [np.asarray(data.tokens(i)) for i in ids]
    answers = [data.answers(i) for i in ids]
    n_bytes = sum(int(data.doc_bytes(i)) for i in ids)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    label = f"eval {cfg.memory.kind}" + "".join(f"/{v}" for k, v in cfg.memory.options().items() if k == "schedule")
    t0 = time.perf_counter()
    with console.progress(sum(len(d) - 1 for d in docs), label, unit="tok") as bar:
        unit = ((data.task or {}).get("options") or {}).get("segment_len")  # mqar counts distances in its own unit
        tally = score(model, docs, answers, batch, device, lambda: precision.autocast(device, cfg.train.dtype), bar,
                      gain=gain and not any(answers), distance_unit=unit)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak, peak_kind = peak_memory(device)
    mem = cfg.memory
    return {
        "checkpoint": str(loaded.ckpt),
        "step": saved_step(loaded.ckpt),
        "memory": {"kind": mem.kind, **mem.options()},
        "docs": len(ids), "tokens": tally.tokens, "bytes": n_bytes,
        "loss": tally.nll / tally.tokens,
        "perplexity": perplexity(tally.nll, tally.tokens),
        "bits_per_byte": bits_per_byte(tally.nll, n_bytes),
        "xz_bits_per_byte": None if any(answers) else xz_bits_per_byte(data, ids, n_bytes),
        "loss_by_segment": tally.loss_by_segment(),
        "tokens_by_segment": tally.seg_tokens,
        "exact_match": tally.exact / tally.answers if tally.answers else None,
        "answers": tally.answers,
        "answer_token_accuracy": tally.answer_correct / tally.answer_tokens if tally.answer_tokens else None,
        "answer_loss": tally.answer_nll / tally.answer_tokens if tally.answer_tokens else None,
        "answer_by_distance": tally.distance_report(),
        "long_context_gain": gain_report(tally),
        "heatmap": heatmap.cells(data.meta, ids, tally.doc_exact) if heatmap.has_depths(data.meta) else None,
        "speed": {"tokens_per_s": tally.tokens / seconds, "seconds": seconds, "device": str(device),
                  "peak_memory_bytes": peak, "peak_memory_kind": peak_kind},
    }


def gain_report(tally: Tally) -> dict | None:
    """Mean NLL(memory reset every segment) - NLL(memory carried) per token, and the perplexity over
    the key tokens whose gain exceeds GAIN_THRESHOLD nats (LongPPL-style, the model as its own judge)."""
    if not tally.gain_tokens:
        return None
    return {"mean_nats": tally.gain / tally.gain_tokens, "threshold_nats": GAIN_THRESHOLD,
            "key_tokens": tally.key_tokens, "key_fraction": tally.key_tokens / tally.gain_tokens,
            "key_perplexity": perplexity(tally.key_nll, tally.key_tokens) if tally.key_tokens else None}


def xz_bits_per_byte(data, ids: list[int], n_bytes: int) -> float | None:
    """Bits per byte of the evaluated documents under xz (lzma preset 9, one raw stream per document,
    no container bytes): the floor a language model of this text should beat. The text is the
    documents' tokens decoded with the data's tokenizer (None when it is not at hand)."""
    import lzma

    from elastic_cli.data.tokenizer import Tokenizer

    path = data.meta.get("tokenizer")
    if not path or not Path(path).is_file() or not n_bytes:
        return None
    tok = Tokenizer.load(path)
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9}]
    size = sum(len(lzma.compress(tok.decode(data.tokens(i)).encode("utf-8"), format=lzma.FORMAT_RAW, filters=filters))
               for i in ids)
    return 8.0 * size / n_bytes


def run_eval(ckpt: str, data_dir: str | None, split: str | None, schedule: str | None, samples: int | None,
             compare: list[str], batch_size: int | None, max_docs: int | None,
             settings: inference.Settings = inference.Settings(), gain: bool = True, need_depths: bool = False) -> dict:
    """`elastic eval`: one result per read schedule (just one without --compare-schedules).
    `need_depths` (--heatmap): DataError unless the data records each document's depth."""
    from elastic_cli.data.loader import PreparedData

    if compare and schedule:
        raise UsageError("use either --schedule or --compare-schedules, not both")
    ckpt_dir, cfg = inference.read_config(ckpt, settings)  # fail early on a bad checkpoint; its config names the data
    path = Path(data_dir or cfg.data.path)
    if not (path / "meta.json").is_file():
        hint = "" if data_dir else f" (the run's data.path{' relative to this directory' if not path.is_absolute() else ''})"
        raise DataError(f"no prepared data at {path}{hint} (no meta.json); run `elastic prepare` or pass --data DIR")
    data = PreparedData(path)
    warning = check_data(cfg, data.meta, path, inference.tokenizer_file(ckpt_dir, cfg, settings.tokenizer, required=False))
    if warning:
        console.warn(warning)
    if need_depths and not heatmap.has_depths(data.meta):
        raise DataError(f"{path} records no depths for a heatmap; prepare it with --task babilong, niah-multikey, "
                        f"niah-multivalue or passkey and --haystack")
    split = split or cfg.eval.split
    if not data.documents(split):
        raise DataError(f"{path} has no documents in split {split!r}")
    results = [evaluate_one(ckpt_dir, data, split, s, samples, batch_size, max_docs, settings, gain)
               for s in (compare or [schedule])]
    return {"checkpoint": str(ckpt_dir), "step": results[0]["step"], "data": str(path), "split": split,
            "results": results}


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
    import io

    import matplotlib

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
