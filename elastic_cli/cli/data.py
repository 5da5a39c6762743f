"""`elastic tokenizer`, `elastic prepare` and `elastic list`: commands on data and on what exists."""
from __future__ import annotations

import click

from elastic_cli import console
from elastic_cli.cli.app import cli, help_without_command
from elastic_cli.errors import UsageError


@cli.group(invoke_without_command=True)
@click.pass_context
def tokenizer(ctx: click.Context) -> None:
    """Train and inspect SentencePiece tokenizers."""
    help_without_command(ctx)


@tokenizer.command("train")
@click.argument("sources", nargs=-1)
@click.option("--corpus", type=click.Choice(["python-stdlib"]), help="A built-in corpus (no download).")
@click.option("--vocab-size", type=int, required=True, help="Pieces in the model (8000 for the shipped ones).")
@click.option("--out", required=True, help="Path of the .model file to write.")
@click.option("--kind", type=click.Choice(["books", "code"]), default="books", show_default=True)
@click.option("--sample", type=int, default=1_000_000, show_default=True, help="Lines sampled (reservoir) for training.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def tokenizer_train(sources, corpus, vocab_size, out, kind, sample, seed, force) -> None:
    """Train a tokenizer on a line sample of SOURCES (files, .gz, folders).

    \b
    Example: elastic tokenizer train ~/books --vocab-size 8000 --out my-tokenizers/books-8k.model
    """
    from elastic_cli.data.tokenizer_train import TokenizerOptions, train_from_sources

    tok, lines = train_from_sources(list(sources), vocab_size, out, TokenizerOptions(kind, sample, seed, corpus, force))
    console.info(f"wrote {out}: {tok.vocab_size} pieces from {lines} sampled lines, sha256 {tok.sha256[:12]}")


@cli.command()
@click.argument("sources", nargs=-1)
@click.option("--tokenizer", "tokenizer_path", help="SentencePiece .model (see tokenizers/); with --merge, "
              "the one the parts recorded by default.")
@click.option("--out", required=True, help="Directory to write (built in DIR.tmp-<pid>, then renamed).")
@click.option("--repos", is_flag=True, help="Each subfolder of a source folder is a repository: one document.")
@click.option("--corpus", type=click.Choice(["python-stdlib"]), help="A built-in corpus (no download).")
@click.option("--min-tokens", type=int, default=1, show_default=True, help="Drop shorter documents.")
@click.option("--val-frac", type=float, default=0.05, show_default=True)
@click.option("--test-frac", type=float, default=0.05, show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "uint16", "uint32"]), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if --out holds other input.")
@click.option("--encoding", default="utf-8", show_default=True, metavar="NAME",
              help="Encoding of the source files (a byte-order mark wins); undecodable bytes become U+FFFD, counted "
                   "per file.")
@click.option("--strict", is_flag=True, help="Refuse a file with undecodable bytes (exit 3) instead of replacing them.")
@click.option("--workers", type=int, default=None, help="Encoding processes (default: up to 2 cores); the blocks "
              "of one large document are shared between them.")
@click.option("--shard", callback=lambda c, p, v: _shard(v), metavar="I/N", help="Prepare only part I of N "
              "(0 <= I < N) of the sources' documents, for --merge; one part per machine.")
@click.option("--merge", is_flag=True, help="SOURCES are the N part directories of a --shard I/N run: join them "
              "into --out, as one process would have prepared it.")
@click.option("--task", type=click.Choice(["passkey", "recall", "sorting", "mqar", "babilong", "niah-multikey",
                                           "niah-multivalue"]), help="Generate a synthetic task instead.")
@click.option("--length", callback=lambda c, p, v: _lengths(v), help="Task document length in tokens; "
              "A,B,.. = documents take the lengths in turn (one directory for a heatmap).")
@click.option("--count", type=int, help="Number of task documents.")
@click.option("--seed", type=int, default=0, show_default=True, help="Task generator seed.")
@click.option("--pairs", type=int, help="mqar: key-value pairs per document [8].")
@click.option("--queries", type=int, help="mqar: pairs asked again later, each an answer span [all pairs].")
@click.option("--distance", "distance", callback=lambda c, p, v: _range(v), help="mqar: segments between a fact "
              "and its query, A:B [0:any]; 0:0 = same segment (the control), 2:7 = only memory can answer.")
@click.option("--segment-len", type=int, help="mqar: the segment length distances are counted in [64].")
@click.option("--keys", type=int, help="mqar: key words to draw from [64].")
@click.option("--values", type=int, help="mqar: value words to draw from [64]; chance is 1/VALUES.")
@click.option("--noise", type=int, help="mqar: noise words between facts and queries [256]; 1 = one filler word.")
@click.option("--haystack", multiple=True, metavar="SOURCE", help="babilong, niah-*, passkey: real text to hide "
              "the facts in (books: text files, folders, .gz, a prepared directory); repeatable.")
@click.option("--depth", help="Haystack tasks: where the facts sit, as fractions of the text: A:B drawn per fact "
              "[0:1], or a,b,.. a grid the documents take in turn (after the lengths).")
@click.option("--qa", type=click.IntRange(1, 5), help="babilong: bAbI task qa1-qa5 [1].")
@click.option("--needles", type=click.IntRange(min=1), help="niah-multikey/-multivalue: keys or values [4].")
def prepare(sources, tokenizer_path, out, repos, corpus, min_tokens, val_frac, test_frac, dtype, force,
            encoding, strict, workers, shard, merge, task, length, count, seed, pairs, queries, distance, segment_len, keys, values,
            noise, haystack, depth, qa, needles) -> None:
    """Tokenize SOURCES (text files, .gz, folders, repositories) into memmap shards in --out
    (elastic list corpora and elastic list tasks show the built-in ones).

    \b
    Examples:
      elastic prepare --corpus python-stdlib --tokenizer tokenizers/code-8k.model --out data/stdlib
      elastic prepare ~/books --tokenizer tokenizers/books-8k.model --out data/books
      elastic prepare --task passkey --length 4096 --count 200 --tokenizer tokenizers/books-8k.model --out data/passkey
      elastic prepare --task mqar --length 512 --count 4000 --pairs 8 --distance 2:7 --segment-len 64 \\
          --tokenizer tokenizers/code-8k.model --out data/mqar-far
      elastic prepare ~/books --tokenizer tokenizers/books-8k.model --shard 0/3 --out data/books-part0  (1/3, 2/3 alike)
      elastic prepare --merge data/books-part0 data/books-part1 data/books-part2 --out data/books
      elastic prepare --task babilong --qa 1 --haystack ~/books --length 1024,4096 --depth 0,0.5,1 \\
          --count 300 --tokenizer tokenizers/books-8k.model --out data/babilong-qa1
    """
    if merge:
        if task or corpus or repos or shard or length is not None or count is not None:
            raise UsageError("--merge takes only PART_DIRS, --out, --tokenizer and --force")
        from elastic_cli.data.merge import merge as run_merge

        run_merge(list(sources), out, tokenizer_path, force)
        return
    if tokenizer_path is None:
        raise UsageError("prepare needs --tokenizer")
    task_options = {"pairs": pairs, "queries": queries, "distance": distance, "segment_len": segment_len,
                    "keys": keys, "values": values, "noise": noise, "haystack": haystack, "depth": depth,
                    "qa": qa, "needles": needles}
    if task is not None:
        from elastic_cli.data.tasks import TaskOptions, prepare_task

        if sources or corpus or repos or shard:
            raise UsageError("--task takes no SOURCES, --corpus, --repos or --shard")
        if length is None or count is None:
            raise UsageError("--task needs --length and --count")
        prepare_task(task, length, count, tokenizer_path, out,
                     TaskOptions(seed, val_frac, test_frac, dtype, force, task_options))
        return
    if length is not None or count is not None or any(v not in (None, ()) for v in task_options.values()):
        raise UsageError("--length, --count and the task options only apply with --task")
    from elastic_cli.data import textio
    from elastic_cli.data.prepare import PrepareOptions, prepare as run_prepare

    policy = textio.Policy(textio.check_encoding(encoding), strict)
    run_prepare(list(sources), tokenizer_path, out, PrepareOptions(repos, min_tokens, val_frac, test_frac, dtype, force,
                                                                   corpus, workers, shard, policy))


LIST_HELP = """List what exists: recipes (and memory overlays), memory kinds with their options,
synthetic tasks (elastic prepare --task) and built-in corpora (elastic prepare --corpus).

\b
Examples:
  elastic list kinds
  elastic list recipes
"""


@cli.command("list", help=LIST_HELP)
@click.argument("what", type=click.Choice(["recipes", "kinds", "tasks", "corpora"]))
def list_command(what) -> None:
    from elastic_cli.cli import catalog

    entries = {"recipes": catalog.recipes, "kinds": catalog.kinds, "tasks": catalog.tasks,
               "corpora": catalog.corpora}[what]()
    if what == "recipes" and not entries:
        console.info("no recipes/ folder here or beside the package")
    for e in entries:
        console.out(f"{e.name:<12} {e.line}" if what != "recipes" else f"{e.name}  {e.line}")
        for line in e.details:
            console.out(f"    {line}")
    if what == "kinds":
        console.out(f"({catalog.COMMON_OPTIONS}; elastic config show R.yaml memory.kind=KIND shows them in place)")


def _shard(value: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N) with 0 <= I < N."""
    if value is None:
        return None
    i, _, n = value.partition("/")
    try:
        shard = int(i), int(n)
    except ValueError:
        shard = None
    if shard is None or not 0 <= shard[0] < shard[1]:
        raise UsageError(f"--shard takes I/N with 0 <= I < N (e.g. 0/3), got {value!r}")
    return shard


def _lengths(value: str | None) -> int | list[int] | None:
    """'N' -> N; 'A,B,..' -> [A, B, ..] (whole numbers of tokens)."""
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",")]
    except ValueError:
        raise UsageError(f"--length takes tokens as N or A,B,.. (e.g. 1024,4096), got {value!r}") from None
    return out[0] if len(out) == 1 else out


def _range(value: str | None) -> tuple[int, int] | None:
    """'A:B' (or 'A') -> (A, B) whole numbers."""
    if value is None:
        return None
    lo, _, hi = value.partition(":")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise UsageError(f"--distance takes A:B in whole segments (e.g. 2:7), got {value!r}") from None


