"""What every benchmark records: the git commit, and results written as bench/results/<kind>-<timestamp>.json."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from dnnlib import atomic_file  # noqa: E402


def git_commit() -> str:
    """HEAD's commit, with "+dirty" when the work tree has uncommitted changes; "unknown" outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(kind: str, payload: dict, out_dir: str | None = None) -> str:
    """Write `payload` all-or-nothing to <out_dir>/<kind>-<timestamp>.json; returns the path."""
    out_dir = out_dir or os.path.join(REPO_ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{kind}-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    with atomic_file(path, "w") as handle:
        json.dump(payload, handle, indent=2)
    return path
