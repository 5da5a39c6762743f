"""The `elastic` group, its help and exit codes, and what the command modules share."""

from __future__ import annotations

import click

from elastic_cli import __version__, console

EXIT_CODES_HELP = """\b
Exit codes:
  0   ok
  1   unexpected error (a bug: please report the traceback)
  2   usage or config error
  3   bad data, tokenizer or incompatible checkpoint
  4   training diverged (NaN/inf loss); the last good checkpoint is kept
  75  preempted (SIGTERM/SIGUSR1) after writing a complete checkpoint
  130 interrupted (Ctrl-C)
"""


def help_without_command(ctx: click.Context) -> None:
    """A group called with no command prints its help (stdout, exit 0), as `git` and `tune` do."""
    if ctx.invoked_subcommand is None:
        console.out(ctx.get_help())


MAIN_HELP = """elastic: train and run language models with Elastic Memory on long documents.

\b
  elastic list recipes                                     what exists (also: kinds, tasks, corpora)
  elastic prepare --corpus python-stdlib --tokenizer tokenizers/code-8k.model --out data/stdlib
  elastic train recipes/tiny.yaml                          run directory: runs/tiny
  elastic eval runs/tiny                                   perplexity, bits per byte, loss by segment
  elastic generate runs/tiny --file book.txt --prompt "Who wrote the letter?"
"""


@click.group(epilog=EXIT_CODES_HELP, help=MAIN_HELP, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="elastic")
@click.pass_context
def cli(ctx: click.Context) -> None:
    help_without_command(ctx)
