"""Per-pixel Gaussian head and the adapter that turns its raw outputs into world-space `splatting.Gaussians`.

The adapter is the one place where network outputs get their physical meaning:
- position: the pixel centre plus a sub-pixel offset (sigmoid(raw) - 0.5 pixels per axis), pushed along its
  camera ray to the predicted z-depth and moved to the world by camera-to-world;
- scale: (0.5 + 14.5 * sigmoid(raw)) * depth * 0.1 * (1/fx + 1/fy) (pixel focal lengths), MVSplat's rule tying a
  Gaussian's size to the pixel footprint at its depth, so one set of weights fits any scene scale and resolution;
- rotation: a camera-space quaternion composed with the camera-to-world rotation;
- colour: camera-space SH coefficients (higher bands damped by 0.1 * 0.25^l as in MVSplat, optionally with the
  pixel colour added to the DC term) rotated to the world frame;
- opacity: the density logit of the depth refiner, as is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splatting import Gaussians
from splatting.cameras import image_to_camera, pixel_centers
from splatting.gaussians import SH_C0
from splatting.projection import quaternion_multiply

from ..geometry import rotation_to_quaternion
from .sh_rotation import rotate_sh

SCALE_MIN, SCALE_MAX = 0.5, 15.0
FOOTPRINT_FACTOR = 0.1


def raw_channels(sh_degree: int) -> int:
    """Raw values per pixel: 2 offset + 3 scale + 4 quaternion + 3 * (degree + 1)^2 SH."""
    return 2 + 3 + 4 + 3 * (sh_degree + 1) ** 2


class GaussianHead(nn.Module):
    """Per-pixel vectors [N, F, H, W] -> raw Gaussian values [N, raw_channels(sh_degree), H, W]."""

    def __init__(self, in_channels: int, sh_degree: int, hidden_channels: int | None = None):
        super().__init__()
        out = raw_channels(sh_degree)
        hidden = hidden_channels or 2 * out
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(hidden, out, 3, padding=1))
        last = self.net[-1]
        with torch.no_grad():  # small outputs: offsets at the centre, scales mid-range, identity rotation
            last.weight.mul_(0.1)
            last.bias.zero_()
            last.bias[5] = 1.0

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def scale_multiplier(intrinsics: Tensor, width: int, height: int) -> Tensor:
    """[...] 0.1 * (1/fx + 1/fy) with pixel focal lengths, from normalized intrinsics [..., 3, 3]: the size of a
    pixel at depth 1 (averaged over the axes), times MVSplat's 0.1."""
    return FOOTPRINT_FACTOR * (1 / (intrinsics[..., 0, 0] * width) + 1 / (intrinsics[..., 1, 1] * height))


def sh_band_mask(sh_degree: int, device=None, dtype=None) -> Tensor:
    """[K] per-coefficient factor: 1 for the DC term, 0.1 * 0.25^l for degree l >= 1 (MVSplat's damping of the
    view-dependent bands, so colour is learned before view dependence)."""
    factors = [1.0] + [0.1 * 0.25 ** l for l in range(1, sh_degree + 1) for _ in range(2 * l + 1)]
    return torch.tensor(factors, device=device, dtype=dtype or torch.get_default_dtype())


def adapt_gaussians(raw: Tensor, depth: Tensor, density_logit: Tensor, intrinsics: Tensor, extrinsics: Tensor,
                    sh_degree: int, images: Tensor | None = None) -> Gaussians:
    """World-space Gaussians [B, V*H*W] (index v*H*W + y*W + x) from per-pixel raw values.

    raw [B, V, R, H, W] (R = raw_channels(sh_degree)), z-depth [B, V, 1, H, W], density_logit [B, V, 1, H, W],
    normalized intrinsics [B, V, 3, 3], camera-to-world extrinsics [B, V, 4, 4]; images [B, V, 3, H, W] in
    [0, 1] adds the pixel colour to the DC coefficient (None: the head predicts the colour alone)."""
    b, v, r, h, w = raw.shape
    if r != raw_channels(sh_degree):
        raise ValueError(f"raw: expected {raw_channels(sh_degree)} channels for SH degree {sh_degree}, got {r}")
    k = (sh_degree + 1) ** 2
    values = raw.permute(0, 1, 3, 4, 2)                                         # [B, V, H, W, R]
    offset, scale_raw, quat_raw, sh_raw = values.split([2, 3, 4, 3 * k], dim=-1)
    z = depth[:, :, 0]                                                          # [B, V, H, W]

    uv = pixel_centers(h, w, raw.device, raw.dtype) + torch.sigmoid(offset) - 0.5
    rays = image_to_camera(uv / uv.new_tensor([w, h]), intrinsics)               # [B, V, H, W, 3], z = 1
    points_cam = rays * z[..., None]
    rot = extrinsics[:, :, None, None, :3, :3]
    means = (rot @ points_cam[..., None])[..., 0] + extrinsics[:, :, None, None, :3, 3]

    multiplier = scale_multiplier(intrinsics, w, h)[:, :, None, None, None]
    scales = (SCALE_MIN + (SCALE_MAX - SCALE_MIN) * torch.sigmoid(scale_raw)) * z[..., None] * multiplier

    cam_quats = F.normalize(quat_raw, dim=-1)
    c2w_quats = rotation_to_quaternion(extrinsics[..., :3, :3])[:, :, None, None]   # [B, V, 1, 1, 4]
    quats = quaternion_multiply(c2w_quats, cam_quats)

    sh = sh_raw.reshape(b, v, h, w, k, 3) * sh_band_mask(sh_degree, raw.device, raw.dtype)[:, None]
    if images is not None:
        dc = (images.permute(0, 1, 3, 4, 2) - 0.5) / SH_C0
        sh = torch.cat([sh[..., :1, :] + dc[..., None, :], sh[..., 1:, :]], dim=-2)
    sh = rotate_sh(sh, extrinsics[:, :, None, None, :3, :3])

    n = v * h * w
    return Gaussians(means=means.reshape(b, n, 3), log_scales=torch.log(scales).reshape(b, n, 3),
                     quats=quats.reshape(b, n, 4), opacity_logits=density_logit.reshape(b, n),
                     sh=sh.reshape(b, n, k, 3))
