"""The one batch layout every part of the reconstruction half speaks, and its conversion to splatting.Cameras.

A dataset example (and, after the default collate, a batch with a leading B dimension) is

    {"key": str,                                  # scene id (a list of B strings after collate)
     "context": VIEWS with V views, "target": VIEWS with T views}

    VIEWS = {"image":      float32 [V, 3, H, W] in [0, 1],
             "intrinsics": float32 [V, 3, 3] normalized: row 0 divided by W, row 1 by H ([[fx,0,cx],[0,fy,cy],[0,0,1]]),
             "extrinsics": float32 [V, 4, 4] camera-to-world, OpenCV axes (x right, y down, z forward),
             "near":       float32 [V], "far": float32 [V]   depth range of the scene's cost volume,
             "index":      int64 [V]                         frame indices into the scene's frame list}

This is the pixelSplat/MVSplat layout, so their conventions (and users' habits) carry over unchanged.
"""
from __future__ import annotations

from torch import Tensor

from splatting.cameras import Cameras, rigid_inverse

VIEW_FIELDS = ("image", "intrinsics", "extrinsics", "near", "far", "index")


def pixel_intrinsics(intrinsics: Tensor, width: int, height: int) -> Tensor:
    """[..., 3, 3] normalized intrinsics -> pixel intrinsics (row 0 times W, row 1 times H)."""
    scale = intrinsics.new_tensor([width, height, 1.0])
    return intrinsics * scale[:, None]


def normalized_intrinsics(k_pixels: Tensor, width: int, height: int) -> Tensor:
    """Inverse of pixel_intrinsics."""
    scale = k_pixels.new_tensor([width, height, 1.0])
    return k_pixels / scale[:, None]


def to_cameras(views: dict, width: int | None = None, height: int | None = None, near: float = 1e-3) -> Cameras:
    """splatting.Cameras [B, V] of batched views (extrinsics [B, V, 4, 4], intrinsics [B, V, 3, 3]).

    width/height default to the views' image size. `near` is the rasterizer's view-space cull distance (not the
    cost volume's near plane): a small value, so nothing in front of the scene's depth range is dropped."""
    if width is None or height is None:
        height, width = views["image"].shape[-2:]
    extrinsics = views["extrinsics"]
    return Cameras(world_to_cam=rigid_inverse(extrinsics),
                   K=pixel_intrinsics(views["intrinsics"].to(extrinsics.dtype), width, height),
                   width=int(width), height=int(height), near=near)


def select_views(views: dict, index) -> dict:
    """The views `index` (slice or index tensor along V) of batched views [B, V, ...]."""
    return {name: value[:, index] for name, value in views.items()}


def views_to(views: dict, device) -> dict:
    """Batched views moved to `device` (non-blocking where possible)."""
    return {name: value.to(device, non_blocking=True) for name, value in views.items()}


def batch_to(batch: dict, device) -> dict:
    """A collated batch moved to `device` (keys stay on the host)."""
    out = dict(batch)
    for part in ("context", "target"):
        out[part] = views_to(batch[part], device)
    return out
