"""`python -m splatting.doctor`: which rasterizer backends work here, and why the others do not."""
from __future__ import annotations

import platform
import sys

import torch

from .backends import BACKENDS, ENV_VAR, unavailable_reason


def report() -> str:
    """A human-readable multi-line report (also used by tests)."""
    import os

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, "
             f"CUDA available: {torch.cuda.is_available()}"]
    if torch.cuda.is_available():
        lines.append(f"CUDA device: {torch.cuda.get_device_name(0)}")
    reasons = {name: unavailable_reason(name) for name in BACKENDS}
    width = max(map(len, BACKENDS))
    for name, reason in reasons.items():
        devices = "/".join(BACKENDS[name].device_types)
        status = "available" if reason is None else f"unavailable: {reason}"
        lines.append(f"  {name:<{width}}  {'[' + devices + ']':<10}  {status}")
    auto_cpu = "cpu" if reasons["cpu"] is None else "reference (fallback)"
    auto_cuda = "gsplat" if reasons["gsplat"] is None else "reference (fallback)"
    lines.append(f"backend='auto' picks: {auto_cpu} for CPU tensors, {auto_cuda} for CUDA tensors")
    override = os.environ.get(ENV_VAR)
    if override:
        lines.append(f"{ENV_VAR}={override!r} overrides 'auto'")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
