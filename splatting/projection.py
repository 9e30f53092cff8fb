"""Projection of 3D Gaussians to screen-space 2D Gaussians, shared by every rasterizer backend.

Written in plain PyTorch (differentiable by autograd, batched over scenes and cameras) so that all backends
see exactly the same 2D Gaussians; the compiled backends only bin, sort and composite. Semantics follow
docs/interfaces.md ("Projection semantics"): EWA splatting with gsplat's Jacobian clamp, a 0.3 px^2
dilation, 3-sigma integer radii, near-plane and off-screen culling, and SH colour per view direction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Cameras
from .gaussians import Gaussians
from .sh import sh_to_color

DILATION = 0.3  # px^2 added to the 2D covariance (low-pass filter, keeps tiny Gaussians at least ~1 px wide)
JACOBIAN_CLAMP_MARGIN = 0.3  # fraction of tan(fov/2) beyond the image where the EWA linearization is frozen
RADIUS_SIGMAS = 3.0
EIGEN_FLOOR = 0.01  # floor of the discriminant in the largest-eigenvalue formula
MAX_RADIUS = 2.0 ** 30  # keeps absurdly large (or overflowed) radii representable as int32


@dataclass(frozen=True)
class Projected:
    """2D Gaussians of I = B*C images (image index = b*C + c). Entries with radii == 0 are culled: their other
    values are finite but meaningless."""

    means2d: Tensor    # [I, N, 2] pixel coordinates (x, y), pixel centres at i + 0.5
    conics: Tensor     # [I, N, 3] (a, b, c) of the inverse dilated 2D covariance [[a, b], [b, c]]
    depths: Tensor     # [I, N]    view-space z
    radii: Tensor      # [I, N]    int32, 0 = culled
    opacities: Tensor  # [I, N]
    colors: Tensor     # [I, N, 3]


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrices from quaternions [..., 4] (w, x, y, z), normalized here."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def covariances3d(gaussians: Gaussians) -> Tensor:
    """[B, N, 3, 3] world-space covariances R S S^T R^T."""
    m = quat_to_rotmat(gaussians.quats) * gaussians.scales()[..., None, :]  # R @ diag(s)
    return m @ m.transpose(-1, -2)


def project(gaussians: Gaussians, cameras: Cameras) -> Projected:
    """Project B scenes of N Gaussians into their C cameras each (no Python loop over images).

    Camera tensors are cast to the Gaussians' dtype. Culled Gaussians get radius 0; all values stay finite so
    gradients never pick up NaNs from culled entries.
    """
    b, n = gaussians.batch_size, gaussians.num_gaussians
    c = cameras.num_cameras
    dtype = gaussians.means.dtype
    w2c = cameras.world_to_cam.to(dtype)
    k = cameras.K.to(dtype)
    width, height = cameras.width, cameras.height

    rot_cw = w2c[..., :3, :3]  # [B, C, 3, 3]
    t_cam = torch.einsum("bcij,bnj->bcni", rot_cw, gaussians.means) + w2c[:, :, None, :3, 3]  # [B, C, N, 3]
    x, y, z = t_cam.unbind(-1)
    in_front = z >= cameras.near
    z_safe = torch.where(in_front, z, torch.ones_like(z))  # culled anyway; avoids inf/NaN in the graph

    fx, fy = k[..., 0, 0, None], k[..., 1, 1, None]  # [B, C, 1]
    cx, cy = k[..., 0, 2, None], k[..., 1, 2, None]

    # EWA Jacobian of the perspective map, with x/z and y/z clamped to a margin around the view frustum.
    tan_fov_x, tan_fov_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + JACOBIAN_CLAMP_MARGIN * tan_fov_x
    lim_x_neg = cx / fx + JACOBIAN_CLAMP_MARGIN * tan_fov_x
    lim_y_pos = (height - cy) / fy + JACOBIAN_CLAMP_MARGIN * tan_fov_y
    lim_y_neg = cy / fy + JACOBIAN_CLAMP_MARGIN * tan_fov_y
    tx = z_safe * torch.maximum(torch.minimum(x / z_safe, lim_x_pos), -lim_x_neg)
    ty = z_safe * torch.maximum(torch.minimum(y / z_safe, lim_y_pos), -lim_y_neg)
    zero = torch.zeros_like(z_safe)
    jac = torch.stack([
        torch.stack([fx / z_safe, zero, -fx * tx / z_safe ** 2], dim=-1),
        torch.stack([zero, fy / z_safe, -fy * ty / z_safe ** 2], dim=-1),
    ], dim=-2)  # [B, C, N, 2, 3]

    cov_world = covariances3d(gaussians)  # [B, N, 3, 3]
    cov_cam = rot_cw[:, :, None] @ cov_world[:, None] @ rot_cw.transpose(-1, -2)[:, :, None]  # [B, C, N, 3, 3]
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2)  # [B, C, N, 2, 2]
    a = cov2d[..., 0, 0] + DILATION
    bb = cov2d[..., 0, 1]
    cc = cov2d[..., 1, 1] + DILATION
    det = a * cc - bb * bb
    det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([cc / det_safe, -bb / det_safe, a / det_safe], dim=-1)

    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)

    with torch.no_grad():
        half_trace = 0.5 * (a + cc)
        lambda_max = half_trace + torch.sqrt(torch.clamp_min(half_trace * half_trace - det, EIGEN_FLOOR))
        radius = torch.clamp(torch.ceil(RADIUS_SIGMAS * torch.sqrt(lambda_max)), max=MAX_RADIUS)
        mx, my = means2d[..., 0], means2d[..., 1]
        on_screen = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
        keep = in_front & det_ok & on_screen
        radii = torch.where(keep, radius, torch.zeros_like(radius)).to(torch.int32)

    view_dirs = gaussians.means[:, None] - cameras.centers.to(dtype)[:, :, None]  # [B, C, N, 3]
    colors = sh_to_color(gaussians.sh[:, None], view_dirs).expand(b, c, n, 3)  # degree 0: no C dependence
    opacities = gaussians.opacities()[:, None].expand(b, c, n)

    i = b * c
    return Projected(
        means2d=means2d.reshape(i, n, 2),
        conics=conics.reshape(i, n, 3),
        depths=z.reshape(i, n),
        radii=radii.reshape(i, n),
        opacities=opacities.reshape(i, n),
        colors=colors.reshape(i, n, 3),
    )
