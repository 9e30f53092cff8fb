"""All-or-nothing file writes: a reader never sees a half-written file, and a failed write leaves nothing behind.

Kept in `splatting` so the rasterizer package (its .ply writer) needs nothing outside itself; `dnnlib.atomic_file`
is this same function.
"""
from __future__ import annotations

import contextlib
import os
import secrets


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb", fsync: bool = False):
    """Write `path` all-or-nothing: a temp file in the same directory (permissions from the umask), then
    os.replace. On error the temp file is removed and `path` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(6)}-{os.path.basename(path)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
