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
