"""What `elastic generate` reads before it writes: --file documents (streamed in blocks) and stdin
into memory, then the --prompt text, checked before any model is loaded."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, NamedTuple

from elastic_cli import console
from elastic_cli.data import textio
from elastic_cli.data.tokenizer import FILE_SEP
from elastic_cli.errors import UsageError

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


