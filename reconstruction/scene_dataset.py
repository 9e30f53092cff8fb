"""The built-in scenes as a dataset (`dataset_tool.py scenes`): scene keys and seeds, evaluation views, encoded
frames of one scene per job."""
from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from .scene_raycast import camera_rays, render
from .synthetic_scenes import SceneError, sample_scene

SPLIT_CODES = {"train": 0, "test": 1}
CONTEXT_GAP = (10, 14)  # evaluation context gap range (frames), see evaluation_views


def scene_key(seed: int, split: str, index: int) -> str:
    """16 hex characters (RealEstate10K-like) derived from (seed, split, index)."""
    return hashlib.sha256(f"gsgan-scenes/{int(seed)}/{split}/{int(index)}".encode()).hexdigest()[:16]


def scene_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of one scene (stream 0) or of its evaluation views (stream 1); independent of counts."""
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index), int(stream)])


def evaluation_views(seed: int, index: int, frames: int) -> dict:
    """{"context": [i, j], "target": [k, l, m]} for test scene `index`: a context gap drawn from CONTEXT_GAP
    (10 frames give 10-25% image-width parallax, 14 still overlap mostly; shorter sequences shrink it), targets
    at the quarter points strictly between the two context views."""
    if frames < 5:
        raise SceneError(f"frames: expected at least 5 frames for 2 context views and 3 targets, got {frames}")
    rng = scene_rng(seed, "test", index, stream=1)
    high = min(CONTEXT_GAP[1], frames - 1)
    gap = int(rng.integers(min(CONTEXT_GAP[0], high), high + 1))
    first = int(rng.integers(0, frames - gap))
    targets = [first + int(np.floor(gap * q + 0.5)) for q in (0.25, 0.5, 0.75)]
    return {"context": [first, first + gap], "target": targets}


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """PNG (compression level 6) or JPEG (4:4:4 chroma, so fine colour detail survives) bytes of uint8 [H, W, 3]."""
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    elif fmt == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=int(quality), subsampling=0)
    else:
        raise SceneError(f"--format: expected png or jpeg, got {fmt!r}")
    return buf.getvalue()


def render_scene_job(job: tuple) -> dict:
    """One scene's frames for job = (seed, split, index, frames, width, height, supersample, format, quality[,
    detail]) (detail: DETAIL_LEVELS, "standard" when absent).

    Returns plain numpy/bytes (no torch, so spawn workers stay light): key, url (seed/split/index/path kind),
    cam2world [N, 4, 4], intrinsics [N, 3, 3] normalized, images (list of encoded bytes), path kind."""
    seed, split, index, frames, width, height, supersample, fmt, quality = job[:9]
    detail = job[9] if len(job) > 9 else "standard"
    scene, trajectory = sample_scene(scene_rng(seed, split, index), frames, width, height, detail)
    rays = camera_rays(trajectory.intrinsics, width * supersample, height * supersample)
    images = [encode_image(render(scene, c2w, trajectory.intrinsics, width, height, supersample, rays=rays), fmt,
                           quality) for c2w in trajectory.cam2world]
    return {"key": scene_key(seed, split, index), "url": f"gsgan-scenes:seed={seed}/{split}/{index}/{trajectory.kind}",
            "cam2world": trajectory.cam2world,
            "intrinsics": np.broadcast_to(trajectory.intrinsics, (frames, 3, 3)).copy(), "images": images,
            "path": trajectory.kind}
