"""C++/OpenMP tile rasterizer for CPU tensors (the CPU workhorse), built just-in-time on first use.

The extension is compiled once per (sources, flags, torch version) into
`$GSGAN_CACHE_DIR/torch_extensions/<name>-<hash>` (default cache dir `~/.cache/gsgan`), so later processes
reuse the build. Importing this module never compiles. Build failures are cached and reported verbatim:
`availability()` gives a short reason, an explicit `rasterize()` call raises with the whole compiler log.
OpenMP is used where the compiler takes `-fopenmp` (probed once per build directory, e.g. Apple clang does not):
otherwise the same source builds a single-threaded extension rather than none.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cache import cache_root

_NAME = "gsgan_rasterize_cpu"
_SOURCES = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "rasterize_cpu.cpp")]
# -ffp-contract=off: no fused multiply-adds, so forward and backward compute bit-identical alphas
_CFLAGS = ["-O3", "-std=c++17", "-ffp-contract=off"]
_LDFLAGS: list[str] = []
_OPENMP_FLAG = "-fopenmp"
_OPENMP_RECORD = "openmp_probe.txt"  # in the build directory: the probe's answer, so it runs once per build
_OPENMP_PROBE = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"

_lock = threading.Lock()
_module = None
_error: str | None = None  # full build log of a failed build, cached for the process


class CpuBackendUnavailable(RuntimeError):
    """The C++ CPU rasterizer could not be built or loaded; the message holds the reason / compiler log."""


def _cache_root() -> str:
    return os.path.join(cache_root(), "torch_extensions")


def _build_key() -> str:
    h = hashlib.sha256()
    for path in _SOURCES:
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(repr((_CFLAGS, _LDFLAGS, _OPENMP_FLAG, _OPENMP_PROBE, torch.__version__, sys.version_info[:2],
                   sys.platform)).encode())
    return h.hexdigest()[:16]


def _compiler() -> str:
    return os.environ.get("CXX", "c++")  # the compiler torch.utils.cpp_extension builds with


def _openmp_flags(build_dir: str) -> list[str]:
    """["-fopenmp"] when the compiler builds and links a small OpenMP program, else [] (a single-threaded build).

    Probed once per build directory (whose name already hashes the sources, flags and versions); the answer is
    kept there, so every later build in that directory uses the same flags without asking the compiler again.
    """
    record = os.path.join(build_dir, _OPENMP_RECORD)
    if os.path.exists(record):
        with open(record) as f:
            return f.read().split()
    flags: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "openmp_probe.cpp")
        with open(source, "w") as f:
            f.write(_OPENMP_PROBE)
        try:
            proc = subprocess.run([_compiler(), _OPENMP_FLAG, source, "-o", os.path.join(tmp, "openmp_probe")],
                                  capture_output=True, timeout=120)
            if proc.returncode == 0:
                flags = [_OPENMP_FLAG]
        except (OSError, subprocess.TimeoutExpired):
            pass
    partial = f"{record}.{os.getpid()}.tmp"
    with open(partial, "w") as f:
        f.write(" ".join(flags))
    os.replace(partial, record)  # all or nothing: a concurrent reader never sees half a record
    return flags


def _clear_stale_lock(build_dir: str) -> None:
    """Remove torch's `lock` file when no other process is building (we hold an exclusive flock).

    torch's FileBaton waits forever on a `lock` left by a killed build. Every gsgan build goes through the flock
    taken in `_build`, so a `lock` seen while holding it is stale.
    """
    path = os.path.join(build_dir, "lock")
    if os.path.exists(path):
        print(f"gsgan: removing stale build lock {path}", file=sys.stderr, flush=True)
        os.remove(path)


def _import_prebuilt(name: str, path: str):
    """Import a finished build directly. The build directory's name already hashes the sources, flags, torch and
    Python versions, so a library found there is the right one; asking cpp_extension.load instead re-runs ninja,
    which rebuilds everything (a minute) whenever a different ninja wrote the build log (the venv's and the
    system's ninja alternate, depending on PATH). None when the file does not import (e.g. a killed link step)."""
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError):
        return None
    return module


def _build():
    from torch.utils import cpp_extension

    if shutil.which("c++") is None and shutil.which("g++") is None:
        raise CpuBackendUnavailable("no C++ compiler found (install g++)")
    key = _build_key()
    name = f"{_NAME}_{key[:8]}"
    build_dir = os.path.join(_cache_root(), f"{_NAME}-{key}")
    os.makedirs(build_dir, exist_ok=True)
    prebuilt = os.path.exists(os.path.join(build_dir, f"{name}.so"))
    with open(os.path.join(build_dir, "gsgan.flock"), "w") as flock_file:
        try:
            import fcntl
        except ImportError:  # non-POSIX: fall back to an age test on torch's own lock
            fcntl = None
        if fcntl is not None:
            fcntl.flock(flock_file, fcntl.LOCK_EX)
            _clear_stale_lock(build_dir)
        else:
            lock = os.path.join(build_dir, "lock")
            if os.path.exists(lock) and time.time() - os.path.getmtime(lock) > 600:
                _clear_stale_lock(build_dir)
        if prebuilt:
            module = _import_prebuilt(name, os.path.join(build_dir, f"{name}.so"))
            if module is not None:
                return module
        openmp = _openmp_flags(build_dir)
        if not openmp:
            print(f"gsgan: {_compiler()} does not take {_OPENMP_FLAG}: the CPU rasterizer is built single-threaded",
                  file=sys.stderr, flush=True)
        start = time.perf_counter()
        if not prebuilt:
            print("gsgan: building the gsgan CPU rasterizer (one time, about a minute)...", end="",
                  file=sys.stderr, flush=True)
        try:
            # copies: torch appends to the flag lists it is given
            module = cpp_extension.load(name=name, sources=list(_SOURCES), extra_cflags=_CFLAGS + openmp,
                                        extra_ldflags=_LDFLAGS + openmp,
                                        build_directory=build_dir, verbose=False)
        except Exception as exc:  # keep the compiler log: it is the message of the error
            if not prebuilt:
                print(" failed", file=sys.stderr, flush=True)
            raise CpuBackendUnavailable(f"building the gsgan CPU rasterizer in {build_dir} failed:\n{exc}") from exc
        if not prebuilt:
            print(f" done in {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    return module


def load():
    """The compiled extension (built on the first call); raises CpuBackendUnavailable with the full log."""
    global _module, _error
    with _lock:
        if _module is None and _error is None:
            try:
                _module = _build()
            except CpuBackendUnavailable as exc:
                _error = str(exc)
        if _module is None:
            raise CpuBackendUnavailable(_error)
        return _module


def _short_reason(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    picked = (errors or lines)[:3]
    return " | ".join(picked)[:500]


def availability() -> str | None:
    """None when usable, else a one-line reason (builds the extension on the first call)."""
    try:
        load()
    except CpuBackendUnavailable as exc:
        return _short_reason(str(exc))
    return None


def _validate(means2d, conics, feats, opacities, depths, radii, width, height) -> None:
    where = "splatting.backends.cpu.rasterize"
    tensors = dict(means2d=means2d, conics=conics, feats=feats, opacities=opacities, depths=depths, radii=radii)
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{where}: {name} must be a CPU tensor, got device {t.device}")
    if means2d.ndim != 3 or means2d.shape[-1] != 2:
        raise ValueError(f"{where}: means2d must have shape [I,N,2], got {list(means2d.shape)}")
    I, N = means2d.shape[:2]
    expected = dict(conics=(I, N, 3), opacities=(I, N), depths=(I, N), radii=(I, N))
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{where}: {name} must have shape {list(shape)}, got {list(tensors[name].shape)}")
    if feats.ndim != 3 or tuple(feats.shape[:2]) != (I, N) or feats.shape[2] < 1:
        raise ValueError(f"{where}: feats must have shape [{I},{N},D] with D >= 1, got {list(feats.shape)}")
    for name in ("means2d", "conics", "feats", "opacities", "depths"):
        if tensors[name].dtype != torch.float32:
            raise ValueError(f"{where}: {name} must be float32, got {tensors[name].dtype}")
    if radii.dtype != torch.int32:
        raise ValueError(f"{where}: radii must be int32, got {radii.dtype}")
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")
    if N >= 2**31:
        raise ValueError(f"{where}: at most 2**31 - 1 Gaussians per image, got {N}")


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, feats, opacities, depths, radii, width, height):
        ext = load()
        threads = max(1, torch.get_num_threads())
        out, alpha, t_final, last, offsets, ids, records = ext.forward(
            means2d, conics, feats, opacities, depths, radii, width, height, threads)
        ctx.save_for_backward(records, offsets, ids, t_final, last)  # records: packed copies of the inputs
        ctx.size = (width, height, feats.shape[0], feats.shape[2])
        ctx.mark_non_differentiable(t_final, last)
        return out, alpha

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable: double backward says so
    def backward(ctx, grad_out, grad_alpha):
        records, offsets, ids, t_final, last = ctx.saved_tensors
        width, height, num_images, d_feats = ctx.size
        if grad_out is None:
            grad_out = torch.zeros(num_images, height, width, d_feats)
        if grad_alpha is None:
            grad_alpha = torch.zeros(num_images, height, width, 1)
        g_means, g_conics, g_feats, g_opac = load().backward(
            records, offsets, ids, t_final, last, grad_out.contiguous().float(), grad_alpha.contiguous().float(),
            d_feats, width, height, max(1, torch.get_num_threads()))
        return g_means, g_conics, g_feats, g_opac, None, None, None, None


def rasterize(means2d: Tensor, conics: Tensor, feats: Tensor, opacities: Tensor, depths: Tensor, radii: Tensor,
              width: int, height: int) -> tuple[Tensor, Tensor]:
    """Alpha-composite I images (docs/interfaces.md, "Rasterization contract"): -> (out [I,H,W,D], alpha [I,H,W,1]).

    Differentiable w.r.t. means2d, conics, feats and opacities (hand-written backward).
    """
    dtype = means2d.dtype
    if dtype == torch.float64:  # the kernel is float32 (like gsplat); autograd carries gradients through the casts
        means2d, conics, feats, opacities, depths = (
            t.float() for t in (means2d, conics, feats, opacities, depths))
    _validate(means2d, conics, feats, opacities, depths, radii, width, height)
    means2d, conics, feats, opacities, depths, radii = (
        t.contiguous() for t in (means2d, conics, feats, opacities, depths, radii))
    out, alpha = _Rasterize.apply(means2d, conics, feats, opacities, depths, radii, width, height)
    return out.to(dtype), alpha.to(dtype)
