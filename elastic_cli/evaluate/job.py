"""`elastic eval`: perplexity, bits per byte, loss by segment index, exact match, speed, peak memory.

Whole documents are read in order, segment by segment, memory carried through each document
(the rows of a batch are documents that start together). Everything but `speed` is a
deterministic function of the checkpoint, the data and the memory options.

Axis legend: B documents in a batch, L segment length, V vocabulary.
"""
from __future__ import annotations

import json
import lzma
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from elastic_cli import console, precision
from elastic_cli.atomic import check_writable, make_parents, write_atomic
from elastic_cli.data.compat import check_data
from elastic_cli.data.loader import PreparedData
from elastic_cli.data.tokenizer import Tokenizer
from elastic_cli.errors import DataError
from elastic_cli.evaluate import heatmap, report
from elastic_cli.evaluate.scoring import GAIN_THRESHOLD, Scoring, Tally, score
from elastic_cli.runs import inference
from elastic_cli.runs.checkpoint import open_checkpoint
from elastic_cli.runs.inference import Settings

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


@dataclass(frozen=True)
class EvalOptions:
    """Everything `elastic eval` takes (the CLI builds it; `run` does the rest)."""

    ckpt: str  # a run or checkpoint directory
    settings: Settings = Settings()  # key=value, --device, --dtype, --tokenizer
    data: str | None = None  # prepared data (default: the run's data.path)
    split: str | None = None  # default: the run's eval.split
    schedules: tuple[str | None, ...] = (None,)  # one variant per read schedule (None: the checkpoint's own)
    samples: int | None = None  # Elastic Memory samples M
    batch_size: int | None = None  # default: eval.batch
    max_docs: int | None = None  # default: eval.max_batches x batch size, or all
    gain: bool = True  # also score with empty memory (the long-context gain; language data only)
    out: str | None = None  # JSON path ('-': stdout instead of the table)
    plot: str | None = None  # loss by segment / accuracy by distance image
    heatmap: str | None = None  # haystack data: accuracy over length x depth image (cells beside it as .json)


def run(opts: EvalOptions) -> dict:
    """`elastic eval`: one result per read schedule, shown as a table (and written where asked).
    Output paths are checked, the checkpoint opened and verified and the data checked before any scoring."""
    json_file = check_writable(opts.out, "--out") if opts.out not in (None, "-") else None
    plot_file = check_writable(opts.plot, "--plot") if opts.plot else None
    heat_file = check_writable(opts.heatmap, "--heatmap") if opts.heatmap else None
    for f in (plot_file, heat_file):
        if f is not None:
            report.check_plot_available(f)
    ckpt = open_checkpoint(opts.ckpt, opts.settings.tokenizer)
    path = Path(opts.data or ckpt.config.data.path)  # the data settings cannot change: the saved config names it
    if not (path / "meta.json").is_file():
        hint = "" if opts.data else f" (the run's data.path{' relative to this directory' if not path.is_absolute() else ''})"
        raise DataError(f"no prepared data at {path}{hint} (no meta.json); run `elastic prepare` or pass --data DIR")
    data = PreparedData(path)
    warning = check_data(ckpt.config, data.meta, path, ckpt.tokenizer)
    if warning:
        console.warn(warning)
    cfg = inference.configure(ckpt, opts.settings)  # a bad setting fails here, before any scoring
    if heat_file is not None and not heatmap.has_depths(data.meta):
        raise DataError(f"{path} records no depths for a heatmap; prepare it with --task babilong, niah-multikey, "
                        f"niah-multivalue or passkey and --haystack")
    split = opts.split or cfg.eval.split
    if not data.documents(split):
        raise DataError(f"{path} has no documents in split {split!r}")
    done = {"checkpoint": str(ckpt.path), "step": ckpt.step}
    results = [{**done, **evaluate_one(inference.load(ckpt, opts.settings, schedule, opts.samples), data, split,
                                       opts.batch_size, opts.max_docs, opts.gain)} for schedule in opts.schedules]
    out = {"checkpoint": str(ckpt.path), "step": ckpt.step, "data": str(path), "split": split, "results": results}
    text = json.dumps(out, indent=1)
    if opts.out == "-":
        console.out(text)
    else:
        if json_file is not None:
            write_atomic(make_parents(json_file), (text + "\n").encode())
            console.info(f"wrote {json_file}")
        console.table(report.title(out), *report.table_rows(out))
    if plot_file is not None:
        report.plot_curves(out, make_parents(plot_file))
        console.info(f"wrote {plot_file}")
    if heat_file is not None:
        names = report.table_rows(out)[0][1:]
        panels = [(f"{n} ({split})", r["heatmap"]) for n, r in zip(names, results)]
        heatmap.draw(panels, make_parents(heat_file))
        cells_file = heat_file.with_suffix(".json")
        if cells_file != json_file:  # --out to the same path already holds the cells
            write_atomic(make_parents(cells_file), (json.dumps(dict(panels), indent=1) + "\n").encode())
        console.info(f"wrote {heat_file} and {cells_file}")
    return out


def evaluate_one(loaded: inference.Loaded, data: PreparedData, split: str, batch_size: int | None,
                 max_docs: int | None, gain: bool) -> dict:
    """One model variant on one split -> its result record (the caller adds which checkpoint)."""
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
        amp = lambda: precision.autocast(device, cfg.train.dtype)  # noqa: E731
        tally = score(model, docs, answers, batch, device, Scoring(amp, bar, gain and not any(answers), unit))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak, peak_kind = peak_memory(device)
    mem = cfg.memory
    return {
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
        "answer_start": tally.start_report(),
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
    path = data.meta.get("tokenizer")
    if not path or not Path(path).is_file() or not n_bytes:
        return None
    tok = Tokenizer.load(path)
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9}]
    size = sum(len(lzma.compress(tok.decode(data.tokens(i)).encode("utf-8"), format=lzma.FORMAT_RAW, filters=filters))
               for i in ids)
    return 8.0 * size / n_bytes
