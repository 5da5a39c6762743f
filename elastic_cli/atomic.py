"""Atomic file writes and deletes: a file is either its old self or completely new, never half-written,
and a directory being deleted is never found part-deleted under its name."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from elastic_cli.errors import UsageError


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent if str(path.parent) else ".")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_tree(path: str | Path) -> None:
    """Delete a directory so that an interrupt part-way (Ctrl-C is a KeyboardInterrupt anywhere) never
    leaves a partial one under its name: renamed aside to NAME.del first (atomic), then deleted. A bare
    rmtree loses files in listing order: a checkpoint could keep COMPLETE beside a missing optimizer.pt.
    A leftover NAME.del (the interrupt came after the rename) is cleared by the next call for NAME."""
    path = Path(path)
    trash = path.with_name(path.name + ".del")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash)


def replace_tree(new: str | Path, dest: str | Path) -> None:
    """`dest` becomes the directory `new` by one rename; an existing `dest` is renamed aside to
    DEST.old-<pid> first and deleted last, so an interrupt leaves the old or the new one whole under
    DEST (or, between the two renames, the old one whole beside it), never a part of either."""
    new, dest = Path(new), Path(dest)
    old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | Path, flag: str) -> Path:
    """UsageError (exit 2) unless `path` can be created or replaced (checked before any work). Missing
    parent folders are fine when the nearest existing one is writable: `make_parents` creates them."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory")
    existing = next((p for p in path.parents if p.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")
    return path


def make_parents(path: Path) -> Path:
    """Create the parent folders of an output path (checked by `check_writable`); returns the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path)
