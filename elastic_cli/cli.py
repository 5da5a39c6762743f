"""The `elastic` command line. Each command parses its arguments, loads config and calls one function.

Only this module knows click. Errors raised as `ElasticError` become one line on stderr and the
documented exit code (see EXIT_CODES_HELP); anything else is a bug and exits 1 with a traceback.
"""

from __future__ import annotations

import sys

import click

from elastic_cli import __version__, console
from elastic_cli.errors import EXIT_INTERRUPTED, ElasticError

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
