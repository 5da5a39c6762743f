"""Imported at start-up by every Python process of a test that puts this folder on PYTHONPATH.

In a torchrun worker (RANK set) with ELASTIC_TEST_FAULT=usage|data|bug, `train.train_step` raises
the matching error at the first step: how the launcher's exit-code mapping is tested end to end.
"""
import os

_FAULT = os.environ.get("ELASTIC_TEST_FAULT")

if _FAULT and "RANK" in os.environ:
    from elastic_cli.train import loop as _train
    from elastic_cli.errors import DataError, UsageError

    def _failing_step(*args, **kwargs):
        if _FAULT == "usage":
            raise UsageError("injected usage error")
        if _FAULT == "data":
            raise DataError("injected data error")
        raise RuntimeError("injected bug")

    _train.train_step = _failing_step
