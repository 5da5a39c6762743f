"""Imported at start-up by every Python process of a test that puts this folder on PYTHONPATH.

In rank 0 of a launched job (RANK=0) with ELASTIC_TEST_SIGTERM_AT=N, the N-th optimizer step
sends SIGTERM to the `elastic train` launcher (the parent of torchrun, this worker's parent), as
SLURM would, and finishes only once this worker has received the SIGTERM the launcher relays
through torchrun: the job is stopped by a signal at step N exactly (test_fsdp.py).
"""
import os

_AT = int(os.environ.get("ELASTIC_TEST_SIGTERM_AT", "0"))

if _AT and os.environ.get("RANK") == "0":
    import signal
    import time

    from elastic_cli.train import loop as _loop

    _step, _calls = _loop.train_step, [0]

    def _launcher_pid() -> int:
        with open(f"/proc/{os.getppid()}/stat") as f:  # torchrun's parent
            return int(f.read().rsplit(")", 1)[1].split()[1])

    def _step_then_stop(*args, **kwargs):
        _calls[0] += 1
        if _calls[0] == _AT:
            os.kill(_launcher_pid(), signal.SIGTERM)
            flag = signal.getsignal(signal.SIGTERM).__self__  # the loop's _StopFlag
            deadline = time.monotonic() + 60
            while not flag.raised and time.monotonic() < deadline:
                time.sleep(0.01)
        return _step(*args, **kwargs)

    _loop.train_step = _step_then_stop
