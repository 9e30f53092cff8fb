"""Running `dataset_tool.py` in-process for the tests, and the check every bad-input test of it makes: one
`Error:` line, no traceback, and the output folder exactly as it was (nothing new, nothing changed)."""
import hashlib
import os
import re

from click.testing import CliRunner

import dataset_tool


def run(*args):
    return CliRunner().invoke(dataset_tool.cli, [str(a) for a in args])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def folder_state(folder) -> dict:
    """{relative path: SHA-256 of a file's bytes, None for a folder} of everything below `folder`."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def fails(folder, match, *args, only_line: bool = False) -> str:
    """Run dataset_tool with `args`: a non-zero exit through click (not an exception), the last output line
    'Error: ...' containing `match` and the only one starting with 'Error', no traceback, and `folder` unchanged.
    only_line: the error is the whole output (no progress bar before it). Returns the error line."""
    before = folder_state(folder)
    result = run(*args)
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in re.split(r"[\r\n]", result.output) if line.strip()]  # progress bars use \r
    assert lines and lines[-1].startswith("Error: ") and match in lines[-1], result.output
    assert sum(line.startswith("Error") for line in lines) == 1, result.output
    assert not only_line or len(lines) == 1, result.output
    assert folder_state(folder) == before
    return lines[-1]
