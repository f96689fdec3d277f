"""Which code a measurement was made with, for the records adamk-bench and adamk-tune write."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """$ADAMK_COMMIT if set (the GPU machine's copy of the tree has no usable git history), else
    git's short HEAD (+dirty when tracked files differ), else "unknown"."""
    if os.environ.get("ADAMK_COMMIT"):
        return os.environ["ADAMK_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
