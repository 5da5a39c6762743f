"""The `elastic` command line: click parses, builds a job's options and calls the job.

Only this package knows click. Commands are registered on the group of `app.py` by importing their
modules here (data.py, train.py, model.py, bench.py). A command imports its job when it runs (not at
the top of its module), so `elastic --help` and `elastic list` start in 0.2 s instead of the 2.9 s
that importing torch and every job takes. Errors raised as `ElasticError` become one line on stderr
and the documented exit code (app.EXIT_CODES_HELP); anything else is a bug and exits 1 with a traceback.
"""
from __future__ import annotations

import sys

import click

from elastic_cli import console
from elastic_cli.cli import bench, data, model, train  # noqa: F401  (each registers its commands)
from elastic_cli.cli.app import cli
from elastic_cli.errors import EXIT_INTERRUPTED, EXIT_USAGE, ElasticError


def main() -> None:
    """Console entry point: maps ElasticError to its exit code without a traceback. Commands that
    end with a code (a launched torchrun job's 75, 130, ...) return it through click; it is the exit code.
    A launched worker also leaves its code for the launcher (`distributed.record_exit`)."""
    from elastic_cli.allocator import keep_freed_memory

    keep_freed_memory()  # before the first large buffer: freed host memory is reused, not re-faulted
    code = _run()
    if code:
        from elastic_cli.train.distributed import record_exit

        record_exit(code)
    sys.exit(code)


def _run() -> int:
    try:
        code = cli.main(standalone_mode=False, prog_name="elastic")
    except click.exceptions.Abort:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    except click.UsageError as e:  # bad flag, missing argument: one line, like every other error
        hint = f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""
        console.error(" ".join(e.format_message().split()) + hint)
        return EXIT_USAGE
    except click.ClickException as e:
        console.error(" ".join(e.format_message().split()))
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except ElasticError as e:
        console.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else 0
