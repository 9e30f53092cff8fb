"""What gen_videos writes besides videos: per-seed splat .ply files and still-image sheets.

PLY frame. The generator works in EG3D's world (y up, the face looks toward +z). Inria 3DGS / COLMAP scenes, and
so most splat viewers, are y-down; exporting in that frame ("opencv", the default) rotates the world by 180
degrees about x: (x, y, z) -> (x, -y, -z), and every Gaussian's rotation is composed with it,
q' = q_rot (x) q with q_rot = (0, 1, 0, 0) (w, x, y, z), i.e. (w, x, y, z) -> (-x, w, -z, y). Scales, opacities and
degree-0 colours do not change.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from dnnlib import atomic_file
from splatting.gaussians import Gaussians
from splatting.ply import PLY_FRAMES, write_ply
from splatting.projection import quaternion_multiply
from training.video_utils import (CameraPreset, conditioning_label, finite_range, masked_depth, normalize_depth,
                                  to_uint8, yaw_sweep_labels)

STILL_YAWS = (-0.5, -0.25, 0.0, 0.25, 0.5)  # radians around the frontal view


# --------------------------------------------------------------------------------------------------
# PLY frame.
def rotate_x180(gaussians: Gaussians, inverse: bool = False) -> Gaussians:
    """EG3D world -> OpenCV-style y-down world (inverse=True: back). Exact: only sign flips and swaps."""
    if gaussians.sh_degree > 0:
        raise ValueError(f"rotate_x180: SH degree {gaussians.sh_degree} colours would need an SH rotation; "
                         "only degree 0 is supported")
    flip = gaussians.means.new_tensor([1.0, -1.0, -1.0])
    q_rot = gaussians.quats.new_tensor([0.0, -1.0 if inverse else 1.0, 0.0, 0.0])
    return dataclasses.replace(gaussians, means=gaussians.means * flip,
                               quats=quaternion_multiply(q_rot.expand_as(gaussians.quats), gaussians.quats))


def to_ply_frame(gaussians: Gaussians, frame: str) -> Gaussians:
    if frame not in PLY_FRAMES:
        raise ValueError(f"ply frame: expected one of {PLY_FRAMES}, got {frame!r}")
    return rotate_x180(gaussians) if frame == "opencv" else gaussians


# --------------------------------------------------------------------------------------------------
# Gaussians of the seeds.
@torch.no_grad()
def frontal_gaussians(G, ws: Tensor, preset: CameraPreset, gs_params=None, resolution: int | None = None
                      ) -> Gaussians:
    """The Gaussians (foreground + background, after gs_params) G renders for ws [B, num_ws, w_dim] from the
    frontal conditioning camera; the view direction there decides the colours."""
    c = conditioning_label(preset, compat=getattr(G, "compat", False)).to(ws.device, ws.dtype)
    out = G.synthesis(ws, c.expand(ws.shape[0], -1), neural_rendering_resolution=resolution, gs_params=gs_params)
    return out["gaussians"].map(lambda t: t.detach().float().cpu())


def export_plys(G, ws: Tensor, paths: list[str], preset: CameraPreset, frame: str = "opencv", gs_params=None,
                batch: int = 8, sh_degree: int = 0) -> list[str]:
    """Write the frontal-view Gaussians of ws[i] to paths[i] (3DGS-standard binary PLY, atomic per file);
    sh_degree > 0 adds zero higher-order colour coefficients for readers that insist on them."""
    if len(paths) != ws.shape[0]:
        raise ValueError(f"export_plys: {ws.shape[0]} ws but {len(paths)} paths")
    for start in range(0, len(paths), batch):
        gaussians = to_ply_frame(frontal_gaussians(G, ws[start:start + batch], preset, gs_params), frame)
        for i, path in enumerate(paths[start:start + batch]):
            write_ply(path, gaussians, scene=i, sh_degree=sh_degree)
    return paths


# --------------------------------------------------------------------------------------------------
# Still images.
@torch.no_grad()
def render_still(G, w: Tensor, preset: CameraPreset, yaws=STILL_YAWS, resolution: int | None = None,
                 gs_params=None) -> np.ndarray:
    """uint8 [2H, V*W, 3] sheet for one w [num_ws, w_dim]: colour at V yaws around the frontal view on top,
    depth (near = bright, range over the sheet, empty = black) below; all views in one generator call."""
    labels = yaw_sweep_labels(yaws, preset).to(w.device, w.dtype)
    views = labels.shape[0]
    out = G.synthesis(w.unsqueeze(0).expand(views, -1, -1), labels, neural_rendering_resolution=resolution,
                      gs_params=gs_params)
    color = to_uint8(out["image"])  # [V, H, W, 3]
    depth = masked_depth(out["image_depth"], out["image_alpha"]).float().cpu().numpy()
    lo, hi = finite_range(depth.reshape(1, -1))
    depth = to_uint8(torch.from_numpy(normalize_depth(depth, np.repeat(lo, views), np.repeat(hi, views))))
    return np.concatenate([np.concatenate(list(color), axis=1), np.concatenate(list(depth), axis=1)], axis=0)


def save_png(path: str, image: np.ndarray) -> str:
    """Write uint8 [H, W, 3] as PNG, all-or-nothing (never a half-written image)."""
    from PIL import Image

    with atomic_file(path) as handle:
        Image.fromarray(image).save(handle, format="PNG")
    return path
