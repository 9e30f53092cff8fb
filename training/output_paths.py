"""Output folders of the media and dataset CLIs, checked before any work and created only when writing starts.

A folder path is refused up front, with one line naming the option, when writing there cannot work: a file (or a
dangling link) where a folder should be, a folder we may not write into, or a `..` after a folder that does not
exist yet (the operating system resolves `missing/..` by looking `missing` up, so such a path fails at the very
end, after all the work). Folders are created as late as possible and removed again, if still empty, when the
command fails, so a failed run leaves no stub folder behind.
"""
from __future__ import annotations

import os
import tempfile


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the option and the path."""


def _components(path: str) -> list[str]:
    """Cumulative prefixes of `path` as the OS walks it: 'a/b/../c' -> ['a', 'a/b', 'a/b/..', 'a/b/../c']."""
    drive_root = os.sep if path.startswith(os.sep) else ""
    parts = [part for part in path.split(os.sep) if part not in ("", ".")]
    prefixes, current = [], drive_root
    for part in parts:
        current = os.path.join(current, part) if current else part
        prefixes.append(current)
    return prefixes


def check_output_dir(path: str, option: str) -> None:
    """OutputPathError unless `path` is, or can be created as, a folder we can write into. Creates nothing."""
    path = os.fspath(path)
    existing = os.sep if path.startswith(os.sep) else "."
    prefixes = _components(path)
    for index, prefix in enumerate(prefixes):
        if os.path.isdir(prefix):
            existing = prefix
            continue
        if os.path.lexists(prefix):
            what = "a dangling symbolic link" if os.path.islink(prefix) else "a file"
            raise OutputPathError(f"{option}: {prefix} is {what}, not a folder (in {path})")
        if any(os.path.basename(later) == os.pardir for later in prefixes[index + 1:]):
            raise OutputPathError(f"{option}: {prefix} does not exist, so the '..' after it in {path} cannot be "
                                  f"resolved; write the path without it")
        break
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OutputPathError(f"{option}: cannot write into {existing} ({error.strerror or error})") from None


def check_output_file(path: str, option: str) -> None:
    """OutputPathError unless a file can be written at `path` (its folder as in check_output_dir)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputPathError(f"{option}: {path} is a folder, expected a file path")
    check_output_dir(os.path.dirname(path) or ".", option)


def make_output_dir(path: str) -> list[str]:
    """Create `path` and any missing parents; returns the folders created (outermost first) for remove_empty."""
    created = []
    for prefix in _components(os.fspath(path)):
        if not os.path.isdir(prefix):
            os.mkdir(prefix)
            created.append(prefix)
    return created


def remove_empty(created: list[str]) -> None:
    """Remove the folders make_output_dir created, innermost first, as long as they are empty."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except OSError:
            return
