"""Orbit videos of a generator: camera presets, seeds -> ws, keyframe interpolation of w, grid tiling, atomic mp4.

Layout (as in EG3D's gen_videos): the seeds fill a grid of `cols` x `rows` cells, row-major, and each cell gets
K = len(seeds) / cells consecutive seeds as keyframes. Over the T frames of the video each cell's w moves
through its K keyframes along a cubic spline (the keyframes are tiled `wraps` times on both sides so the loop
closes almost smoothly); with K = 1 w is constant. All cells of one frame are rendered in one generator call.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from splatting.cameras import eg3d_label
from torch_utils.misc import images_to_uint8
from training import camera_sampling as cs
from training.mp4_writer import AtomicMp4Writer  # noqa: F401  (re-exported for callers of render_video)

IMAGE_MODES = ("image", "image_depth", "image_alpha")
TRAJECTORIES = ("ffhq", "orbit")
EMPTY_ALPHA = 1e-3  # pixels with less coverage have no depth; they are drawn as "far"
# Limits refused up front (the work grows with them, and beyond them a typo, not an intent, is the likely cause).
MAX_LIST_LENGTH = 100_000    # entries of an integer list such as --point_index
MAX_SEEDS = 10_000           # --seeds: one generator call, one .ply and one still image per seed
MAX_FRAMES = 100_000         # --frames: 28 minutes at 60 fps
MAX_RESOLUTION = 4096        # --nrr
MAX_FRAME_SIDE = 8192        # a video frame (grid columns or rows x render resolution), H.264's practical limit
# Frames of a fixed scene rendered per rasterizer call: enough to share the per-call work, few enough that the
# per-view copies of the scene stay small (a FFHQ-512 scene is ~20 MB per view).
FRAMES_PER_CALL = 4


@dataclass(frozen=True)
class CameraPreset:
    """Where the video cameras sit: distance from the world origin, look-at point, normalized focal length."""

    radius: float
    lookat: tuple[float, float, float]
    focal: float
    trajectory: str  # default trajectory for this kind of data


# Camera rigs of docs/official-release.md. "shapes" (synthetic data) uses the FFHQ rig unless told otherwise.
CAMERA_PRESETS = {
    "ffhq": CameraPreset(cs.FFHQ_RADIUS, cs.FFHQ_PIVOT, cs.FFHQ_FOCAL, "ffhq"),
    "afhq": CameraPreset(cs.FFHQ_RADIUS, cs.AFHQ_PIVOT, cs.FFHQ_FOCAL, "ffhq"),
    "shapenet": CameraPreset(cs.SHAPENET_RADIUS, cs.SHAPENET_PIVOT, cs.SHAPENET_FOCAL, "orbit"),
}
CFG_PRESETS = {"ffhq": "ffhq", "afhq": "afhq", "shapenet": "shapenet", "shapes": "ffhq"}


def preset_for_snapshot(snapshot: dict) -> str:
    """Camera preset name from the snapshot's training options (cfg); ffhq when unknown."""
    options = snapshot.get("options")
    cfg = options.get("cfg") if isinstance(options, dict) else None
    return CFG_PRESETS.get(cfg, "ffhq")


# --------------------------------------------------------------------------------------------------
# Parsing command-line lists.
def parse_int_list(text: str, what: str = "value", max_count: int = MAX_LIST_LENGTH) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]. Ranges are inclusive; raises ValueError naming `what`, also for more than
    max_count entries (counted before any range is expanded)."""
    values: list[int] = []
    count = 0
    parts = [p.strip() for p in str(text).split(",")]
    if not text or any(not p for p in parts):
        raise ValueError(f"expected a comma-separated list of {what}s or ranges like 0-3,7, got {text!r}")
    for part in parts:
        lo, sep, hi = part.partition("-")
        try:
            start = int(lo)
            stop = int(hi) if sep else start
        except ValueError:
            raise ValueError(f"{part!r} is not a {what} or a range a-b of non-negative integers (in {text!r})") \
                from None
        if stop < start:
            raise ValueError(f"range {part!r} is empty (end < start)")
        count += stop - start + 1
        if count > max_count:
            raise ValueError(f"{text!r} lists more than {max_count:,} {what}s (at most {max_count:,} are supported)")
        values.extend(range(start, stop + 1))
    return values


def parse_grid(text: str) -> tuple[int, int]:
    """'3x2' -> (cols, rows) = (3, 2)."""
    cols, sep, rows = str(text).lower().partition("x")
    try:
        cols_i, rows_i = int(cols), int(rows)
    except ValueError:
        cols_i = rows_i = 0
    if not sep or cols_i < 1 or rows_i < 1:
        raise ValueError(f"expected COLSxROWS with positive integers, e.g. 2x2, got {text!r}")
    return cols_i, rows_i


def keyframes_per_cell(num_seeds: int, cols: int, rows: int) -> int:
    cells = cols * rows
    if num_seeds % cells != 0:
        raise ValueError(f"{num_seeds} seed(s) do not fill a {cols}x{rows} grid: the number of seeds must be a "
                         f"multiple of {cells} (each cell shows len(seeds) / {cells} keyframes)")
    return num_seeds // cells


# --------------------------------------------------------------------------------------------------
# Latents and cameras.
def seed_latents(seeds: list[int], z_dim: int) -> Tensor:
    """[S, z_dim] float32: z = RandomState(seed).randn(z_dim), the StyleGAN/EG3D convention."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def conditioning_label(preset: CameraPreset, compat: bool = False) -> Tensor:
    """[25] frontal camera looking at the preset's pivot: the camera ws are conditioned on (docs/official-release.md)."""
    return cs.frontal_label(radius=preset.radius, lookat=preset.lookat, focal=preset.focal, compat=compat)


@torch.no_grad()
def compute_ws(G, seeds: list[int], preset: CameraPreset, truncation_psi: float = 1.0,
               truncation_cutoff: int | None = None, device="cpu", batch: int = 32) -> Tensor:
    """[S, num_ws, w_dim] ws of the seeds, each from the frontal conditioning camera."""
    z = seed_latents(seeds, G.z_dim).to(device)
    c = conditioning_label(preset, compat=getattr(G, "compat", False)).to(device)
    chunks = [G.mapping(zb, c.expand(zb.shape[0], -1), truncation_psi=truncation_psi,
                        truncation_cutoff=truncation_cutoff) for zb in z.split(batch)]
    return torch.cat(chunks)


def trajectory_labels(trajectory: str, num_frames: int, preset: CameraPreset, compat: bool = False) -> Tensor:
    """[T, 25] labels of the video loop: 'ffhq' = EG3D's yaw/pitch wobble, 'orbit' = a full 360-degree turn."""
    if trajectory == "ffhq":
        return cs.video_trajectory_label(torch.arange(num_frames), num_frames, radius=preset.radius,
                                         lookat=preset.lookat, focal=preset.focal, compat=compat)
    if trajectory == "orbit":
        return cs.orbit_labels(num_frames, radius=preset.radius, lookat=preset.lookat, focal=preset.focal)
    raise ValueError(f"trajectory: expected one of {TRAJECTORIES}, got {trajectory!r}")


def yaw_sweep_labels(yaws, preset: CameraPreset) -> Tensor:
    """[V, 25] cameras at horizontal offsets `yaws` (radians) from the frontal view, level with the pivot."""
    yaw = math.pi / 2 + torch.as_tensor(yaws, dtype=torch.float32)
    cam2world = cs.orbit_cam2world(yaw, torch.full_like(yaw, math.pi / 2), radius=preset.radius,
                                   lookat=preset.lookat)
    return eg3d_label(cam2world, preset.focal)


# --------------------------------------------------------------------------------------------------
# Keyframes.
def cell_keyframes(ws: Tensor, cols: int, rows: int) -> Tensor:
    """[S, ...] -> [cells, K, ...]: cell i (row-major) holds seeds i*K .. i*K + K - 1."""
    k = keyframes_per_cell(ws.shape[0], cols, rows)
    return ws.reshape(cols * rows, k, *ws.shape[1:])


class KeyframeInterpolator:
    """w of every cell at a fractional keyframe position p in [0, K): a cubic spline through the keyframes.

    The keyframe sequence is repeated `wraps` times on each side (EG3D's trick) so the curve near p = 0 and
    p = K is almost periodic. With one keyframe the result is exactly that keyframe.
    """

    def __init__(self, keyframes: Tensor, wraps: int = 2):
        from scipy.interpolate import CubicSpline

        self.device, self.dtype = keyframes.device, keyframes.dtype
        self.num_keyframes = keyframes.shape[1]
        self._constant = keyframes[:, 0] if self.num_keyframes == 1 else None
        if self._constant is None:
            k = self.num_keyframes
            y = np.tile(keyframes.detach().cpu().double().numpy(), (1, 2 * wraps + 1) + (1,) * (keyframes.ndim - 2))
            x = np.arange(-k * wraps, k * (wraps + 1), dtype=np.float64)
            self._spline = CubicSpline(x, y, axis=1)

    def __call__(self, position: float) -> Tensor:
        if self._constant is not None:
            return self._constant
        value = self._spline(float(position))
        return torch.from_numpy(value).to(device=self.device, dtype=self.dtype)


# --------------------------------------------------------------------------------------------------
# Pixels.
def to_uint8(images: Tensor, drange=(-1.0, 1.0)) -> np.ndarray:
    """[N, C, H, W] in drange (C = 1 or 3) -> RGB frames uint8 [N, H, W, 3], grey repeated (the mp4 writer and
    still sheets take RGB); rounded by misc.quantize_uint8."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images_to_uint8(images, drange)


def tile_grid(cells: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """[cols*rows, H, W, C] -> [rows*H, cols*W, C], cell i at row i // cols, column i % cols."""
    n, h, w, c = cells.shape
    if n != cols * rows:
        raise ValueError(f"tile_grid: {n} cells do not fill a {cols}x{rows} grid")
    return np.ascontiguousarray(cells.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c))


def masked_depth(depth: Tensor, alpha: Tensor) -> Tensor:
    """Depth with NaN where nothing was rendered (alpha below EMPTY_ALPHA)."""
    return torch.where(alpha > EMPTY_ALPHA, depth, torch.full_like(depth, float("nan")))


def finite_range(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (min, max) over the finite values of [N, ...]; (inf, -inf) for an image with none."""
    flat = depth.reshape(depth.shape[0], -1)
    finite = np.isfinite(flat)
    return np.where(finite, flat, np.inf).min(axis=1), np.where(finite, flat, -np.inf).max(axis=1)


def normalize_depth(depth: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Negated, min-max normalized depth in [-1, 1] (near = bright); NaN (empty) -> -1 (far, black).

    depth [N, 1, H, W]; lo, hi [N]: the range per cell (the official script normalizes per image; gen_videos takes the
    range over a whole video so the brightness does not flicker)."""
    known = np.isfinite(lo) & np.isfinite(hi)
    lo = np.where(known, lo, 0.0).reshape(-1, 1, 1, 1)
    hi = np.where(known, hi, 1.0).reshape(-1, 1, 1, 1)
    x = 1 - 2 * (np.nan_to_num(depth, nan=np.inf) - lo) / np.maximum(hi - lo, 1e-8)
    return np.clip(x, -1, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The video.
def _frame_outputs(G, keyframes: Tensor, labels: Tensor, resolution: int | None, gs_params):
    """Yields the synthesis output of every frame (image, image_depth, image_alpha, gaussians), cells batched.

    With one keyframe per cell the scenes never change: they are generated once and their frames rendered
    FRAMES_PER_CALL at a time (one rasterizer call each), with the view colour of each frame's camera. Otherwise
    w moves every frame and each frame is one generator call for all cells."""
    num_frames, cells, k = labels.shape[0], keyframes.shape[0], keyframes.shape[1]
    labels = labels.to(device=keyframes.device, dtype=keyframes.dtype)
    if k == 1 and hasattr(G, "generate_scene"):
        with torch.no_grad():
            scene = G.generate_scene(keyframes[:, 0], gs_params)
        for start in range(0, num_frames, FRAMES_PER_CALL):
            views = labels[start:start + FRAMES_PER_CALL]
            with torch.no_grad():
                out = G.render_scene(scene, views.unsqueeze(0).expand(cells, -1, -1), resolution)
            step = views.shape[0]
            for j in range(step):  # the rendered Gaussians are in (cell, view) order
                yield dict({key: out[key][:, j] for key in IMAGE_MODES},
                           gaussians=out["gaussians"].map(lambda t: t[j::step]))  # noqa: B023  (used at once)
        return
    interp = KeyframeInterpolator(keyframes)
    for t in range(num_frames):
        ws = interp(t * k / num_frames)
        with torch.no_grad():
            yield G.synthesis(ws, labels[t:t + 1].expand(cells, -1), neural_rendering_resolution=resolution,
                              gs_params=gs_params)


def check_video_size(cols: int, rows: int, resolution: int, num_frames: int, image_mode: str, directory: str) -> None:
    """Refuse, before rendering, a video whose frames exceed MAX_FRAME_SIDE, or a depth video whose scratch file
    (every frame's float32 depth, kept to normalize over the whole video) does not fit on the disk."""
    width, height = cols * resolution, rows * resolution
    if max(width, height) > MAX_FRAME_SIDE:
        raise ValueError(f"a {cols}x{rows} grid at render resolution {resolution} makes {width}x{height} frames; "
                         f"at most {MAX_FRAME_SIDE} pixels per side are supported (use a smaller --grid or --nrr)")
    if image_mode == "image_depth":
        import shutil

        need = num_frames * width * height * 4
        free = shutil.disk_usage(directory).free
        if need > free:
            raise ValueError(f"--image_mode image_depth: {num_frames} frames of {width}x{height} need "
                             f"{need / 1e9:.1f} GB of scratch space in {directory}, only {free / 1e9:.1f} GB are "
                             f"free (use fewer --frames)")


@torch.no_grad()
def render_video(G, keyframes: Tensor, labels: Tensor, path: str, cols: int, rows: int, image_mode: str = "image",
                 resolution: int | None = None, gs_params=None, fps: float = 60, bitrate: str = "10M",
                 progress: bool = True) -> str:
    """Render keyframes [cells, K, num_ws, w_dim] along labels [T, 25] into the mp4 `path` (atomic).

    image_mode: image (colour), image_depth (negated depth, min-max over the video per cell, empty = black) or
    image_alpha (coverage). Returns path.
    """
    from tqdm import tqdm

    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image_mode: expected one of {IMAGE_MODES}, got {image_mode!r}")
    num_frames = labels.shape[0]
    outputs = tqdm(_frame_outputs(G, keyframes, labels, resolution, gs_params), total=num_frames,
                   desc=os.path.basename(path), unit="frame", disable=not progress, leave=False)
    with AtomicMp4Writer(path, fps=fps, bitrate=bitrate) as writer:
        if image_mode != "image_depth":
            for out in outputs:
                x = out["image"] if image_mode == "image" else out["image_alpha"] * 2 - 1
                writer.append(tile_grid(to_uint8(x), cols, rows))
            return path
        # Depth needs the range of the whole video first: keep the frames in a scratch file next to the video.
        with tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(path))) as scratch:
            store = lo = hi = None
            for t, out in enumerate(outputs):
                depth = masked_depth(out["image_depth"], out["image_alpha"]).float().cpu().numpy()
                if store is None:
                    store = np.memmap(scratch, dtype=np.float32, mode="w+", shape=(num_frames, *depth.shape))
                    lo, hi = np.full(depth.shape[0], np.inf), np.full(depth.shape[0], -np.inf)
                store[t] = depth
                frame_lo, frame_hi = finite_range(depth)
                lo, hi = np.minimum(lo, frame_lo), np.maximum(hi, frame_hi)
            for t in range(num_frames):
                x = torch.from_numpy(normalize_depth(np.asarray(store[t]), lo, hi))
                writer.append(tile_grid(to_uint8(x), cols, rows))
            del store
    return path


def video_filename(seeds: list[int], image_mode: str = "image") -> str:
    """seed0000-0003.mp4 (first-last seed; seed0007.mp4 for one seed), -depth / -alpha for the other modes."""
    name = f"seed{seeds[0]:04d}" + (f"-{seeds[-1]:04d}" if len(seeds) > 1 else "")
    return name + {"image": "", "image_depth": "-depth", "image_alpha": "-alpha"}[image_mode] + ".mp4"
