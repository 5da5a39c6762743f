"""`elastic generate`: read a prompt (any length) into memory segment by segment, then stream tokens.

The prompt goes through `Decoder.step` one segment at a time: each full segment is folded into
memory and its KV cache dropped, so the stream state and the work per generated token are
bounded by the segment length and the memory size, whatever the prompt length.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass

from elastic_cli import console, precision
from elastic_cli.atomic import check_writable, make_parents, write_atomic
from elastic_cli.generate.decoding import DecodingOptions, Sampler, make_generator
from elastic_cli.generate.prompt import Prompt, prompt_texts
from elastic_cli.generate.stream import IncrementalDecoder, continuation, prefill_chunks, samples, stream_numel
from elastic_cli.runs import inference
from elastic_cli.runs.checkpoint import open_checkpoint
from elastic_cli.runs.inference import Settings


@dataclass(frozen=True)
class GenerateOptions:
    """Everything `elastic generate` takes (the CLI builds it, the prompt already checked)."""

    ckpt: str  # a run or checkpoint directory
    prompt: Prompt  # documents to read into memory, then the prompt text
    settings: Settings = Settings()  # key=value, --device, --dtype, --tokenizer
    max_new_tokens: int = 128
    decoding: DecodingOptions = DecodingOptions()  # temperature, top-k, top-p
    seed: int = 0
    num_samples: int = 1
    schedule: str | None = None  # Elastic Memory read schedule at test time
    out: str | None = None  # JSONL of the samples


def run(opts: GenerateOptions) -> list[dict]:
    """`elastic generate`: prints each sample to stdout as it is produced; returns the records
    (also written as JSONL to `opts.out`)."""
    out_file = check_writable(opts.out, "--out") if opts.out else None
    ckpt = open_checkpoint(opts.ckpt, opts.settings.tokenizer)
    loaded = inference.load(ckpt, opts.settings, opts.schedule)
    cfg, model, device = loaded.cfg, loaded.model, loaded.device
    tokenizer = inference.load_tokenizer(ckpt, cfg)
    chunks = itertools.chain([[tokenizer.bos_id]], (tokenizer.encode(t) for t in prompt_texts(opts.prompt)))
    amp = lambda: precision.autocast(device, cfg.train.dtype)  # noqa: E731
    t0 = time.perf_counter()
    logits, stream, n_prompt, context = prefill_chunks(model, chunks, device, amp)
    console.info(f"read {n_prompt} prompt tokens in {time.perf_counter() - t0:.1f}s; "
                 f"stream state {stream_numel(stream)} floats")
    sampler, records, n = Sampler(opts.decoding, make_generator(opts.seed), tokenizer.eos_id, amp), [], opts.num_samples
    batch = None
    if n > 1:  # decoded together, printed one after the other
        t0 = time.perf_counter()
        batch = samples(model, stream, logits, n, opts.max_new_tokens, sampler)
        batch_seconds = time.perf_counter() - t0
    for i in range(n):
        if n > 1:
            console.info(f"--- sample {i + 1}/{n}")
        decoder = IncrementalDecoder(tokenizer, context)
        tokens, t0 = [], time.perf_counter()
        drawn = batch[i] if batch is not None else (token for token, _ in continuation(
            model, stream, logits, opts.max_new_tokens, sampler))
        for token in drawn:
            tokens.append(token)
            if token != tokenizer.eos_id:
                console.out(decoder.push(token), end="")
        console.out(decoder.flush())
        seconds = batch_seconds if batch is not None else time.perf_counter() - t0
        finish = "eos" if tokens and tokens[-1] == tokenizer.eos_id else "length"
        body = tokens[:-1] if finish == "eos" else tokens
        records.append({"sample": i, "seed": opts.seed, "prompt_tokens": n_prompt, "tokens": body,
                        "text": tokenizer.decode(body), "finish_reason": finish,
                        "tokens_per_s": len(tokens) / seconds if seconds > 0 else None})
        console.info(f"{len(tokens)} tokens, {len(tokens) / max(seconds, 1e-9):.1f} tokens/s ({finish})")
    if out_file is not None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        write_atomic(make_parents(out_file), lines.encode("utf-8"))
    return records
