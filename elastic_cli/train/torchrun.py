"""`python -m elastic_cli.train.torchrun ARGS`: torchrun (same arguments), quiet when workers fail.

The workers already printed their one-line `error: ...` (and wrote their exit code for the
launcher, see `distributed.launch`), so torchrun's own report of a failed child (a traceback and
an error table per rank) is noise: this entry point exits 1 without it. A signal that stops torchrun
exits 128 + the signal number, after torchrun has relayed it to the workers and waited for them.
"""
from __future__ import annotations

import logging
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # "failed (exitcode: 3)" per rank
    try:
        run(args)
    except ChildFailedError:
        return 1
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
