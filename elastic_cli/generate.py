"""`elastic generate`: read a prompt (any length) into memory segment by segment, then stream tokens.

The prompt goes through `Decoder.step` one segment at a time: each full segment is folded into
memory and its KV cache dropped, so the stream state and the work per generated token are
bounded by the segment length and the memory size, whatever the prompt length.

Axis legend: B rows (1 here), n tokens in a chunk, V vocabulary.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import torch

from elastic_cli import console, inference, precision
from elastic_cli.atomic import write_atomic
from elastic_cli.errors import DataError, UsageError
from elastic_cli.decoding import DecodingOptions, make_generator, next_token

CONTEXT_TOKENS = 4  # prompt tokens the incremental decoder starts from (keeps the first space)


def read_prompt(prompt: str | None, file: str | None) -> str:
    """The prompt text from --prompt, --file PATH or --file - (stdin). Empty -> UsageError (2);
    not UTF-8 -> DataError (3)."""
    if (prompt is None) == (file is None):
        raise UsageError("give exactly one of --prompt TEXT, --file PATH or - (stdin)")
    if prompt is not None:
        text, where = prompt, "--prompt"
    else:
        where = "stdin" if file == "-" else file
        try:
            raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        except FileNotFoundError:
            raise UsageError(f"--file {file}: no such file") from None
        except OSError as e:
            raise UsageError(f"--file {file}: cannot read ({e.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where} is not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text.strip():
        raise UsageError(f"{where}: the prompt is empty")
    return text


class IncrementalDecoder:
    """Turns a growing list of token ids into text pieces that are safe to print: a piece is
    released only once its bytes form whole UTF-8 characters (no U+FFFD half-characters), and
    it is the difference of two decodes over the same start, so SentencePiece's leading-space
    handling and multi-byte pieces come out exactly as a decode of the whole sequence."""

    def __init__(self, tokenizer, context: list[int]):
        self.tok = tokenizer
        self.ids = list(context)
        self.prefix = 0  # start of the window that is decoded
        self.read = len(self.ids)  # ids[:read] are already printed

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._release(final=False)

    def flush(self) -> str:
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        before = self.tok.decode(self.ids[self.prefix : self.read])
        after = self.tok.decode(self.ids[self.prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]


@torch.no_grad()
def prefill(model, ids: list[int], device: torch.device, amp=nullcontext) -> tuple[torch.Tensor, object]:
    """Feed the prompt one segment at a time -> (logits of its last token (1, V), stream)."""
    stream = model.start_stream(1, device)
    tokens = torch.tensor(ids, dtype=torch.long, device=device)[None]  # (1, n)
    L = model.segment_len
    n_seg = -(-tokens.shape[1] // L)
    with console.progress(n_seg, "reading prompt", unit="seg") as bar:
        for s in range(n_seg):
            with amp():
                logits, stream = model.step(tokens[:, s * L : (s + 1) * L], stream)  # (1, n, V)
            bar.update(1)
    return logits[:, -1].float(), stream  # (1, V)


@torch.no_grad()
def continuation(model, stream, logits: torch.Tensor, max_new: int, opts: DecodingOptions,
                 generator: torch.Generator, eos_id: int | None, amp=nullcontext) -> Iterator[tuple[int, float]]:
    """Yield (token, log-prob under the model) for up to max_new tokens, stopping after EOS.

    logits (1, V) predict the first token; the stream is not modified (values, not buffers)."""
    for i in range(max_new):
        token = next_token(logits, opts, generator)  # (1,)
        logprob = float(torch.log_softmax(logits.float(), dim=-1)[0, token[0]])
        yield int(token[0]), logprob
        if int(token[0]) == eos_id or i == max_new - 1:
            return
        with amp():
            out, stream = model.step(token[:, None], stream)  # (1, 1, V)
        logits = out[:, -1].float()  # (1, V)


def stream_numel(stream) -> int:
    """Floats held by a generation stream: memory states, the current segment's cache and reads."""
    leaves: list[torch.Tensor] = []

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            leaves.append(x)
        elif isinstance(x, (tuple, list)):
            for y in x:
                walk(y)

    walk((stream.states, stream.past, stream.reads))
    return sum(t.numel() for t in leaves if t.is_floating_point())


def run_generate(ckpt: str, text: str, max_new_tokens: int, opts: DecodingOptions, seed: int,
                 num_samples: int, schedule: str | None, output: Path | None) -> list[dict]:
    """`elastic generate`: prints each sample to stdout as it is produced; returns the records
    (also written as JSONL to `output`)."""
    from elastic_cli.data.compat import model_tokenizer
    from elastic_cli.data.tokenizer import Tokenizer

    loaded = inference.load(ckpt, schedule)
    cfg, model, device = loaded.cfg, loaded.model, loaded.device
    tok_path, _ = model_tokenizer(cfg)
    if tok_path is None:
        raise DataError(f"cannot find the tokenizer of {loaded.ckpt}: its data.tokenizer "
                        f"({cfg.data.tokenizer}) is not a file here")
    tokenizer = Tokenizer.load(tok_path)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise DataError(f"tokenizer {tok_path} has {tokenizer.vocab_size} pieces, the model {cfg.model.vocab_size}")
    ids = [tokenizer.bos_id] + tokenizer.encode(text)
    amp = lambda: precision.autocast(device, cfg.train.dtype)  # noqa: E731
    t0 = time.perf_counter()
    logits, stream = prefill(model, ids, device, amp)
    console.info(f"read {len(ids)} prompt tokens in {time.perf_counter() - t0:.1f}s; "
                 f"stream state {stream_numel(stream)} floats")
    generator, records = make_generator(seed), []
    for i in range(num_samples):
        if num_samples > 1:
            console.info(f"--- sample {i + 1}/{num_samples}")
        decoder = IncrementalDecoder(tokenizer, ids[-CONTEXT_TOKENS:])
        tokens, t0 = [], time.perf_counter()
        for token, _ in continuation(model, stream, logits, max_new_tokens, opts, generator, tokenizer.eos_id, amp):
            tokens.append(token)
            if token != tokenizer.eos_id:
                console.out(decoder.push(token), end="")
        console.out(decoder.flush())
        seconds = time.perf_counter() - t0
        finish = "eos" if tokens and tokens[-1] == tokenizer.eos_id else "length"
        body = tokens[:-1] if finish == "eos" else tokens
        records.append({"sample": i, "seed": seed, "prompt_tokens": len(ids), "tokens": body,
                        "text": tokenizer.decode(body), "finish_reason": finish,
                        "tokens_per_s": len(tokens) / seconds if seconds > 0 else None})
        console.info(f"{len(tokens)} tokens, {len(tokens) / max(seconds, 1e-9):.1f} tokens/s ({finish})")
    if output is not None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        write_atomic(output, lines.encode("utf-8"))
    return records
