"""Optional backend: the original 3DGS rasterizer (`diff_gaussian_rasterization`, Kerbl et al.) when installed.

Its API takes 3D Gaussians and camera matrices and projects internally, so it cannot implement the shared
`rasterize(means2d, conics, ...)` contract. Instead this module renders whole images (`render_images`, one
call per image) and feeds it as much of our own pipeline as its API accepts: our 3D covariances
(cov3D_precomp) and our SH colours (colors_precomp), with matrices built so that its pixel mapping equals ours
exactly (its pixel centres are integers, ours are i + 0.5; the principal point may be off-centre).
Depth and alpha come from a second pass with colours (z, 1, 0).

Deviations from the shared projection semantics (inside its CUDA code): near-plane cull at z <= 0.2 (not
cameras.near), Jacobian clamp at 1.3 tan(fov/2) symmetric about the image centre, eigenvalue floor 0.1,
tile rectangles computed with integer rounding, and its own depth sort. So results match the other backends
closely but not to 1e-4 near those thresholds; the parity test reports it on a CUDA machine.
"""
from __future__ import annotations

import importlib

import torch
from torch import Tensor

PROJECTS_ITSELF = True
FAR = 100.0  # only enters the projection matrix's z row, which the rasterizer does not use for culling


def _import():
    return importlib.import_module("diff_gaussian_rasterization")


def availability() -> str | None:
    try:
        module = _import()
    except ImportError:
        return ("diff_gaussian_rasterization not installed (optional; build it from "
                "https://github.com/graphdeco-inria/diff-gaussian-rasterization)")
    except Exception as exc:
        return f"diff_gaussian_rasterization failed to import: {type(exc).__name__}: {exc}"
    if not all(hasattr(module, n) for n in ("GaussianRasterizationSettings", "GaussianRasterizer")):
        return "diff_gaussian_rasterization lacks GaussianRasterizationSettings/GaussianRasterizer"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _projection_matrix(k: Tensor, width: int, height: int, near: float) -> Tensor:
    """[4, 4] matrix whose NDC maps to our pixels under its ndc->pixel rule ((ndc + 1) * size - 1) / 2."""
    p = torch.zeros(4, 4, dtype=k.dtype, device=k.device)
    p[0, 0] = 2 * k[0, 0] / width
    p[0, 2] = 2 * k[0, 2] / width - 1
    p[1, 1] = 2 * k[1, 1] / height
    p[1, 2] = 2 * k[1, 2] / height - 1
    p[2, 2] = FAR / (FAR - near)
    p[2, 3] = -FAR * near / (FAR - near)
    p[3, 2] = 1
    return p


def _settings(module, w2c: Tensor, k: Tensor, cameras, center: Tensor):
    width, height = cameras.width, cameras.height
    values = {
        "image_height": height, "image_width": width,
        "tanfovx": float(0.5 * width / k[0, 0]), "tanfovy": float(0.5 * height / k[1, 1]),
        "bg": torch.zeros(3, device=w2c.device), "scale_modifier": 1.0,
        "viewmatrix": w2c.T.contiguous(),  # it reads matrices column-major
        "projmatrix": (_projection_matrix(k, width, height, cameras.near) @ w2c).T.contiguous(),
        "sh_degree": 0, "campos": center, "prefiltered": False, "debug": False, "antialiasing": False,
    }
    fields = module.GaussianRasterizationSettings._fields
    unknown = [f for f in fields if f not in values]
    if unknown:
        raise RuntimeError(f"diff_gaussian_rasterization: unsupported settings field(s) {unknown}; "
                           f"use the gsplat backend instead")
    return module.GaussianRasterizationSettings(**{f: values[f] for f in fields})


def render_images(gaussians, cameras) -> tuple[Tensor, Tensor, Tensor]:
    """(color [B, C, 3, H, W] without background, depth [B, C, 1, H, W], alpha [B, C, 1, H, W])."""
    from ..projection import covariances3d
    from ..sh import sh_to_color

    b, c = gaussians.batch_size, cameras.num_cameras
    dtype = gaussians.means.dtype
    if gaussians.num_gaussians == 0:  # never hand empty tensors to the extension
        zeros = gaussians.means.new_zeros(b, c, 1, cameras.height, cameras.width)
        return zeros.expand(b, c, 3, cameras.height, cameras.width).clone(), zeros.clone(), zeros.clone()
    module = _import()
    g32 = gaussians.map(lambda t: t.float())
    w2c_all, k_all = cameras.world_to_cam.float(), cameras.K.float()
    centers = cameras.centers.float()
    cov = covariances3d(g32)
    iu = torch.triu_indices(3, 3, device=cov.device)
    cov6 = cov[..., iu[0], iu[1]]  # [B, N, 6]: xx, xy, xz, yy, yz, zz
    opac = g32.opacities()[..., None]
    colors, depths, alphas = [], [], []
    for bi in range(b):
        for ci in range(c):
            w2c, k = w2c_all[bi, ci], k_all[bi, ci]
            rasterizer = module.GaussianRasterizer(raster_settings=_settings(module, w2c, k, cameras, centers[bi, ci]))
            means = g32.means[bi]
            rgb = sh_to_color(g32.sh[bi], means - centers[bi, ci])
            z = means @ w2c[2, :3] + w2c[2, 3]
            passes = []
            for feats in (rgb, torch.stack([z, torch.ones_like(z), torch.zeros_like(z)], dim=-1)):
                screen = torch.zeros_like(means, requires_grad=means.requires_grad)
                result = rasterizer(means3D=means, means2D=screen, opacities=opac[bi], colors_precomp=feats,
                                    cov3D_precomp=cov6[bi])
                passes.append(result[0] if isinstance(result, (tuple, list)) else result)
            color, zsum_alpha = passes
            alpha = zsum_alpha[1:2]
            covered = alpha > 0
            depths.append(torch.where(covered, zsum_alpha[0:1] / torch.where(covered, alpha, torch.ones_like(alpha)),
                                      torch.zeros_like(alpha)))
            colors.append(color)
            alphas.append(alpha)
    shape = (b, c, -1, cameras.height, cameras.width)
    return tuple(torch.stack(x).reshape(shape).to(dtype) for x in (colors, depths, alphas))
