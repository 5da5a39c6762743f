"""The `elastic` command line. Each command parses its arguments, loads config and calls one function.

Only this module knows click. Errors raised as `ElasticError` become one line on stderr and the
documented exit code (see EXIT_CODES_HELP); anything else is a bug and exits 1 with a traceback.
"""

from __future__ import annotations

import sys

import click

from elastic_cli import __version__, console
from elastic_cli.errors import EXIT_INTERRUPTED, ElasticError, UsageError

EXIT_CODES_HELP = """\b
Exit codes:
  0   ok
  1   unexpected error (a bug: please report the traceback)
  2   usage or config error
  3   bad data, tokenizer or incompatible checkpoint
  75  preempted (SIGTERM/SIGUSR1) after writing a complete checkpoint
  130 interrupted (Ctrl-C)
"""


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="elastic")
def cli() -> None:
    """elastic: train and run language models with Elastic Memory on long documents."""


@cli.group()
def tokenizer() -> None:
    """Train and inspect SentencePiece tokenizers."""


@tokenizer.command("train")
@click.argument("sources", nargs=-1)
@click.option("--corpus", type=click.Choice(["python-stdlib"]), help="A built-in corpus (no download).")
@click.option("--vocab-size", type=int, required=True, help="Pieces in the model (8000 for the shipped ones).")
@click.option("--out", required=True, help="Path of the .model file to write.")
@click.option("--kind", type=click.Choice(["books", "code"]), default="books", show_default=True)
@click.option("--sample", type=int, default=1_000_000, show_default=True, help="Lines sampled (reservoir) for training.")
@click.option("--seed", type=int, default=0, show_default=True)
def tokenizer_train(sources, corpus, vocab_size, out, kind, sample, seed) -> None:
    """Train a tokenizer on a line sample of SOURCES (files, .gz, folders).

    \b
    Example: elastic tokenizer train ~/books --vocab-size 8000 --out tok/books-8k.model
    """
    from elastic_cli.data.tokenizer import train_from_sources

    tok, lines = train_from_sources(list(sources), vocab_size, out, kind, sample, seed, corpus)
    console.info(f"wrote {out}: {tok.vocab_size} pieces from {lines} sampled lines, sha256 {tok.sha256[:12]}")


@cli.command()
@click.argument("sources", nargs=-1)
@click.option("--tokenizer", "tokenizer_path", required=True, help="SentencePiece .model (see tokenizers/).")
@click.option("--out", required=True, help="Directory to write (built in DIR.tmp-<pid>, then renamed).")
@click.option("--repos", is_flag=True, help="Each subfolder of a source folder is a repository: one document.")
@click.option("--corpus", type=click.Choice(["python-stdlib"]), help="A built-in corpus (no download).")
@click.option("--min-tokens", type=int, default=1, show_default=True, help="Drop shorter documents.")
@click.option("--val-frac", type=float, default=0.05, show_default=True)
@click.option("--test-frac", type=float, default=0.05, show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "uint16", "uint32"]), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if --out holds other input.")
@click.option("--workers", type=int, default=None, help="Encoding processes (default: up to 2 cores).")
@click.option("--task", type=click.Choice(["passkey", "recall", "sorting"]), help="Generate a synthetic task instead.")
@click.option("--length", type=int, help="Task document length in tokens.")
@click.option("--count", type=int, help="Number of task documents.")
@click.option("--seed", type=int, default=0, show_default=True, help="Task generator seed.")
def prepare(sources, tokenizer_path, out, repos, corpus, min_tokens, val_frac, test_frac, dtype, force,
            workers, task, length, count, seed) -> None:
    """Tokenize SOURCES (text files, .gz, folders, repositories) into memmap shards in --out.

    \b
    Examples:
      elastic prepare --corpus python-stdlib --tokenizer tokenizers/code-8k.model --out data/stdlib
      elastic prepare ~/books --tokenizer tokenizers/books-8k.model --out data/books
      elastic prepare --task passkey --length 4096 --count 200 --tokenizer tokenizers/books-8k.model --out data/passkey
    """
    if task is not None:
        from elastic_cli.data.tasks import prepare_task

        if sources or corpus or repos:
            raise UsageError("--task takes no SOURCES, --corpus or --repos")
        if length is None or count is None:
            raise UsageError("--task needs --length and --count")
        prepare_task(task, length, count, tokenizer_path, out, seed, val_frac, test_frac, dtype, force)
        return
    if length is not None or count is not None:
        raise UsageError("--length and --count only apply with --task")
    from elastic_cli.data.prepare import prepare as run_prepare

    run_prepare(list(sources), tokenizer_path, out, repos, min_tokens, val_frac, test_frac, dtype, force,
                corpus, workers)


BENCH_HELP = """\b
Measure what memory costs, all variants in one process (interleaved, repeated; medians and spread):
train tokens/s of every memory kind vs `none`, peak memory at 4k vs 64k tokens of history, time per
generated token after 1k vs 64k tokens, Elastic Memory kernels vs a plain matmul, MFU on CUDA.
  elastic bench --recipe recipes/tiny.yaml --quick
  elastic bench --recipe recipes/tiny.yaml memory.order=32 memory.samples=32 --json bench.json"""


@cli.command("bench", epilog=EXIT_CODES_HELP, help=BENCH_HELP)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--recipe", default="recipes/tiny.yaml", show_default=True, help="Recipe giving the model size.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when available, else cpu.")
@click.option("--quick", is_flag=True, help="Few repeats and 1k vs 16k tokens of history: under a minute on a CPU.")
@click.option("--json", "json_path", metavar="PATH", help="Also write every measurement as JSON ('-': stdout only).")
def bench_command(overrides, recipe, device, quick, json_path) -> None:
    from elastic_cli import bench

    bench.run(recipe, list(overrides), device, quick, json_path)


def main() -> None:
    """Console entry point: maps ElasticError to its exit code without a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        console.error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except ElasticError as e:
        console.error(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
