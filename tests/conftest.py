"""Fixtures shared by the whole suite. The three costly ones are made once per test run (session
scope) and shared read-only: a test that changes one works on a copy (shutil.copytree into its
tmp_path), and the session's end checks that no test changed them.

  tiny_corpus     the training tests' prepared corpus (tests/helpers/tiny_run.py)
  tiny_model      the tiny model as a run to evaluate, generate from, export: prepared code modules
                  and a randomly initialised checkpoint (tests/helpers/eval_run.py); tiny_model_of(kind)
                  for any memory kind
  trained_run     a run trained 2 steps on tiny_corpus through `elastic train`
"""
import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import eval_run, tiny_run

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _files(root: Path) -> dict[str, str]:
    """Every file under root (relative path) and its sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


class _Shared:
    """Folders shared by many tests: their files when made, compared at the end of the session."""

    def __init__(self):
        self.made: dict[Path, dict[str, str]] = {}

    def add(self, root: Path) -> None:
        self.made[root] = _files(root)

    def check(self) -> None:
        for root, before in self.made.items():
            after = _files(root)
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            assert not changed, f"a test changed the shared {root} (copy it before changing it): {changed[:10]}"


@pytest.fixture(scope="session")
def _shared():
    shared = _Shared()
    yield shared
    shared.check()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, _shared) -> Path:
    """tiny_run.documents() (14 small code files) prepared with the shipped code tokenizer: splits
    train and val (val_frac=0.2), test empty."""
    data = tiny_run.prepare(tmp_path_factory.mktemp("tiny-corpus"))
    _shared.add(data.parent)
    return data


@pytest.fixture(scope="session")
def tiny_model_of(tmp_path_factory, _shared):
    """kind -> the run directory of the tiny model with that memory kind, made on first use:
    RUN/../src (8 code modules), RUN/../data (prepared: val = mod0, mod6, mod7) and one randomly
    initialised checkpoint (eval_run.make_run)."""
    runs: dict[str, Path] = {}

    def of(kind: str = "elastic") -> Path:
        if kind not in runs:
            runs[kind] = eval_run.make_run(tmp_path_factory.mktemp(f"tiny-model-{kind}"), kind)
            _shared.add(runs[kind].parent)
        return runs[kind]

    return of


@pytest.fixture(scope="session")
def tiny_model(tiny_model_of) -> Path:
    """The tiny model with the recipe's memory kind (elastic): see tiny_model_of."""
    return tiny_model_of("elastic")


@pytest.fixture(scope="session")
def trained_run(tiny_corpus, tmp_path_factory, _shared) -> Path:
    """A run trained 2 steps on tiny_corpus through the CLI (run.device=cpu, validation every step):
    one complete checkpoint, step_00000002."""
    from elastic_cli.cli import main  # no capsys in a session fixture: main directly

    run = tmp_path_factory.mktemp("trained-run") / "run"
    argv = sys.argv
    sys.argv = ["elastic", "train", str(tiny_run.ROOT / "recipes" / "tiny.yaml"),
                *tiny_run.overrides(tiny_corpus, run, "train.steps=2", "train.eval_every=1")]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = argv
    assert e.value.code == 0
    _shared.add(run)
    return run


@pytest.fixture(scope="session")
def unseen_books(tmp_path_factory):
    """A folder of prose the shipped tokenizers never saw: the Python docs' topic texts
    (pydoc_data/topics.py, part of every CPython) and, where the system has them, license texts."""
    import shutil

    import pydoc_data.topics

    root = tmp_path_factory.mktemp("unseen") / "books"
    root.mkdir()
    shutil.copy(pydoc_data.topics.__file__, root / "python-topics.txt")
    for name in ("GPL-3", "Apache-2.0"):
        p = Path("/usr/share/common-licenses") / name
        if p.is_file():
            shutil.copy(p, root / f"{name}.txt")
    return root


@pytest.fixture(scope="session")
def kjv_books():
    """The shipped books haystack: three books of the King James Bible (haystack/kjv, public domain)."""
    return tiny_run.ROOT / "haystack" / "kjv"
