"""Test-only: serve tests/standin/data_loader.py as elastic_cli.data.loader while the real module
is missing (also in subprocesses and torchrun workers, which inherit PYTHONPATH)."""
import importlib.abc
import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).parent


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "elastic_cli.data.loader":
            return None
        for entry in path or []:
            if (Path(entry) / "loader.py").is_file():
                return None
        return importlib.util.spec_from_file_location(name, _HERE / "data_loader.py")


sys.meta_path.append(_Finder())
