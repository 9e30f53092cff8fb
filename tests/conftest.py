"""Shared pytest set-up: repository root on sys.path, deterministic seeds, a per-session cache directory."""
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


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
