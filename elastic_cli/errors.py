"""Errors a user can fix, each with the exit code documented in `elastic --help` and README.md ("Exit codes").

Raise these anywhere outside model/ and memory/; `cli.main` turns them into one line on stderr
and the exit code, with no traceback.
"""

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_DIVERGED = 4
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130


class ElasticError(Exception):
    """Base class: a message for the user and the process exit code."""

    exit_code = EXIT_UNEXPECTED


class UsageError(ElasticError):
    """Bad command line or config (exit 2)."""

    exit_code = EXIT_USAGE


class DataError(ElasticError):
    """Bad or incompatible input: data, tokenizer, checkpoint (exit 3)."""

    exit_code = EXIT_DATA


class Preempted(ElasticError):
    """Stopped by SIGTERM/SIGUSR1 after writing a complete checkpoint (exit 75)."""

    exit_code = EXIT_PREEMPTED


class Diverged(ElasticError):
    """The loss or gradient became NaN/inf; the update was not applied, nothing was saved (exit 4)."""

    exit_code = EXIT_DIVERGED
