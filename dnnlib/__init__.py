"""Small shared helpers: EasyDict, all-or-nothing file writes, a cache directory, cached file/URL opening and
logging to console + log.txt.

Logging uses the standard `logging` module (logger "gsgan"); sys.stdout is never replaced, so several runs in one
process (tests) do not leak output into each other's log files.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import urllib.parse
import urllib.request


def __getattr__(name: str):
    """atomic_file and cache_dir: one implementation each, in the standalone rasterizer package (which must not
    import dnnlib), re-exported here lazily, so importing dnnlib does not import splatting (and torch): a benchmark
    can still choose which checkout's splatting it measures after importing dnnlib."""
    if name == "atomic_file":
        from splatting.atomic import atomic_file
        return atomic_file
    if name == "cache_dir":
        from splatting.cache import cache_dir
        return cache_dir
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


LOGGER_NAME = "gsgan"
_HANDLER_TAG = "_gsgan_handler"


class EasyDict(dict):
    """dict with attribute access, for small ad-hoc records (configs use typed dataclasses instead)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


def is_url(path_or_url: str) -> bool:
    return urllib.parse.urlparse(str(path_or_url)).scheme in ("http", "https")


def cached_file(path_or_url: str, subdir: str = "downloads", timeout: float = 60.0) -> str:
    """Local path of a file or URL. URLs are downloaded once into the cache (temp file, then os.replace)."""
    if not is_url(path_or_url):
        path = os.path.expanduser(str(path_or_url))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        return path
    digest = hashlib.sha1(path_or_url.encode("utf-8")).hexdigest()[:16]
    name = os.path.basename(urllib.parse.urlparse(path_or_url).path) or "file"
    from splatting.atomic import atomic_file
    from splatting.cache import cache_dir

    target = os.path.join(cache_dir(subdir), f"{digest}_{name}")
    if os.path.isfile(target):
        return target
    with atomic_file(target) as out, urllib.request.urlopen(path_or_url, timeout=timeout) as response:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    return target


def open_url(path_or_url: str, subdir: str = "downloads") -> io.BufferedReader:
    """Binary file object for a local path or an http(s) URL (cached)."""
    return open(cached_file(path_or_url, subdir=subdir), "rb")


def make_run_dir(outdir: str, desc: str) -> str:
    """outdir/NNNNN-desc with the next free id. os.mkdir is atomic, so concurrent launches never share (or
    overwrite) a directory: a lost race just retries with the next id."""
    os.makedirs(outdir, exist_ok=True)
    while True:
        ids = [int(name.split("-", 1)[0]) for name in os.listdir(outdir) if name.split("-", 1)[0].isdigit()]
        path = os.path.join(outdir, f"{max(ids, default=-1) + 1:05d}-{desc}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(run_dir: str | None = None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Logger "gsgan": rank 0 logs to the console and, when given a run directory, to run_dir/log.txt.

    Other ranks only log warnings and errors to the console. Calling it again replaces the handlers it added
    before (so consecutive runs in one process each get their own log.txt).
    """
    logger = get_logger()
    close_logging()
    logger.setLevel(level)
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(level if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    setattr(console, _HANDLER_TAG, True)
    logger.addHandler(console)
    if run_dir is not None and rank == 0:
        file_handler = logging.FileHandler(os.path.join(run_dir, "log.txt"), mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        setattr(file_handler, _HANDLER_TAG, True)
        logger.addHandler(file_handler)
    return logger


def close_logging() -> None:
    """Remove (and close) the handlers setup_logging added."""
    logger = get_logger()
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_TAG, False):
            logger.removeHandler(handler)
            handler.close()
