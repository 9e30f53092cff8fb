"""Shared pytest set-up: repository root on sys.path, deterministic seeds, a fresh cache directory per test (the
compiled CPU rasterizer's build cache stays shared), and a per-test time limit."""
import faulthandler
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# The cache the session started with ($GSGAN_CACHE_DIR, else the default), read before any test changes it. Only its
# torch_extensions/ folder is used by the tests: building the C++ extension takes a minute, so every per-test cache
# links to this one build cache instead of rebuilding.
SESSION_CACHE_DIR = os.environ.get("GSGAN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gsgan")
EXTENSIONS_SUBDIR = "torch_extensions"

# Per-test limit in seconds: the `timeout` ini option (pyproject.toml). pytest-timeout enforces it when it is loaded
# (the dev extra installs it); without it the fallback below kills a hung run after dumping every thread's stack.
TIMEOUT_PLUGIN = "timeout"


def pytest_addoption(parser, pluginmanager):
    if not pluginmanager.hasplugin(TIMEOUT_PLUGIN):  # same option name, so the configuration works either way
        parser.addini("timeout", "per-test time limit in seconds (faulthandler fallback: dumps stacks, exits)",
                      default="0")


_fallback_stderr = None  # a copy of the real stderr, taken while pytest's output capture is suspended


def pytest_configure(config):
    global _fallback_stderr
    if not config.pluginmanager.hasplugin(TIMEOUT_PLUGIN) and _fallback_stderr is None:
        _fallback_stderr = os.fdopen(os.dup(sys.__stderr__.fileno()), "w")


@pytest.fixture(autouse=True)
def _time_limit(request):
    """Without pytest-timeout: a test running past the limit dumps all stacks to the terminal and ends the process
    (non-zero), so a hung multi-process test fails CI instead of blocking it."""
    seconds = float(request.config.getini("timeout") or 0) if _fallback_stderr is not None else 0.0
    if seconds > 0:
        faulthandler.dump_traceback_later(seconds, exit=True, file=_fallback_stderr)
    yield
    if seconds > 0:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path_factory, monkeypatch):
    """$GSGAN_CACHE_DIR -> an empty folder for this test (metric statistics, downloads and built datasets never leak
    between tests), except torch_extensions/, a link to the session's shared build cache."""
    shared_extensions = os.path.join(SESSION_CACHE_DIR, EXTENSIONS_SUBDIR)
    os.makedirs(shared_extensions, exist_ok=True)
    cache = tmp_path_factory.mktemp("gsgan-cache")
    os.symlink(shared_extensions, cache / EXTENSIONS_SUBDIR, target_is_directory=True)
    monkeypatch.setenv("GSGAN_CACHE_DIR", str(cache))
    yield str(cache)


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    yield


def require_cpu_backend():
    """The compiled CPU rasterizer module. When it cannot be built: a failure on CI (CI=true, where a broken
    build must not hide behind skipped tests), a skip with the build's reason elsewhere."""
    from splatting.backends import cpu

    reason = cpu.availability()
    if reason is not None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"cpu backend unavailable on CI: {reason}", pytrace=False)
        pytest.skip(f"cpu backend unavailable: {reason}")
    return cpu


@pytest.fixture
def cpu_backend():
    """splatting.backends.cpu, built; checked when a test runs, never at import or collection."""
    return require_cpu_backend()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only add contention on a shared CPU. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sigint_after_mkstemp(monkeypatch):
    """tempfile.mkstemp sends this process a SIGINT right after it has created the file: the window in which an
    interrupted writer could leave a temp file behind that it has not recorded yet."""
    import signal
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_sigint(*args, **kwargs):
        result = real_mkstemp(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_sigint)


def read_only_dir(tmp_path) -> str:
    """A folder this process cannot write into (as root, chmod does not stop writes: use a kernel folder); skips
    the calling test where there is none."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return str(folder)
    folder = "/sys/kernel"
    try:
        open(os.path.join(folder, ".gsgan-probe"), "wb").close()
    except OSError:
        return folder
    os.remove(os.path.join(folder, ".gsgan-probe"))
    pytest.skip("no read-only folder available to root here")
