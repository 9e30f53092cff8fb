"""Where gsgan keeps its on-disk caches: $GSGAN_CACHE_DIR, else ~/.cache/gsgan.

The one resolver for the whole project. It lives in `splatting` (not `dnnlib`) because the rasterizer package must
stay importable on its own and its CPU backend needs the cache for its build folder; `dnnlib.cache_dir` and the
metrics code call this module.
"""
from __future__ import annotations

import os

ENV_VAR = "GSGAN_CACHE_DIR"


def cache_root() -> str:
    """$GSGAN_CACHE_DIR when set and non-empty, else ~/.cache/gsgan; read on every call (tests change it) and
    never created here."""
    return os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "gsgan")


def cache_dir(*subdirs: str) -> str:
    """cache_root() joined with `subdirs`; created on demand."""
    path = os.path.join(cache_root(), *subdirs)
    os.makedirs(path, exist_ok=True)
    return path
