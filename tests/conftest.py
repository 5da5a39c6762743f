import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def unseen_books(tmp_path_factory):
    """A folder of prose the shipped tokenizers never saw: the Python docs' topic texts
    (pydoc_data/topics.py, part of every CPython) and, where the system has them, license texts."""
    import shutil
    from pathlib import Path

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
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "haystack" / "kjv"
