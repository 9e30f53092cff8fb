"""Optional bfloat16 inference for the generator's feature networks (`G.inference_dtype`, `--dtype`).

What runs in bf16: the feature networks of the point generator, i.e. the level-0 transformer layers, the level-0
projection and the per-level blocks (edge convolution, upsampling, MLP), which hold nearly all of its
multiplications. Their input features are handed over in bf16 (every layer casts its weights to the dtype of its
input; norms, softmaxes and the kNN search already upcast to fp32 inside) and their outputs come back in fp32.
What stays fp32: everything that computes a Gaussian parameter (the heads, the activations, the parent-relative
placement of children), the mapping and background networks, and the rasterizer: a bf16 position (8-bit mantissa)
would be off by about one pixel at 256^2, and every level places its children relative to the previous one.

bf16 only pays where the hardware computes it natively: CUDA devices that report bf16 support, CPUs with AVX-512
BF16 or AMX (x86) or the BF16 extension (Arm). Elsewhere it is emulated and slower than fp32, so it is refused
with one line (PrecisionError) unless GSGAN_FORCE_BF16=1 is set, e.g. to measure the deviation on such a machine.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch import Tensor, nn

DTYPES = ("fp32", "bf16")
FORCE_ENV = "GSGAN_FORCE_BF16"
# /proc/cpuinfo flags (x86 "flags", Arm "Features") of native bfloat16 arithmetic.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


class PrecisionError(ValueError):
    """An inference dtype that is unknown or not usable on this device (one line naming the choice)."""


def check_dtype_name(name) -> str:
    """'fp32' or 'bf16'; PrecisionError naming the valid ones otherwise."""
    if not isinstance(name, str) or name not in DTYPES:
        raise PrecisionError(f"inference dtype: unknown name {name!r}; valid: {', '.join(map(repr, DTYPES))}")
    return name


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device) -> bool:
    """Whether `device` computes bfloat16 natively (not emulated through fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if _cpu_flags() & NATIVE_BF16_CPU_FLAGS:
        return True
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # where /proc/cpuinfo does not exist
    return bool(probe()) if probe is not None else False


def forced() -> bool:
    return os.environ.get(FORCE_ENV, "") == "1"


def check_dtype_usable(name, device) -> str:
    """`name` must be known, and bf16 native on `device` (or forced with GSGAN_FORCE_BF16=1); PrecisionError with
    one line otherwise. The CLIs check --dtype with this before loading anything; generate_scene checks it too."""
    name = check_dtype_name(name)
    if name == "bf16" and not native_bf16(device) and not forced():
        where = "this CPU has no AVX-512 BF16, AMX or Arm BF16" if torch.device(device).type == "cpu" else \
            f"{torch.device(device)} does not support bfloat16"
        raise PrecisionError(f"bf16 is not native here: {where} (it would be emulated, slower than fp32); use "
                             f"fp32, or set {FORCE_ENV}=1 to run it anyway")
    return name


def feature_modules(points: nn.Module) -> list[nn.Module]:
    """The feature networks of a point generator (PointGenerator or the naive FlatPointGenerator): level-0
    transformer layers, the level-0 projection, the blocks. Their first argument is the [B, L, C] features."""
    modules = list(getattr(points, "transformer", ()))
    if getattr(points, "level0_proj", None) is not None:
        modules.append(points.level0_proj)
    return modules + list(points.blocks)


def _features_in_bf16(module, args, kwargs):
    features, *rest = args
    return (features.to(torch.bfloat16), *rest), kwargs


def _output_in_fp32(module, args, kwargs, output: Tensor) -> Tensor:
    return output.float()


@contextlib.contextmanager
def feature_precision(points: nn.Module, name: str, device):
    """Within the block, `points` runs its feature networks in `name` ('fp32': unchanged; 'bf16': see the module
    docstring). The hooks exist only inside the block: not for concurrent calls on one model from threads."""
    if check_dtype_usable(name, device) == "fp32":
        yield
        return
    handles = []
    try:
        for module in feature_modules(points):
            handles.append(module.register_forward_pre_hook(_features_in_bf16, with_kwargs=True))
            handles.append(module.register_forward_hook(_output_in_fp32, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
