"""Which code ran: the git commit of the checkout elastic_cli is imported from, and whether it had
uncommitted changes. One helper for run folders (`env.json`) and the results pages."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_version(paths: tuple[str, ...] = ("elastic_cli",)) -> dict:
    """{"commit": full SHA or None, "dirty": whether tracked files under `paths` differ from it, or None}.
    None when elastic_cli is installed without a checkout, or git is missing."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if sha.returncode:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
                                cwd=ROOT, capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
