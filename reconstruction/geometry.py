"""Pinhole geometry for posed views: (un)projection, inverse-depth planes and plane-sweep warping (pixel rays:
splatting.cameras, shared with the GAN half).

Conventions are those of `reconstruction/views.py`: normalized intrinsics (row 0 divided by W, row 1 by H),
camera-to-world extrinsics with OpenCV axes (x right, y down, z forward), z-depth, and pixel (i, j) centred at
(i + 0.5, j + 0.5). Because the intrinsics are normalized, the same matrices serve a full-resolution image and its
1/4-resolution feature map; every function takes the grid size it works on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from splatting.cameras import camera_rays, rigid_inverse


class GeometryError(ValueError):
    """A tensor handed to the geometry helpers has the wrong shape or values."""


def _check_matrices(name: str, t: Tensor, size: int) -> None:
    if not isinstance(t, Tensor) or t.ndim < 2 or tuple(t.shape[-2:]) != (size, size):
        shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise GeometryError(f"{name}: expected shape [..., {size}, {size}], got {shape}")


def unproject(depth: Tensor, intrinsics: Tensor, c2w: Tensor) -> Tensor:
    """World points [..., H, W, 3] of the pixel centres at z-depth `depth` [..., H, W]."""
    _check_matrices("intrinsics", intrinsics, 3)
    _check_matrices("c2w", c2w, 4)
    if depth.ndim < 2:
        raise GeometryError(f"depth: expected shape [..., H, W], got {list(depth.shape)}")
    if not (depth.shape[:-2] == intrinsics.shape[:-2] == c2w.shape[:-2]):
        raise GeometryError(f"depth: leading dimensions {list(depth.shape[:-2])} must equal the cameras' "
                            f"(intrinsics {list(intrinsics.shape[:-2])}, c2w {list(c2w.shape[:-2])})")
    height, width = depth.shape[-2:]
    points_cam = camera_rays(intrinsics, height, width) * depth[..., None]
    return apply_transform(c2w, points_cam)


def _point_dims(name: str, points: Tensor, matrix: Tensor) -> int:
    """How many point dimensions follow the camera dimensions: points [*cams, *P, 3], matrix [*cams, r, r]."""
    cams = matrix.ndim - 2
    if points.ndim < cams + 1 or points.shape[-1] != 3 or tuple(points.shape[:cams]) != tuple(matrix.shape[:-2]):
        raise GeometryError(f"{name}: expected shape [{', '.join(map(str, matrix.shape[:-2]))}, ..., 3] "
                            f"(camera dimensions first), got {list(points.shape)}")
    return points.ndim - 1 - cams


def apply_transform(matrix: Tensor, points: Tensor) -> Tensor:
    """Rigid transform [*cams, 4, 4] applied to points [*cams, *P, 3] (any number of point dimensions P)."""
    extra = (None,) * _point_dims("points", points, matrix)
    rot = matrix[(..., *extra, slice(0, 3), slice(0, 3))]
    trans = matrix[(..., *extra, slice(0, 3), 3)]
    return (rot @ points[..., None])[..., 0] + trans


def project(points_world: Tensor, intrinsics: Tensor, c2w: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Pixel coordinates uv [*cams, *P, 2] and z-depth [*cams, *P] of world points [*cams, *P, 3] in cameras
    (normalized intrinsics [*cams, 3, 3], camera-to-world [*cams, 4, 4]) with images of width x height.

    Points behind the camera get z <= 0 and a meaningless uv; callers mask them with z."""
    _check_matrices("intrinsics", intrinsics, 3)
    _check_matrices("c2w", c2w, 4)
    if intrinsics.shape[:-2] != c2w.shape[:-2]:
        raise GeometryError(f"intrinsics: camera dimensions {list(intrinsics.shape[:-2])} differ from c2w's "
                            f"{list(c2w.shape[:-2])}")
    extra = (None,) * _point_dims("points_world", points_world, c2w)
    cam = apply_transform(rigid_inverse(c2w), points_world)
    z = cam[..., 2]
    safe_z = torch.where(z.abs() > 1e-8, z, torch.full_like(z, 1e-8))
    k = intrinsics[(..., *extra, slice(None), slice(None))]
    u = (k[..., 0, 0] * cam[..., 0] / safe_z + k[..., 0, 2]) * width
    v = (k[..., 1, 1] * cam[..., 1] / safe_z + k[..., 1, 2]) * height
    return torch.stack([u, v], dim=-1), z


def inverse_depth_candidates(near: Tensor, far: Tensor, num_candidates: int) -> Tensor:
    """[..., D] disparities (inverse depths) spaced linearly from 1/far to 1/near (ascending), for near/far [...].

    Linear in disparity puts more planes close to the camera, where a depth error moves pixels the most."""
    if num_candidates < 2:
        raise GeometryError(f"num_candidates: expected at least 2 depth planes, got {num_candidates}")
    if not bool(((near > 0) & (far > near)).all()):
        raise GeometryError("near/far: expected 0 < near < far for every view")
    steps = torch.linspace(0.0, 1.0, num_candidates, device=near.device, dtype=near.dtype)
    low, high = 1.0 / far[..., None], 1.0 / near[..., None]
    return low + (high - low) * steps


def warp_to_planes(src: Tensor, ref_intrinsics: Tensor, ref_c2w: Tensor, src_intrinsics: Tensor, src_c2w: Tensor,
                   depths: Tensor) -> tuple[Tensor, Tensor]:
    """Plane-sweep warp of a source map into a reference camera.

    For every reference pixel centre and every fronto-parallel plane at z-depth depths[b, d] (reference camera
    space), the 3D point is projected into the source camera and `src` [B, C, h, w] is sampled there (bilinear,
    zeros outside). Returns (warped [B, C, D, h, w], valid [B, D, h, w] bool: in front of the source camera and
    within its outermost pixel centres). Output grid = source grid size h x w (both views share an image size)."""
    if src.ndim != 4:
        raise GeometryError(f"src: expected shape [B, C, h, w], got {list(src.shape)}")
    batch, channels, height, width = src.shape
    for name, t, size in (("ref_intrinsics", ref_intrinsics, 3), ("ref_c2w", ref_c2w, 4),
                          ("src_intrinsics", src_intrinsics, 3), ("src_c2w", src_c2w, 4)):
        if t.shape != (batch, size, size):
            raise GeometryError(f"{name}: expected shape [{batch}, {size}, {size}], got {list(t.shape)}")
    if depths.ndim != 2 or depths.shape[0] != batch:
        raise GeometryError(f"depths: expected shape [{batch}, D], got {list(depths.shape)}")
    num_planes = depths.shape[1]
    # A reference pixel at depth d sits at d * ray in reference camera space; in source camera space that is
    # d * (R ray) + t with [R t] = src_w2c @ ref_c2w, so one rotated ray per pixel serves every plane.
    rel = rigid_inverse(src_c2w) @ ref_c2w                                           # [B, 4, 4]
    rays = camera_rays(ref_intrinsics, height, width).reshape(batch, -1, 3)          # [B, hw, 3]
    rotated = rays @ rel[:, :3, :3].transpose(1, 2)                                   # [B, hw, 3]
    points = depths[:, :, None, None] * rotated[:, None] + rel[:, None, None, :3, 3]  # [B, D, hw, 3]
    z = points[..., 2]
    safe_z = torch.where(z > 1e-6, z, torch.full_like(z, 1e-6))
    k = src_intrinsics[:, None, None]
    # grid_sample's align_corners=False maps -1/+1 to the outer pixel edges, so normalized image coordinates
    # u/W in [0, 1] (pixel centres at (i + 0.5) / W) become 2 * u/W - 1 exactly.
    gx = 2 * (k[..., 0, 0] * points[..., 0] / safe_z + k[..., 0, 2]) - 1
    gy = 2 * (k[..., 1, 1] * points[..., 1] / safe_z + k[..., 1, 2]) - 1
    # Valid: in front of the source camera and within its outermost pixel centres, where bilinear sampling
    # blends real pixels only (no zero padding).
    valid = (z > 1e-6) & (gx.abs() <= 1 - 1 / width + 1e-6) & (gy.abs() <= 1 - 1 / height + 1e-6)
    # Points behind the source camera are sent far outside the image so the zero padding blanks them.
    outside = torch.full_like(gx, -4.0)
    grid = torch.stack([torch.where(z > 1e-6, gx, outside), torch.where(z > 1e-6, gy, outside)], dim=-1)
    warped = F.grid_sample(src, grid.reshape(batch, num_planes * height, width, 2), mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    return (warped.reshape(batch, channels, num_planes, height, width),
            valid.reshape(batch, num_planes, height, width))




def rotation_to_quaternion(rot: Tensor) -> Tensor:
    """Unit quaternions [..., 4] (w, x, y, z, w >= 0) of rotation matrices [..., 3, 3].

    Each of the four algebraically equal formulas divides by one of 4w^2, 4x^2, 4y^2, 4z^2; the one with the
    largest divisor is used per matrix, so the result is accurate for every rotation (Shepperd's method)."""
    _check_matrices("rot", rot, 3)
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    four_sq = torch.stack([1 + trace, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
    root = torch.sqrt(four_sq.clamp_min(1e-12))  # 2|w|, 2|x|, 2|y|, 2|z| for the respective formula
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s21, s02, s10 = m[..., 2, 1] + m[..., 1, 2], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1]
    candidates = torch.stack([
        torch.stack([root[..., 0] ** 2, d21, d02, d10], dim=-1) / (2 * root[..., 0, None]),
        torch.stack([d21, root[..., 1] ** 2, s10, s02], dim=-1) / (2 * root[..., 1, None]),
        torch.stack([d02, s10, root[..., 2] ** 2, s21], dim=-1) / (2 * root[..., 2, None]),
        torch.stack([d10, s02, s21, root[..., 3] ** 2], dim=-1) / (2 * root[..., 3, None]),
    ], dim=-2)  # [..., 4 formulas, 4 components]
    best = four_sq.argmax(dim=-1)
    quat = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    quat = quat * torch.where(quat[..., :1] < 0, -1.0, 1.0)
    return F.normalize(quat, dim=-1)
