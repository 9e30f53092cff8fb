"""gsplat backend (CUDA): tile binning + compositing by gsplat's kernels, fed with OUR projected 2D Gaussians.

Only gsplat's `isect_tiles`, `isect_offset_encode` and `rasterize_to_pixels` are used, so projection, culling
and colour are the shared PyTorch code and match every other backend; all B*C images go in one call.

Known deviations from the contract (docs/rasterizer.md), all inside gsplat's kernels:
- alpha is clamped at 0.999 instead of 0.99 (KERNEL_ALPHA_MAX). It only matters at pixels where one Gaussian
  alone reaches an alpha above 0.99; there the accumulated alpha differs by up to 0.009, or by up to 0.1 where less
  than 10% of the light is left in front of that Gaussian (the early stop then drops it under 0.999, not under
  0.99);
- the early stop fires at T_next <= 1e-4 instead of < 1e-4 (differs only on exact ties);
- everything is computed in float32 (float64 inputs are cast, outputs cast back; gradients are float32-exact).
tests/splatting/test_parity.py compares it with `reference` on a CUDA machine (1e-4 outside the clamp regime; in it,
against `reference` run with the 0.999 clamp); tests/splatting/test_backend_glue.py checks this module's glue on
the CPU with a stand-in for gsplat.
"""
from __future__ import annotations

import importlib
import re

import torch
from torch import Tensor

TILE_SIZE = 16
KERNEL_ALPHA_MAX = 0.999  # gsplat's kernels clamp alpha here (the contract, and every other backend: 0.99)
INSTALL_HINT = "pip install gsgan[cuda]"


def _import_gsplat():
    return importlib.import_module("gsplat")


def availability() -> str | None:
    try:
        gs = _import_gsplat()
    except ImportError:
        return f"gsplat not installed ({INSTALL_HINT})"
    except Exception as exc:  # e.g. a broken CUDA toolchain detected at import
        return f"gsplat failed to import: {type(exc).__name__}: {exc}"
    missing = [fn for fn in ("isect_tiles", "isect_offset_encode", "rasterize_to_pixels") if not hasattr(gs, fn)]
    if missing:
        return f"gsplat {getattr(gs, '__version__', '?')} lacks {', '.join(missing)}; need gsplat>=1.4 ({INSTALL_HINT})"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _radii_per_axis(gs) -> bool:
    """gsplat >= 1.5 takes separate x/y radii [..., N, 2]; 1.4 takes [C, N]."""
    match = re.match(r"(\d+)\.(\d+)", getattr(gs, "__version__", "0.0"))
    major, minor = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    return (major, minor) >= (1, 5)


def rasterize(means2d: Tensor, conics: Tensor, feats: Tensor, opacities: Tensor, depths: Tensor, radii: Tensor,
              width: int, height: int) -> tuple[Tensor, Tensor]:
    """The rasterization contract (docs/rasterizer.md): (out [I, H, W, D], alpha [I, H, W, 1]); float32 inside."""
    gs = _import_gsplat()
    num_images, n = opacities.shape
    dtype = feats.dtype
    if n == 0:
        return (feats.new_zeros(num_images, height, width, feats.shape[-1]),
                feats.new_zeros(num_images, height, width, 1))
    tiles_x = (width + TILE_SIZE - 1) // TILE_SIZE
    tiles_y = (height + TILE_SIZE - 1) // TILE_SIZE
    means2d, conics, feats, opacities, depths = (
        t.float().contiguous() for t in (means2d, conics, feats, opacities, depths))
    radii = radii.to(torch.int32)
    if _radii_per_axis(gs):
        radii = radii[..., None].expand(num_images, n, 2)
    radii = radii.contiguous()
    _, isect_ids, flatten_ids = gs.isect_tiles(means2d, radii, depths, TILE_SIZE, tiles_x, tiles_y)
    offsets = gs.isect_offset_encode(isect_ids, num_images, tiles_x, tiles_y)
    out, alpha = gs.rasterize_to_pixels(means2d, conics, feats, opacities, width, height, TILE_SIZE, offsets,
                                        flatten_ids)
    return out.to(dtype), alpha.to(dtype)
