"""Registry of rasterizer backends and the `auto` policy.

Every backend module is imported lazily (importing splatting never compiles or imports CUDA libraries) and
exposes `availability() -> str | None` (None = usable, otherwise the reason) and `rasterize(...)` with the
contract of docs/interfaces.md. The `inria` backend cannot take pre-projected 2D Gaussians; it exposes
`render_images(...)` instead and sets `PROJECTS_ITSELF = True`.
"""
from __future__ import annotations

import importlib
import logging
import os
import warnings
from dataclasses import dataclass
from types import ModuleType

import torch

logger = logging.getLogger(__name__)
ENV_VAR = "GSGAN_BACKEND"


@dataclass(frozen=True)
class BackendInfo:
    module: str
    device_types: tuple[str, ...]


BACKENDS: dict[str, BackendInfo] = {
    "reference": BackendInfo("splatting.backends.reference", ("cpu", "cuda")),
    "cpu": BackendInfo("splatting.backends.cpu", ("cpu",)),
    "gsplat": BackendInfo("splatting.backends.gsplat", ("cuda",)),
    "inria": BackendInfo("splatting.backends.inria", ("cuda",)),
}
_auto_choice: dict[str, str] = {}  # device type -> backend picked by 'auto' (decided, warned and logged once)


def _load(name: str) -> ModuleType:
    return importlib.import_module(BACKENDS[name].module)


def unavailable_reason(name: str) -> str | None:
    """None when backend `name` can be used, else a one-line reason (never raises for a known name)."""
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown name {name!r}; valid: 'auto', {', '.join(map(repr, BACKENDS))}")
    try:
        module = _load(name)
    except Exception as exc:  # a broken module must not break the registry; report it instead
        return f"cannot import {BACKENDS[name].module}: {type(exc).__name__}: {exc}"
    try:
        return module.availability()
    except Exception as exc:
        return f"availability check failed: {type(exc).__name__}: {exc}"


def available_backends() -> list[str]:
    """Names of the backends usable on this machine (for some device), in registry order."""
    return [name for name in BACKENDS if unavailable_reason(name) is None]


def _check_device(name: str, device: torch.device) -> None:
    if device.type not in BACKENDS[name].device_types:
        raise RuntimeError(f"backend {name!r} cannot render {device.type} tensors "
                           f"(it supports: {', '.join(BACKENDS[name].device_types)})")


def _explicit(name: str, device: torch.device, origin: str) -> ModuleType:
    reason = unavailable_reason(name)
    if reason is not None:
        module = _load(name)
        if hasattr(module, "load"):  # compiled backends re-raise with the full build log
            try:
                module.load()
            except Exception as exc:
                raise RuntimeError(f"{origin} {name!r} is not available:\n{exc}") from exc
        raise RuntimeError(f"{origin} {name!r} is not available: {reason} (details: python -m splatting.doctor)")
    _check_device(name, device)
    return _load(name)


def _auto(device: torch.device) -> ModuleType:
    chosen = _auto_choice.get(device.type)
    if chosen is None:
        preferred = {"cuda": "gsplat", "cpu": "cpu"}.get(device.type, "reference")
        reason = unavailable_reason(preferred)
        chosen = preferred if reason is None else "reference"
        if reason is not None:
            fix = ("install the CUDA extra: pip install gsgan[cuda]" if preferred == "gsplat"
                   else "install a C++ compiler (g++ or clang) and ninja, then check with `python -m splatting.doctor`")
            warnings.warn(f"splatting: backend {preferred!r} is unavailable ({reason}); falling back to the slow "
                          f"pure-PyTorch 'reference' rasterizer. To fix: {fix}.", RuntimeWarning, stacklevel=4)
        logger.info("splatting: backend 'auto' picked %r for %s tensors", chosen, device.type)
        _auto_choice[device.type] = chosen
    _check_device(chosen, device)
    return _load(chosen)


def get_backend(name: str, device: torch.device | str) -> ModuleType:
    """The backend module to rasterize tensors on `device`.

    name: 'auto' (gsplat on CUDA, cpu on CPU, reference as a warned fallback; the GSGAN_BACKEND environment
    variable overrides it) or a registry name (RuntimeError when unavailable or the device does not fit).
    """
    device = torch.device(device)
    if not isinstance(name, str) or (name != "auto" and name not in BACKENDS):
        raise ValueError(f"backend: unknown name {name!r}; valid: 'auto', {', '.join(map(repr, BACKENDS))}")
    if name != "auto":
        return _explicit(name, device, "backend")
    override = os.environ.get(ENV_VAR, "").strip()
    if override and override != "auto":
        if override not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={override!r}: unknown backend; valid: 'auto', "
                             f"{', '.join(map(repr, BACKENDS))}")
        return _explicit(override, device, f"{ENV_VAR} backend")
    return _auto(device)
