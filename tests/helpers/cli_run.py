"""`elastic ARGS` in the test process, as the console script runs it (a helper module, not tests)."""
import sys


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `elastic ARGS` run through `cli.main` in this process (fast)."""
    from elastic_cli.cli import main

    capsys.readouterr()
    argv, code = sys.argv, 0
    sys.argv = ["elastic", *map(str, args)]
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err
