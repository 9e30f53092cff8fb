"""Videos and .ply files of a reconstruction: a camera path through (and beyond) the context cameras, colour and
depth side by side in an H.264 mp4, and the predicted Gaussians as a 3DGS .ply.

The path interpolates the first two context cameras: positions linearly, rotations by quaternion slerp,
intrinsics linearly, at t = -extrapolate .. 1 + extrapolate (t = 0 and t = 1 are the context cameras).

With a densifier the video and .ply show the fine (densified) reconstruction, unless the coarse one is asked
for; a stage-coloured copy (unselected coarse Gaussians grey, leaves of stage 1 red, 2 green, 3 blue) shows where
the model densified.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from reconstruction.geometry import rotation_to_quaternion
from splatting.projection import quat_to_rotmat


def slerp(q0: Tensor, q1: Tensor, t: Tensor) -> Tensor:
    """Unit quaternions [F, 4] on the shortest arc from q0 to q1 ([4] each, w x y z) at t [F] (any real t:
    t outside [0, 1] continues the rotation at the same angular speed)."""
    q0, q1 = torch.nn.functional.normalize(q0, dim=-1), torch.nn.functional.normalize(q1, dim=-1)
    dot = float((q0 * q1).sum())
    if dot < 0:  # q and -q are the same rotation: take the shorter way round
        q1, dot = -q1, -dot
    t = t.to(q0.dtype)[:, None]
    angle = float(np.arccos(min(dot, 1.0)))
    if angle < 1e-6:  # (almost) the same rotation: linear interpolation is exact to rounding
        out = (1 - t) * q0 + t * q1
    else:
        out = (torch.sin((1 - t) * angle) * q0 + torch.sin(t * angle) * q1) / np.sin(angle)
    return torch.nn.functional.normalize(out, dim=-1)


def interpolate_cameras(c2w_a: Tensor, c2w_b: Tensor, intrinsics_a: Tensor, intrinsics_b: Tensor,
                        num_frames: int, extrapolate: float = 0.0) -> tuple[Tensor, Tensor]:
    """(camera-to-world [F, 4, 4], normalized intrinsics [F, 3, 3]) of a path from camera a to camera b,
    extended by `extrapolate` (a fraction of the a-b segment) beyond both ends."""
    if num_frames < 2:
        raise ValueError(f"interpolate_cameras: need at least 2 frames, got {num_frames}")
    c2w_a, c2w_b = c2w_a.double(), c2w_b.double()
    t = torch.linspace(-extrapolate, 1 + extrapolate, num_frames, dtype=torch.float64)
    quats = slerp(rotation_to_quaternion(c2w_a[:3, :3]), rotation_to_quaternion(c2w_b[:3, :3]), t)
    c2w = torch.eye(4, dtype=torch.float64).repeat(num_frames, 1, 1)
    c2w[:, :3, :3] = quat_to_rotmat(quats)
    c2w[:, :3, 3] = (1 - t)[:, None] * c2w_a[:3, 3] + t[:, None] * c2w_b[:3, 3]
    ka, kb = intrinsics_a.double(), intrinsics_b.double()
    intrinsics = (1 - t)[:, None, None] * ka + t[:, None, None] * kb
    return c2w.float(), intrinsics.float()


@torch.no_grad()
def render_path(gaussians, c2w: Tensor, intrinsics: Tensor, width: int, height: int, backend: str = "auto",
                chunk: int = 8):
    """(colour [F, 3, H, W] in [0, 1], depth [F, 1, H, W], alpha [F, 1, H, W]) of one scene along a path."""
    from reconstruction.views import to_cameras
    from splatting import render

    device = gaussians.means.device
    colors, depths, alphas = [], [], []
    for start in range(0, c2w.shape[0], chunk):
        views = {"extrinsics": c2w[None, start:start + chunk].to(device),
                 "intrinsics": intrinsics[None, start:start + chunk].to(device)}
        out = render(gaussians, to_cameras(views, width=width, height=height), backend=backend)
        colors.append(out.color[0].clamp(0, 1).cpu())
        depths.append(out.depth[0].cpu())
        alphas.append(out.alpha[0].cpu())
    return torch.cat(colors), torch.cat(depths), torch.cat(alphas)


def side_by_side_frames(color: Tensor, depth: Tensor, alpha: Tensor) -> np.ndarray:
    """uint8 [F, H, 2W, 3]: colour | depth, the depth normalized over the whole video (near = bright, empty =
    black) so that its brightness does not flicker."""
    from training.video_utils import finite_range, masked_depth, normalize_depth, to_uint8

    d = masked_depth(depth, alpha).float().numpy()
    lo, hi = finite_range(d)
    known = np.isfinite(lo) & np.isfinite(hi)
    video_lo = np.full_like(lo, lo[known].min() if known.any() else np.inf)
    video_hi = np.full_like(hi, hi[known].max() if known.any() else -np.inf)
    depth_img = torch.from_numpy(normalize_depth(d, video_lo, video_hi))
    return np.concatenate([to_uint8(color, drange=(0, 1)), to_uint8(depth_img)], axis=2)


def write_video(path: str, frames: np.ndarray, fps: float = 30) -> str:
    """frames uint8 [F, H, W, 3] -> H.264 mp4 at `path`, written atomically."""
    from training.video_utils import AtomicMp4Writer

    with AtomicMp4Writer(path, fps=fps) as writer:
        for frame in frames:
            writer.append(frame)
    return path


def write_reconstruction_ply(path: str, gaussians) -> str:
    """One scene's Gaussians (B = 1) as a 3DGS .ply in the world frame as it is (OpenCV cameras), atomically."""
    from splatting import write_ply

    write_ply(os.fspath(path), gaussians.map(lambda t: t.detach().float().cpu()))
    return path


# Colours of the Gaussians by densification stage: index 0 = unselected coarse, l = leaves of stage l.
STAGE_COLORS = ((0.5, 0.5, 0.5), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0),
                (1.0, 0.0, 1.0), (0.0, 1.0, 1.0))


def color_by_stage(gaussians, stage_ids: Tensor):
    """Gaussians [B, N] with every one's colour set to STAGE_COLORS[stage] (view-independent: SH DC =
    (colour - 0.5) / SH_C0, the higher coefficients zero); geometry and opacity unchanged."""
    from splatting.sh import SH_C0

    if int(stage_ids.max()) >= len(STAGE_COLORS):
        raise ValueError(f"color_by_stage: {int(stage_ids.max())} stages, colours for at most "
                         f"{len(STAGE_COLORS) - 1}")
    palette = torch.tensor(STAGE_COLORS, dtype=gaussians.sh.dtype, device=gaussians.sh.device)
    sh = torch.zeros_like(gaussians.sh)
    sh[:, :, 0] = (palette[stage_ids.to(gaussians.sh.device)] - 0.5) / SH_C0
    return type(gaussians)(means=gaussians.means, log_scales=gaussians.log_scales, quats=gaussians.quats,
                           opacity_logits=gaussians.opacity_logits, sh=sh)


def load_scene_views(root: str, split: str, key: str, frames, image_shape, near: float, far: float) -> dict:
    """VIEWS (reconstruction.views layout, no batch dimension) of frames `frames` of scene `key`; a ChunkError
    names the dataset, key and frame when the key or a frame does not exist."""
    from reconstruction.chunks import ChunkError, ChunkStore, decode_image, parse_cameras
    from reconstruction.dataset import make_views

    store = ChunkStore(root, split, cache_chunks=1)
    if key not in store:
        raise ChunkError(f"{os.path.join(root, split)}: no scene with key {key!r}")
    example = store.get(key)
    where = f"{store.path_of(key)}: key {key!r}"
    count = len(example["images"])
    frames = [int(f) for f in frames]
    if len(frames) < 2 or len(set(frames)) != len(frames):
        raise ChunkError(f"{where}: need at least 2 distinct context frames, got {frames}")
    for frame in frames:
        if not 0 <= frame < count:
            raise ChunkError(f"{where}: context frame {frame} out of range (scene has {count} frames)")
    extrinsics, intrinsics = parse_cameras(example["cameras"], f"{where}: field 'cameras'")
    images = {f: decode_image(example["images"][f], f"{where}: frame {f}") for f in frames}
    return make_views(torch.tensor(frames, dtype=torch.int64), extrinsics, intrinsics, images,
                      tuple(image_shape), near, far)


@torch.no_grad()
def render_reconstruction(encoder, views: dict, outdir: str, name: str, frames: int = 120,
                          extrapolate: float = 0.25, fps: float = 30, ply: bool = True, backend: str = "auto",
                          device="cpu", densifier=None, coarse: bool = False, stages: bool = False) -> list[str]:
    """Reconstruct from `views` (unbatched context VIEWS), write NAME.mp4 (colour | depth along the path through
    the first two context cameras) and NAME.ply; returns the written paths. With `densifier`: of the fine
    Gaussians (coarse=True: the encoder's), and with stages=True also NAME-stages.mp4 / NAME-stages.ply coloured
    by densification stage."""
    from reconstruction.views import views_to

    if stages and densifier is None:
        raise ValueError("--color-by-stage needs a snapshot trained with generative densification")
    context = views_to({k: v[None] for k, v in views.items()}, device)
    out = encoder(context)
    gaussians, dense = out.gaussians, None
    if densifier is not None and (stages or not coarse):
        dense = densifier(context, out, backend=backend)
        if not coarse:
            gaussians = dense.gaussians
    height, width = views["image"].shape[-2:]
    c2w, intrinsics = interpolate_cameras(views["extrinsics"][0], views["extrinsics"][1], views["intrinsics"][0],
                                          views["intrinsics"][1], frames, extrapolate)
    outputs = [(name, gaussians)]
    if stages:
        outputs.append((f"{name}-stages", color_by_stage(dense.gaussians, dense.stage_ids)))
    written = []
    for stem, splats in outputs:
        color, depth, alpha = render_path(splats, c2w, intrinsics, int(width), int(height), backend=backend)
        written.append(write_video(os.path.join(outdir, f"{stem}.mp4"), side_by_side_frames(color, depth, alpha),
                                   fps))
        if ply:
            written.append(write_reconstruction_ply(os.path.join(outdir, f"{stem}.ply"), splats))
    return written
