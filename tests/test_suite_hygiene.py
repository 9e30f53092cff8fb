"""The test suite's own set-up (tests/conftest.py, pyproject.toml): a private cache per test with a shared extension
build cache, and a per-test time limit that ends a hung test with or without pytest-timeout."""
import os
import subprocess
import sys
import time

import pytest

from .conftest import EXTENSIONS_SUBDIR, REPO_ROOT, SESSION_CACHE_DIR

_seen_caches = []


@pytest.mark.parametrize("run", [0, 1])
def test_each_test_gets_an_empty_private_cache(run):
    cache = os.environ["GSGAN_CACHE_DIR"]
    assert os.path.realpath(cache) != os.path.realpath(SESSION_CACHE_DIR)
    assert os.listdir(cache) == [EXTENSIONS_SUBDIR]  # nothing left by an earlier test
    with open(os.path.join(cache, "marker"), "w") as f:
        f.write(str(run))
    assert cache not in _seen_caches
    _seen_caches.append(cache)


def test_extension_build_cache_is_shared_with_the_session():
    from splatting.backends import cpu

    link = os.path.join(os.environ["GSGAN_CACHE_DIR"], EXTENSIONS_SUBDIR)
    assert os.path.islink(link)
    assert os.path.realpath(cpu._cache_root()) == os.path.realpath(os.path.join(SESSION_CACHE_DIR, EXTENSIONS_SUBDIR))


def test_a_time_limit_is_configured(pytestconfig):
    assert 60 <= float(pytestconfig.getini("timeout")) <= 900


HANGING_TEST = "import time\n\ndef test_hangs():\n    time.sleep(120)\n"


@pytest.mark.parametrize("plugin", ["pytest-timeout", "faulthandler fallback"])
def test_a_hanging_test_is_stopped(tmp_path, plugin):
    """A test sleeping 120 s under a 3 s limit ends the run within seconds and with a failing exit status."""
    hanging = tmp_path / "test_hanging_case.py"
    hanging.write_text(HANGING_TEST)
    # The case lives outside tests/, so the suite's conftest is loaded as a plugin.
    args = [sys.executable, "-m", "pytest", "-q", "-o", "timeout=3", "-p", "tests.conftest", "-p", "no:cacheprovider",
            "-c", os.path.join(REPO_ROOT, "pyproject.toml"), str(hanging)]
    if plugin != "pytest-timeout":
        args[3:3] = ["-p", "no:timeout"]
    else:
        pytest.importorskip("pytest_timeout")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    start = time.monotonic()
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=90, env=env)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert elapsed < 60, f"took {elapsed:.0f} s: {output}"
    assert "Timeout" in output and "test_hangs" in output, output
