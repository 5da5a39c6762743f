"""Atomic writes, replaces and deletes: an interrupt leaves the old or the new whole, never a part."""
from __future__ import annotations

import os
import stat

import pytest

from elastic_cli import atomic
from elastic_cli.atomic import remove_tree, replace_tree, write_atomic


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", b"{}")
        (tmp_path / "b.json").write_bytes(b"{}")
        os.umask(0o077)
        write_atomic(tmp_path / "c.json", b"{}")
    finally:
        os.umask(old)
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)  # noqa: E731
    assert mode("a.json") == mode("b.json") == 0o644 and mode("c.json") == 0o600


def tree(root, files: dict) -> None:
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)


def contents(root) -> dict:
    return {p.name: p.read_text() for p in sorted(root.iterdir())}


def test_replace_tree_swaps_whole_directories(tmp_path, monkeypatch):
    dest, new = tmp_path / "out", tmp_path / "out.tmp"
    tree(new, {"a": "1"})
    replace_tree(new, dest)  # no old one
    assert contents(dest) == {"a": "1"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    tree(new, {"a": "2", "b": "2"})
    replace_tree(new, dest)
    assert contents(dest) == {"a": "2", "b": "2"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    tree(new, {"c": "3"})
    real, calls = os.replace, []

    def killed_between(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed_between)
    with pytest.raises(KeyboardInterrupt):
        replace_tree(new, dest)
    assert contents(tmp_path / f"out.old-{os.getpid()}") == {"a": "2", "b": "2"}  # the old one, whole
    assert contents(new) == {"c": "3"} and not dest.exists()


def test_remove_tree_renames_aside_before_deleting(tmp_path, monkeypatch):
    victim = tmp_path / "step_1"
    tree(victim, {"COMPLETE": "", "optimizer.pt": "x"})
    rmtree = atomic.shutil.rmtree

    def killed_inside(path, *args, **kwargs):
        if os.path.isdir(path):
            os.unlink(sorted(os.scandir(path), key=lambda e: e.name)[0].path)
            raise KeyboardInterrupt
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", killed_inside)
    with pytest.raises(KeyboardInterrupt):
        remove_tree(victim)
    assert not victim.exists() and contents(tmp_path / "step_1.del") == {"optimizer.pt": "x"}
    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree)
    tree(victim, {"COMPLETE": ""})
    remove_tree(victim)  # clears the leftover too
    assert list(tmp_path.iterdir()) == []
