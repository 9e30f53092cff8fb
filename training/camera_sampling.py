"""Camera poses for training and videos: EG3D's yaw/pitch samplers, FFHQ pose augmentation, video trajectories.

Parameterisation (EG3D, docs/official-release.md): yaw h and "vertical" angle v, both pi/2 for the frontal camera. v is
clamped to [1e-5, pi - 1e-5] and mapped to the polar angle phi = arccos(1 - 2 v / pi); the camera sits at
    origin = radius * (sin(phi) cos(pi - h), cos(phi), sin(phi) sin(pi - h))
on the sphere around the *world origin* (EG3D adds no look-at offset to the position), and looks at `lookat`
with splatting.cameras.look_at. So h = v = pi/2 gives origin (0, 0, radius) looking toward -z.

Every random function takes an optional torch.Generator and is deterministic for a seeded generator. Numbers are
drawn on the generator's device (CPU by default) in the order documented per function, then moved to `device`.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from splatting.cameras import LABEL_DIM, eg3d_label, look_at

# Per-dataset camera constants (docs/official-release.md).
FFHQ_FOCAL = 4.2647              # normalized focal length of the FFHQ / AFHQ labels
FFHQ_RADIUS = 2.7                # camera distance from the world origin
FFHQ_PIVOT = (0.0, 0.0, 0.2)     # look-at point for FFHQ videos
AFHQ_PIVOT = (0.0, 0.0, -0.06)
SHAPENET_RADIUS = 1.7
SHAPENET_FOCAL = 1.7074
SHAPENET_PIVOT = (0.0, 0.0, 0.0)

# FFHQ pose augmentation (docs/official-release.md): yaw ~ N(pi/2, yaw_std), v ~ U(v_mean +- v_half_range).
FFHQ_AUG_YAW_STD_DEG = 16.6108
FFHQ_AUG_PITCH_HALF_RANGE_DEG = 3 * 7.44043
FFHQ_AUG_PITCH_OFFSET_DEG = 5.15961   # v_mean = pi/2 - this
COMPAT_PI = 3.14                      # the official code writes pi as 3.14 in these constants
POLAR_EPS = 1e-5                      # v is clamped to [POLAR_EPS, pi - POLAR_EPS]

# Video trajectory (docs/official-release.md): yaw = pi/2 + 0.35 sin(2 pi t/T), v = pi/2 - 0.05 + 0.25 cos(2 pi t/T).
VIDEO_YAW_AMPLITUDE = 0.35
VIDEO_PITCH_AMPLITUDE = 0.25
VIDEO_PITCH_OFFSET = -0.05

DISTRIBUTIONS = ("gaussian", "uniform")


def _check_real(name: str, value, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name}: expected a number {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _check_lookat(lookat) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in lookat)
    except (TypeError, ValueError):
        raise ValueError(f"lookat: expected 3 floats (x, y, z), got {lookat!r}") from None
    if len(values) != 3 or not all(math.isfinite(x) for x in values):
        raise ValueError(f"lookat: expected 3 finite floats (x, y, z), got {lookat!r}")
    return values


def _draw(kind: str, n: int, generator: torch.Generator | None, device, dtype: torch.dtype) -> Tensor:
    """n standard normal ("gaussian") or U(-1, 1) ("uniform") numbers."""
    source = generator.device if generator is not None else torch.device("cpu")
    if kind == "gaussian":
        x = torch.randn(n, generator=generator, device=source, dtype=dtype)
    else:
        x = torch.rand(n, generator=generator, device=source, dtype=dtype) * 2 - 1
    if x.device == torch.device(device):
        return x
    return x.to(device, non_blocking=True)  # an asynchronous copy: the host does not wait for the device


def orbit_cam2world(yaw, pitch, radius: float = FFHQ_RADIUS, lookat=(0.0, 0.0, 0.0)) -> Tensor:
    """cam2world [..., 4, 4] for EG3D angles `yaw`, `pitch` (the v of the module docstring; tensors [...])."""
    radius = _check_real("radius", radius, 0.0, strict=True)
    lookat = _check_lookat(lookat)
    yaw = torch.as_tensor(yaw, dtype=torch.get_default_dtype()) if not torch.is_tensor(yaw) else yaw
    pitch = torch.as_tensor(pitch, dtype=yaw.dtype, device=yaw.device)
    yaw, pitch = torch.broadcast_tensors(yaw, pitch)
    v = pitch.clamp(POLAR_EPS, math.pi - POLAR_EPS)
    phi = torch.arccos(1 - 2 * v / math.pi)
    origin = radius * torch.stack(
        [torch.sin(phi) * torch.cos(math.pi - yaw), torch.cos(phi), torch.sin(phi) * torch.sin(math.pi - yaw)], dim=-1)
    target = origin.new_tensor(lookat)
    return look_at(origin, target)


def sample_cam2world(batch_size: int, horizontal_mean: float, vertical_mean: float, horizontal_stddev: float,
                     vertical_stddev: float, radius: float = FFHQ_RADIUS, lookat=(0.0, 0.0, 0.0),
                     distribution: str = "gaussian", generator: torch.Generator | None = None, device="cpu",
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """[B, 4, 4] cam2world of random cameras (EG3D's GaussianCameraPoseSampler / UniformCameraPoseSampler).

    gaussian: h ~ N(horizontal_mean, horizontal_stddev^2), v ~ N(vertical_mean, vertical_stddev^2);
    uniform:  h = horizontal_mean + U(-1, 1) * horizontal_stddev, likewise v.
    Draw order: B numbers for h, then B for v.
    """
    batch_size = _check_count("batch_size", batch_size)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution: expected one of {DISTRIBUTIONS}, got {distribution!r}")
    h_mean = _check_real("horizontal_mean", horizontal_mean)
    v_mean = _check_real("vertical_mean", vertical_mean)
    h_std = _check_real("horizontal_stddev", horizontal_stddev, 0.0)
    v_std = _check_real("vertical_stddev", vertical_stddev, 0.0)
    h = h_mean + _draw(distribution, batch_size, generator, device, dtype) * h_std
    v = v_mean + _draw(distribution, batch_size, generator, device, dtype) * v_std
    return orbit_cam2world(h, v, radius=radius, lookat=lookat)


def ffhq_pose_augmentation(labels: Tensor, prob: float, generator: torch.Generator | None = None,
                           compat: bool = False, radius: float = FFHQ_RADIUS, lookat=(0.0, 0.0, 0.0)) -> Tensor:
    """New labels [B, 25]: each row replaced with probability `prob` by a random FFHQ-like camera (docs/official-release.md).

    The replacement has yaw ~ N(PI/2, (PI * 16.6108/180)^2) and v ~ U(m +- PI * 3 * 7.44043/180) with
    m = PI/2 - PI * 5.15961/180, sits at `radius` around the world origin, looks at `lookat` and keeps the
    original row's intrinsics. PI is 3.14 with compat=True (as in the official code), else math.pi.
    Draw order: B uniforms for the mask, B normals for yaw, B uniforms for v. prob = 0 draws nothing.
    The new poses are computed where the numbers are drawn (the generator's device, CPU by default) and copied to
    the labels' device asynchronously: on a GPU the camera checks inside look_at then read host memory and the
    training step never waits for the device here.
    """
    if not isinstance(labels, Tensor) or not labels.is_floating_point():
        raise ValueError(f"labels: expected a floating-point torch.Tensor [B, 25], got {type(labels).__name__}")
    if labels.ndim != 2 or labels.shape[-1] != LABEL_DIM:
        raise ValueError(f"labels: expected shape [B, 25] (EG3D cam2world + intrinsics), got {list(labels.shape)}")
    prob = _check_real("prob", prob, 0.0)
    if prob > 1:
        raise ValueError(f"prob: expected a probability in [0, 1], got {prob!r}")
    radius = _check_real("radius", radius, 0.0, strict=True)
    lookat = _check_lookat(lookat)
    if prob == 0 or labels.shape[0] == 0:
        return labels.clone()
    pi = COMPAT_PI if compat else math.pi
    n, device, dtype = labels.shape[0], labels.device, labels.dtype
    host = generator.device if generator is not None else torch.device("cpu")
    replace = (_draw("uniform", n, generator, host, dtype) + 1) / 2 < prob
    yaw = pi / 2 + _draw("gaussian", n, generator, host, dtype) * (pi * FFHQ_AUG_YAW_STD_DEG / 180)
    v_mean = pi / 2 - FFHQ_AUG_PITCH_OFFSET_DEG / 180 * pi
    v = v_mean + _draw("uniform", n, generator, host, dtype) * (pi * FFHQ_AUG_PITCH_HALF_RANGE_DEG / 180)
    cam2world = orbit_cam2world(yaw, v, radius=radius, lookat=lookat).flatten(-2)
    augmented = torch.cat([cam2world.to(device, non_blocking=True), labels[:, 16:]], dim=-1)
    return torch.where(replace.to(device, non_blocking=True)[:, None], augmented, labels)


def frontal_label(radius: float = FFHQ_RADIUS, lookat=(0.0, 0.0, 0.0), focal: float = FFHQ_FOCAL,
                  compat: bool = False, device="cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """[25] label of the frontal camera (yaw = v = PI/2), used to condition ws for videos (docs/official-release.md)."""
    pi = COMPAT_PI if compat else math.pi
    angle = torch.tensor(pi / 2, dtype=dtype, device=device)
    focal = _check_real("focal", focal, 0.0, strict=True)
    return eg3d_label(orbit_cam2world(angle, angle, radius=radius, lookat=lookat), focal)


def video_trajectory_label(t, num_frames: int, radius: float = FFHQ_RADIUS, lookat=FFHQ_PIVOT,
                           focal: float = FFHQ_FOCAL, yaw_amplitude: float = VIDEO_YAW_AMPLITUDE,
                           pitch_amplitude: float = VIDEO_PITCH_AMPLITUDE, pitch_offset: float = VIDEO_PITCH_OFFSET,
                           compat: bool = False, device="cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Label(s) of frame `t` (int -> [25], tensor [...] -> [..., 25]) of the official video loop (docs/official-release.md).

    yaw = PI/2 + yaw_amplitude sin(2 PI t/T), v = PI/2 + pitch_offset + pitch_amplitude cos(2 PI t/T).
    """
    num_frames = _check_count("num_frames", num_frames)
    focal = _check_real("focal", focal, 0.0, strict=True)
    pi = COMPAT_PI if compat else math.pi
    t = torch.as_tensor(t, dtype=dtype, device=device)
    phase = 2 * pi * t / num_frames
    yaw_amplitude = _check_real("yaw_amplitude", yaw_amplitude)
    pitch_amplitude = _check_real("pitch_amplitude", pitch_amplitude)
    pitch_offset = _check_real("pitch_offset", pitch_offset)
    yaw = pi / 2 + yaw_amplitude * torch.sin(phase)
    v = pi / 2 + pitch_offset + pitch_amplitude * torch.cos(phase)
    return eg3d_label(orbit_cam2world(yaw, v, radius=radius, lookat=lookat), focal)


def orbit_labels(num_frames: int, radius: float = FFHQ_RADIUS, lookat=FFHQ_PIVOT, focal: float = FFHQ_FOCAL,
                 pitch: float = math.pi / 2, device="cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """[T, 25] labels of a full 360-degree turn at fixed v = `pitch`, starting at the frontal view."""
    num_frames = _check_count("num_frames", num_frames)
    focal = _check_real("focal", focal, 0.0, strict=True)
    pitch = _check_real("pitch", pitch)
    yaw = math.pi / 2 + 2 * math.pi * torch.arange(num_frames, dtype=dtype, device=device) / num_frames
    return eg3d_label(orbit_cam2world(yaw, torch.full_like(yaw, pitch), radius=radius, lookat=lookat), focal)
