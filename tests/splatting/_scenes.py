"""Small random scenes and cameras shared by the splatting tests (including the awkward cases)."""
from __future__ import annotations

import torch

from splatting import Cameras, Gaussians
from splatting.cameras import look_at, rigid_inverse


def orbit_cameras(batch: int, cams: int, width: int = 40, height: int = 24, dtype=torch.float64,
                  radius: float = 2.7, focal: float = 1.6, generator: torch.Generator | None = None) -> Cameras:
    """Cameras on a jittered orbit around the origin, looking at it; focal in units of the image width."""
    angles = torch.rand(batch, cams, generator=generator, dtype=dtype) * 1.2 - 0.6
    heights = torch.rand(batch, cams, generator=generator, dtype=dtype) * 0.8 - 0.4
    origins = torch.stack([radius * torch.sin(angles), heights, radius * torch.cos(angles)], dim=-1)
    w2c = rigid_inverse(look_at(origins, torch.zeros(3, dtype=dtype)))
    fx = focal * width
    k = torch.tensor([[fx, 0, 0.52 * width], [0, fx * 1.05, 0.47 * height], [0, 0, 1]], dtype=dtype)
    return Cameras(w2c, k.expand(batch, cams, 3, 3).clone(), width=width, height=height)


def random_gaussians(batch: int, n: int, sh_degree: int = 0, dtype=torch.float64, spread: float = 0.4,
                     log_scale_range=(-3.5, -2.0), generator: torch.Generator | None = None) -> Gaussians:
    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=dtype)

    lo, hi = log_scale_range
    k = (sh_degree + 1) ** 2
    return Gaussians(
        means=(rand(batch, n, 3) * 2 - 1) * spread,
        log_scales=lo + (hi - lo) * rand(batch, n, 3),
        quats=torch.randn(batch, n, 4, generator=generator, dtype=dtype),
        opacity_logits=(rand(batch, n) * 4 - 2),
        sh=(rand(batch, n, k, 3) * 2 - 1) * 1.5,
    )


def awkward_gaussians(batch: int, sh_degree: int = 0, dtype=torch.float64) -> Gaussians:
    """Behind every camera, far off-screen, huge, tiny, and two exactly overlapping (equal depth) Gaussians."""
    k = (sh_degree + 1) ** 2
    means = torch.tensor([
        [0.0, 0.0, 6.0],     # behind cameras placed at radius 2.7 on the +z side
        [40.0, 0.0, 0.0],    # far to the side: off-screen
        [0.0, 0.05, 0.0],    # huge
        [0.1, -0.1, 0.1],    # tiny
        [-0.1, 0.1, 0.0],    # two identical Gaussians: depth tie, broken by index
        [-0.1, 0.1, 0.0],
    ], dtype=dtype)
    log_scales = torch.tensor([[-2.0] * 3, [-2.0] * 3, [0.8] * 3, [-9.0] * 3, [-2.5] * 3, [-2.5] * 3], dtype=dtype)
    n = means.shape[0]
    sh = torch.zeros(n, k, 3, dtype=dtype)
    sh[:, 0] = torch.linspace(-1.5, 1.5, n * 3, dtype=dtype).reshape(n, 3)
    return Gaussians(
        means=means.expand(batch, n, 3).clone(),
        log_scales=log_scales.expand(batch, n, 3).clone(),
        quats=torch.tensor([[1.0, 0.2, -0.3, 0.1]], dtype=dtype).expand(batch, n, 4).clone(),
        opacity_logits=torch.tensor([2.0, 2.0, -1.0, 3.0, 1.0, 0.5], dtype=dtype).expand(batch, n).clone(),
        sh=sh.expand(batch, n, k, 3).clone(),
    )


def mixed_scene(batch: int, n_random: int, sh_degree: int = 0, dtype=torch.float64, seed: int = 0) -> Gaussians:
    generator = torch.Generator().manual_seed(seed)
    return Gaussians.cat([random_gaussians(batch, n_random, sh_degree, dtype, generator=generator),
                          awkward_gaussians(batch, sh_degree, dtype)])
