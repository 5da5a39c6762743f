"""`elastic generate`: read a prompt (any length) into memory segment by segment, then stream tokens.

The prompt goes through `Decoder.step` one segment at a time: each full segment is folded into
memory and its KV cache dropped, so the stream state and the work per generated token are
bounded by the segment length and the memory size, whatever the prompt length.

Axis legend: B rows (1 here), n tokens in a chunk, V vocabulary.
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import torch

from elastic_cli import console, precision
from elastic_cli.runs import inference
from elastic_cli.data import textio
from elastic_cli.atomic import write_atomic
from elastic_cli.errors import UsageError
from elastic_cli.generate.decoding import DecodingOptions, draw, make_generator

CONTEXT_TOKENS = 4  # prompt tokens the incremental decoder starts from (keeps the first space)
BLOCK_BYTES = textio.BLOCK_BYTES  # a --file is read and encoded this much at a time


class PromptFile(NamedTuple):
    """A --file document, checked (decodable under the policy, not blank) but not read into memory:
    `prompt_texts` streams it."""

    path: Path
    policy: textio.Policy = textio.Policy()


class Prompt(NamedTuple):
    """What generation reads before it writes: the documents (files or stdin text, in order) into
    memory, then the --prompt text after them."""

    documents: tuple[str | PromptFile, ...] = ()
    text: str | None = None


def read_prompt(prompt: str | None, files: list[str] | tuple[str, ...] | str | None = (),
                policy: textio.Policy = textio.Policy()) -> Prompt:
    """The prompt from --prompt TEXT and/or --file PATH (repeatable; '-' is stdin, read whole; files
    are checked here and streamed later). Nothing given, or empty -> UsageError (2); a directory or
    unreadable -> UsageError (2); undecodable bytes -> replaced and reported, or under --strict a
    DataError (3)."""
    files = [files] if isinstance(files, str) else list(files or ())
    if prompt is None and not files:
        raise UsageError("give --prompt TEXT, --file PATH or - (stdin), or --file PATH --prompt TEXT to ask "
                         "about a document")
    if files.count("-") > 1:
        raise UsageError("stdin (-) can be read once")
    documents = tuple(_stdin(policy) if f == "-" else _check_file(Path(f), policy) for f in files)
    if prompt is not None and not prompt.strip():
        raise UsageError("--prompt: the prompt is empty")
    return Prompt(documents, prompt)


def _stdin(policy: textio.Policy) -> str:
    text, replaced = textio.decode(sys.stdin.buffer.read(), "stdin", policy)
    if replaced:
        console.warn(textio.replaced_note("stdin", replaced, policy))
    if not text.strip():
        raise UsageError("stdin: the prompt is empty")
    return text


def _check_file(path: Path, policy: textio.Policy) -> PromptFile:
    """Read the file once in blocks (constant memory): it must be a non-blank text file."""
    if path.is_dir():
        raise UsageError(f"--file {path}: is a directory; give a text file")
    if not path.exists():
        raise UsageError(f"--file {path}: no such file")
    found = textio.scan(path, policy)
    if found.replaced:
        console.warn(textio.replaced_note(str(path), found.replaced, policy))
    if found.blank:
        raise UsageError(f"{path}: the prompt is empty")
    return PromptFile(path, policy)


def prompt_texts(prompt: Prompt | str | PromptFile) -> Iterator[str]:
    """The prompt as text pieces that end at a newline (the tokenizers never merge across one, so
    encoding the pieces equals encoding the whole); a file is read BLOCK_BYTES at a time.

    One document is read as it is. Several are laid out as `elastic prepare --repos` lays out a
    repository's files: each after `<|file|>NAME` and a newline. The --prompt text comes last, on
    a line of its own (a newline is added when the documents do not end with one)."""
    if not isinstance(prompt, Prompt):
        prompt = Prompt((prompt,))
    from elastic_cli.data.tokenizer import FILE_SEP

    last = "\n"
    for doc in prompt.documents:
        if len(prompt.documents) > 1:
            yield f"{FILE_SEP}{doc.path.name if isinstance(doc, PromptFile) else 'stdin'}\n"
        for piece in _document_pieces(doc):
            last = piece[-1]
            yield piece
    if prompt.text is not None:
        if last != "\n":
            yield "\n"
        yield prompt.text


def _document_pieces(doc: str | PromptFile) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
        return
    rest = ""
    for block in textio.read_blocks(doc.path, doc.policy):
        text = rest + block
        cut = text.rfind("\n") + 1
        if cut:
            yield text[:cut]
        rest = text[cut:]
    if rest:
        yield rest


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
    logits, stream, _, _ = prefill_chunks(model, [ids], device, amp)
    return logits, stream


@torch.no_grad()
def prefill_chunks(model, chunks: Iterable[list[int]], device: torch.device, amp=nullcontext):
    """Feed token chunks of any size one segment at a time (at most one segment of them held) ->
    (logits of the last token (1, V), stream, number of tokens, the last CONTEXT_TOKENS ids)."""
    stream, L = model.start_stream(1, device), model.segment_len
    pending, n, tail, logits = [], 0, [], None
    with console.progress(None, "reading prompt", unit="seg") as bar:
        for chunk in chunks:
            pending, n, tail = pending + list(chunk), n + len(chunk), (tail + list(chunk))[-CONTEXT_TOKENS:]
            i = 0
            while len(pending) - i > L:  # keep the last (partial or full) segment for the final call
                logits, stream = _feed(model, pending[i:i + L], stream, device, amp)
                i += L
                bar.update(1)
            pending = pending[i:]
        if pending:
            logits, stream = _feed(model, pending, stream, device, amp)
            bar.update(1)
    return logits[:, -1].float(), stream, n, tail  # (1, V)


def _feed(model, ids: list[int], stream, device, amp):
    with amp():
        return model.step(torch.tensor(ids, dtype=torch.long, device=device)[None], stream)  # (1, n, V)


@torch.no_grad()
def continuation(model, stream, logits: torch.Tensor, max_new: int, opts: DecodingOptions,
                 generator: torch.Generator, eos_id: int | None, amp=nullcontext) -> Iterator[tuple[int, float]]:
    """Yield (token, log-prob under the model) for up to max_new tokens, stopping after EOS.

    logits (1, V) predict the first token; the stream is not modified (it is forked: a stream's caches
    are written in place, and --num-samples starts every sample from the same prompt)."""
    stream = stream.fork()
    for i in range(max_new):
        (token,), (logprob,) = draw(logits, opts, generator)  # the one host sync of a generated token
        yield token, logprob
        if token == eos_id or i == max_new - 1:
            return
        with amp():
            out, stream = model.step(torch.tensor([[token]], device=logits.device), stream)  # (1, 1, V)
        logits = out[:, -1]  # (1, V)


@torch.no_grad()
def samples(model, stream, logits: torch.Tensor, rows: int, max_new: int, opts: DecodingOptions,
            generator: torch.Generator, eos_id: int | None, amp=nullcontext) -> list[list[int]]:
    """`rows` continuations of one stream decoded as ONE batch (--num-samples): the prompt's stream
    repeated row-wise, one forward per step for all samples, one host transfer per step (`draw`). A
    row stops collecting at its EOS (kept as its last token); the batch stops when every row has,
    or after max_new tokens. logits (1, V) predict the first token; the stream is not modified."""
    stream, logits = stream.repeat(rows), logits.expand(rows, -1)  # (R, V)
    out, done = [[] for _ in range(rows)], [False] * rows
    for i in range(max_new):
        ids, _ = draw(logits, opts, generator)  # (R,) the step's one host sync
        for r, token in enumerate(ids):
            if not done[r]:
                out[r].append(token)
                done[r] = token == eos_id
        if all(done) or i == max_new - 1:
            return out
        with amp():
            step, stream = model.step(torch.tensor(ids, device=logits.device)[:, None], stream)  # (R, 1, V)
        logits = step[:, -1]  # (R, V)
    return out


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


def run_generate(ckpt: str, text: Prompt | str | PromptFile, max_new_tokens: int, opts: DecodingOptions, seed: int,
                 num_samples: int, schedule: str | None, output: Path | None,
                 settings: inference.Settings = inference.Settings()) -> list[dict]:
    """`elastic generate`: prints each sample to stdout as it is produced; returns the records
    (also written as JSONL to `output`)."""
    loaded = inference.load(ckpt, settings, schedule)
    cfg, model, device = loaded.cfg, loaded.model, loaded.device
    tokenizer = inference.load_tokenizer(loaded.ckpt, cfg, settings.tokenizer)
    chunks = itertools.chain([[tokenizer.bos_id]], (tokenizer.encode(t) for t in prompt_texts(text)))
    amp = lambda: precision.autocast(device, cfg.train.dtype)  # noqa: E731
    t0 = time.perf_counter()
    logits, stream, n_prompt, context = prefill_chunks(model, chunks, device, amp)
    console.info(f"read {n_prompt} prompt tokens in {time.perf_counter() - t0:.1f}s; "
                 f"stream state {stream_numel(stream)} floats")
    generator, records = make_generator(seed), []
    batch = None
    if num_samples > 1:  # decoded together, printed one after the other
        t0 = time.perf_counter()
        batch = samples(model, stream, logits, num_samples, max_new_tokens, opts, generator, tokenizer.eos_id, amp)
        batch_seconds = time.perf_counter() - t0
    for i in range(num_samples):
        if num_samples > 1:
            console.info(f"--- sample {i + 1}/{num_samples}")
        decoder = IncrementalDecoder(tokenizer, context)
        tokens, t0 = [], time.perf_counter()
        drawn = batch[i] if batch is not None else (token for token, _ in continuation(
            model, stream, logits, max_new_tokens, opts, generator, tokenizer.eos_id, amp))
        for token in drawn:
            tokens.append(token)
            if token != tokenizer.eos_id:
                console.out(decoder.push(token), end="")
        console.out(decoder.flush())
        seconds = batch_seconds if batch is not None else time.perf_counter() - t0
        finish = "eos" if tokens and tokens[-1] == tokenizer.eos_id else "length"
        body = tokens[:-1] if finish == "eos" else tokens
        records.append({"sample": i, "seed": seed, "prompt_tokens": n_prompt, "tokens": body,
                        "text": tokenizer.decode(body), "finish_reason": finish,
                        "tokens_per_s": len(tokens) / seconds if seconds > 0 else None})
        console.info(f"{len(tokens)} tokens, {len(tokens) / max(seconds, 1e-9):.1f} tokens/s ({finish})")
    if output is not None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        write_atomic(inference.make_parents(output), lines.encode("utf-8"))
    return records
