"""Procedural indoor multi-view scenes: reconstruction data that needs no download (rendered by scene_raycast.py,
written as a dataset by scene_dataset.py).

A scene is a closed, textured room (walls, floor, ceiling) holding small objects (boxes, spheres, cylinders) and
thin structures (floor-to-ceiling poles, thin bars, wall-to-wall wires), seen by a camera that walks through the
room (forward, sideways or diagonally, turning a little: RealEstate10K-like) or orbits an object. Textures are
solid textures of each surface's own coordinates (checkers, stripes, tile grids, planks, checkers with fine
stripes, at several frequencies and orientations, some near the pixel scale at 64x64), so a surface point has the
same colour from every viewpoint. Shading is Lambert with a key and a fill light plus ambient; no shadows.

Geometric guarantees (by construction, checked by the tests):
- every ray hits the room, so there is no background;
- every camera keeps `clearance(intrinsics)` from all geometry, a distance that puts every visible surface at a
  camera z-depth >= 1 (a point of the frustum with z < 1 lies closer than sqrt(1 + tan_x^2 + tan_y^2));
- the room's diagonal is below 20, so every visible surface has z-depth <= 20.

Conventions: world y up, floor at y = 0; cameras are OpenCV camera-to-world matrices (x right, y down, z forward)
with normalized intrinsics (row 0 divided by the width, row 1 by the height), pixel (i, j) centred at
(i + 0.5, j + 0.5). Everything is numpy and seeded, so identical options give identical images; the module does
not import torch, which keeps spawn workers light.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KIND_BOX, KIND_SPHERE, KIND_CYLINDER = 0, 1, 2  # cylinders: axis = local z, size = (radius, radius, half length)
PLAIN, CHECKER, STRIPES, GRID, PLANKS, CHECKER_STRIPES = range(6)
CORNER_SIGNS = np.array(np.meshgrid([-1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0])).reshape(3, -1).T  # [8, 3] of a unit box
NUM_ROOM_FACES = 6  # surface ids 0..5: walls x-, x+, floor, ceiling, walls z-, z+; objects follow
MAX_DEPTH = 20.0  # visible surfaces lie at camera z-depth in [MIN_DEPTH, MAX_DEPTH]
MIN_DEPTH = 1.0
MIN_CLEARANCE = 1.2
MAX_ASPECT = 3.0  # width/height (or height/width) beyond this needs a room taller or wider than MAX_DEPTH allows


# "standard": the patterns alone. "rich": every surface also carries a solid speckle of random-brightness cells a few
# pixels wide at typical viewing distances (2-6 cells per world unit; a unit spans ~17 px at depth 3.3 at 64x64),
# the pixel-scale detail that one Gaussian per pixel blurs: data on which densification has something to add.
DETAIL_LEVELS = ("standard", "rich")
SPECKLE_FREQ = (2.0, 6.0)
SPECKLE_CONTRAST = (0.2, 0.4)


class SceneError(ValueError):
    """Options the scene generator cannot honour (one line naming the option)."""


@dataclass(frozen=True)
class Scene:
    """A room [room_lo, room_hi] with P objects and S = 6 + P surface materials (numpy float64 arrays)."""

    room_lo: np.ndarray  # [3]
    room_hi: np.ndarray  # [3]
    kind: np.ndarray  # [P] int: KIND_*
    center: np.ndarray  # [P, 3]
    rotation: np.ndarray  # [P, 3, 3] local -> world (columns are the local axes)
    size: np.ndarray  # [P, 3] half extents along the local axes
    pattern: np.ndarray  # [S] int: PLAIN, CHECKER, ...
    frame: np.ndarray  # [S, 3, 3] rows: the texture's axes in the surface's local coordinates
    freq: np.ndarray  # [S, 2] coarse and fine frequency (cycles per world unit)
    phase: np.ndarray  # [S, 3]
    colors: np.ndarray  # [S, 3, 3] three albedos per surface (RGB in [0, 1])
    speckle: np.ndarray  # [S, 2] frequency (cells per world unit) and contrast of a fine speckle; 0 = none
    light_dir: np.ndarray  # [2, 3] key and fill light directions (unit, toward the light)
    light_weight: np.ndarray  # [2]
    ambient: float

    @property
    def num_objects(self) -> int:
        return int(self.kind.shape[0])


@dataclass(frozen=True)
class Trajectory:
    """N camera-to-world matrices [N, 4, 4] (OpenCV axes), one normalized intrinsics [3, 3], and the path kind."""

    cam2world: np.ndarray
    intrinsics: np.ndarray
    kind: str  # "walk" or "orbit"


# ----------------------------------------------------------------------------------------------------------
# Cameras


def clearance(intrinsics: np.ndarray) -> float:
    """Distance every camera keeps from all geometry: enough for z-depth >= MIN_DEPTH in the whole frustum."""
    tan_x, tan_y = 0.5 / intrinsics[0, 0], 0.5 / intrinsics[1, 1]  # principal point at the centre
    return max(MIN_CLEARANCE, MIN_DEPTH * float(np.sqrt(1.0 + tan_x ** 2 + tan_y ** 2))) + 0.05


def centred_intrinsics(fov_x_deg: float, width: int, height: int) -> np.ndarray:
    """Normalized intrinsics with horizontal FoV fov_x, square pixels and the principal point at the centre."""
    fx = 0.5 / np.tan(np.radians(fov_x_deg) / 2.0)
    return np.array([[fx, 0.0, 0.5], [0.0, fx * width / height, 0.5], [0.0, 0.0, 1.0]])


def look_direction(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Unit world directions [..., 3] for yaw (about +y, 0 looks along +z) and pitch (positive looks up)."""
    return np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], axis=-1)


def camera_to_world(position: np.ndarray, forward: np.ndarray, roll: np.ndarray | float = 0.0) -> np.ndarray:
    """OpenCV cam2world [N, 4, 4] looking along `forward` [N, 3] with world y up, rolled by `roll` radians.

    right = forward x up, down = forward x right (the basis of splatting.cameras.look_at)."""
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(forward, right)
    roll = np.broadcast_to(np.asarray(roll, dtype=np.float64), forward.shape[:-1])[..., None]
    right, down = np.cos(roll) * right + np.sin(roll) * down, np.cos(roll) * down - np.sin(roll) * right
    out = np.zeros(forward.shape[:-1] + (4, 4))
    out[..., :3, 0], out[..., :3, 1], out[..., :3, 2], out[..., :3, 3] = right, down, forward, position
    out[..., 3, 3] = 1.0
    return out


# ----------------------------------------------------------------------------------------------------------
# Camera paths


def _fit_start(offsets: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator, prefer_y=None):
    """A start point p0 with p0 + offsets inside [lo, hi] on every axis (None if the path does not fit)."""
    start_lo, start_hi = lo - offsets.min(axis=0), hi - offsets.max(axis=0)
    if (start_lo > start_hi).any():
        return None
    start = rng.uniform(start_lo, start_hi)
    if prefer_y is not None:  # eye height when it fits
        start[1] = np.clip(prefer_y, start_lo[1], start_hi[1])
    return start


def _walk(rng: np.random.Generator, frames: int, lo: np.ndarray, hi: np.ndarray):
    """Positions [N, 3], yaw [N], pitch [N] of a straight walk with sway, moving forward, sideways or diagonally.

    Ten frames move the camera 0.45-1.2 units (more when walking forward, which gives less parallax at the image
    centre), i.e. nearby objects shift by roughly 10-25% of the image width. A walk that does not fit the room is
    retried in another direction, then slowed down (only long sequences in small rooms need that)."""
    k = np.arange(frames, dtype=np.float64)
    for attempt in range(60):
        mode = rng.choice(3, p=[0.3, 0.4, 0.3])  # forward, sideways, diagonal
        relative = [rng.normal(0.0, 0.12), rng.choice([-1, 1]) * (np.pi / 2 + rng.normal(0.0, 0.12)),
                    rng.choice([-1, 1]) * (np.pi / 4 + rng.normal(0.0, 0.12))][mode]
        step = [rng.uniform(0.07, 0.12), rng.uniform(0.045, 0.075), rng.uniform(0.055, 0.09)][mode]
        step *= 0.85 ** max(0, attempt - 30)
        yaw0 = rng.uniform(-np.pi, np.pi)
        move = look_direction(np.array(yaw0 + relative), np.array(0.0))
        side = np.array([move[2], 0.0, -move[0]])
        sway = rng.uniform(0.0, 0.08) * np.sin(2 * np.pi * k / rng.uniform(25, 60) + rng.uniform(0, 2 * np.pi))
        bob = rng.uniform(0.0, 0.03) * np.sin(2 * np.pi * k / rng.uniform(15, 30) + rng.uniform(0, 2 * np.pi))
        offsets = (step * k)[:, None] * move + sway[:, None] * side + bob[:, None] * np.array([0.0, 1.0, 0.0])
        start = _fit_start(offsets, lo, hi, rng, prefer_y=rng.uniform(1.3, 1.8))
        if start is not None:
            break
    else:
        raise SceneError(f"frames: a walk of {frames} frames does not fit the room; use fewer frames")
    turn = rng.uniform(-0.35, 0.35)  # total yaw change over the sequence (radians)
    s = k / max(frames - 1, 1) - 0.5
    yaw = yaw0 + turn * s + 0.04 * np.sin(2 * np.pi * k / rng.uniform(20, 50) + rng.uniform(0, 2 * np.pi))
    pitch = rng.uniform(-0.2, 0.1) + 0.03 * np.sin(2 * np.pi * k / rng.uniform(20, 50) + rng.uniform(0, 2 * np.pi))
    return start + offsets, yaw, pitch


def _orbit(rng: np.random.Generator, frames: int, lo: np.ndarray, hi: np.ndarray, room_lo, room_hi):
    """Positions [N, 3] on an arc around a floor point, and the look-at target [3] (None if nothing fits)."""
    k = np.arange(frames, dtype=np.float64)
    for _ in range(60):
        radius = rng.uniform(2.4, 3.6)
        centre = np.array([rng.uniform(room_lo[0] + 1.0, room_hi[0] - 1.0), 0.0,
                           rng.uniform(room_lo[2] + 1.0, room_hi[2] - 1.0)])
        arc_per_frame = rng.uniform(0.05, 0.08) / radius * rng.choice([-1, 1])
        angle = rng.uniform(-np.pi, np.pi) + arc_per_frame * k
        height = np.clip(rng.uniform(1.2, 2.0) + 0.02 * np.sin(k / 7.0), lo[1], hi[1])
        positions = centre + np.stack([radius * np.sin(angle), height, radius * np.cos(angle)], axis=-1)
        if (positions >= lo).all() and (positions <= hi).all():
            return positions, centre + np.array([0.0, rng.uniform(0.3, 0.9), 0.0])
    return None


def sample_trajectory(rng: np.random.Generator, frames: int, width: int, height: int, room_lo, room_hi,
                      fov_x_deg: float):
    """(Trajectory, orbit centre [3] or None) for a room: 75% walks, 25% orbits (a walk if no orbit fits)."""
    intrinsics = centred_intrinsics(fov_x_deg, width, height)
    margin = clearance(intrinsics) + 0.02
    lo, hi = room_lo + margin, room_hi - margin
    orbit = _orbit(rng, frames, lo, hi, room_lo, room_hi) if rng.random() < 0.25 else None
    if orbit is not None:
        positions, target = orbit
        jitter = 0.05 * np.sin(np.arange(frames)[:, None] / np.array([5.0, 7.0, 6.0]))
        forward = target + jitter - positions
        kind = "orbit"
    else:
        positions, yaw, pitch = _walk(rng, frames, lo, hi)
        forward = look_direction(yaw, pitch)
        target, kind = None, "walk"
    roll = rng.uniform(-0.03, 0.03) + 0.01 * np.sin(np.arange(frames) / 9.0)
    return Trajectory(camera_to_world(positions, forward, roll), intrinsics, kind), target


# ----------------------------------------------------------------------------------------------------------
# Materials


def _random_color(rng: np.random.Generator) -> np.ndarray:
    """A colour of random hue; saturation and brightness vary from grey-ish pastel to vivid."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.15, 0.9), rng.uniform(0.3, 0.95)
    rgb = np.clip(np.abs(np.mod(hue * 6.0 + np.array([0.0, 4.0, 2.0]), 6.0) - 3.0) - 1.0, 0.0, 1.0)
    return val * (1.0 - sat + sat * rgb)


def _contrasting_colors(rng: np.random.Generator) -> np.ndarray:
    """Three albedos [3, 3]; the second differs from the first in brightness by >= 0.2 (visible patterns)."""
    first = _random_color(rng)
    for _ in range(50):
        second = _random_color(rng)
        if abs(second.mean() - first.mean()) >= 0.2:
            break
    return np.stack([first, second, _random_color(rng)])


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about a unit axis (Rodrigues)."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    axis = rng.normal(size=3)
    return _rotation(axis / np.linalg.norm(axis), rng.uniform(-np.pi, np.pi))


def _material(rng: np.random.Generator, patterns, weights, freq_range, normal=None) -> dict:
    """A random material: pattern, texture axes (in-plane for a planar surface with `normal`), frequencies."""
    pattern = int(rng.choice(patterns, p=np.asarray(weights) / np.sum(weights)))
    if normal is None:
        frame = _random_rotation(rng)
    else:  # two in-plane axes, rotated by a random angle (often axis-aligned, like real walls and floors)
        normal = np.asarray(normal, dtype=np.float64)
        helper = np.array([0.0, 1.0, 0.0]) if abs(normal[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        u = np.cross(helper, normal)
        u /= np.linalg.norm(u)
        angle = rng.choice([0.0, np.pi / 2, rng.uniform(-np.pi, np.pi)], p=[0.35, 0.35, 0.3])
        u = _rotation(normal, angle) @ u
        frame = np.stack([u, np.cross(normal, u), normal])
    lo, hi = freq_range
    coarse = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    fine = coarse * rng.uniform(3.0, 6.0)
    return dict(pattern=pattern, frame=frame, freq=np.array([coarse, fine]), phase=rng.uniform(0, 1, 3),
                colors=_contrasting_colors(rng))


def _fract(x: np.ndarray) -> np.ndarray:
    """x - floor(x) (np.mod is an order of magnitude slower)."""
    return x - np.floor(x)


def _hash01(values: np.ndarray, salt: float) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integer-valued floats (per-plank colour jitter)."""
    return _fract(np.sin(values * 12.9898 + salt * 78.233) * 43758.5453)


def _parity(cells: np.ndarray) -> np.ndarray:
    """1.0 where the integer-valued float is odd, else 0.0."""
    return cells - 2.0 * np.floor(cells * 0.5)


def albedo(scene: Scene, surface: int, local: np.ndarray) -> np.ndarray:
    """Albedo [3, M] of `surface` at points [3, M] given in the surface's local coordinates."""
    dtype = local.dtype
    q = scene.frame[surface].astype(dtype) @ local  # texture coordinates [3, M]
    coarse, fine = (float(v) for v in scene.freq[surface])
    ph = [float(v) for v in scene.phase[surface]]
    colors = scene.colors[surface].astype(dtype)
    kind = int(scene.pattern[surface])
    mix = third = None  # weights of colour 1, and of colour 2 on top
    if kind == CHECKER:
        cells = np.floor(coarse * q[0] + ph[0]) + np.floor(coarse * q[1] + ph[1]) + np.floor(coarse * q[2] + ph[2])
        mix = _parity(cells)
    elif kind == STRIPES:
        mix = (_fract(coarse * q[0] + ph[0]) < 0.3 + 0.4 * ph[2]).astype(dtype)
    elif kind == GRID:  # tiles with thin grout lines, plus a few coloured tiles
        u, v = coarse * q[0] + ph[0], coarse * q[1] + ph[1]
        mix = ((_fract(u) < 0.1) | (_fract(v) < 0.1)).astype(dtype)
        third = (_hash01(np.floor(u) * 57.0 + np.floor(v), ph[2]) < 0.15) * (1.0 - mix)
    elif kind == PLANKS:  # rows of planks (colour jitter per plank), seams along and across
        across = coarse * q[1] + ph[1]
        row = np.floor(across)
        along = fine * 0.25 * q[0] + _hash01(row, ph[2])
        mix = 0.25 + 0.5 * _hash01(np.floor(along) * 31.0 + row, ph[0])
        third = ((across - row < 0.07) | (_fract(along) < 0.03)).astype(dtype)
    elif kind == CHECKER_STRIPES:  # coarse checker; one colour carries fine diagonal stripes
        mix = _parity(np.floor(coarse * q[0] + ph[0]) + np.floor(coarse * q[1] + ph[1]))
        third = mix * (_fract(fine * 0.7071 * (q[0] + q[1]) + ph[2]) < 0.5)
    if mix is None:
        out = np.broadcast_to(colors[0][:, None], local.shape).copy()
    else:
        out = colors[0][:, None] + (colors[1] - colors[0])[:, None] * mix
        if third is not None:
            out += (colors[2][:, None] - out) * third
    freq, contrast = (float(v) for v in scene.speckle[surface])
    if contrast > 0:  # brightness of each solid cell scaled by 1 +- contrast
        cells = np.floor(freq * q + np.asarray(ph, dtype=dtype)[:, None])
        noise = _hash01(cells[0] * 57.0 + cells[1] * 113.0 + cells[2] * 271.0, ph[0] + ph[1])
        out *= 1.0 + contrast * (2.0 * noise - 1.0)
    return out


# ----------------------------------------------------------------------------------------------------------
# Scene sampling


def signed_distance(scene: Scene, points: np.ndarray) -> np.ndarray:
    """Distance [M] from points [M, 3] (inside the room) to the nearest surface: walls, floor, ceiling, objects."""
    dist = np.minimum(points - scene.room_lo, scene.room_hi - points).min(axis=1)
    for p in range(scene.num_objects):
        dist = np.minimum(dist, _object_distance(int(scene.kind[p]), scene.center[p], scene.rotation[p],
                                                 scene.size[p], points))
    return dist


def _object_distance(kind: int, center, rotation, size, points: np.ndarray) -> np.ndarray:
    """Exact signed distance [M] from world points to one box / sphere / capped cylinder."""
    local = (points - center) @ rotation
    if kind == KIND_SPHERE:
        return np.linalg.norm(local, axis=1) - size[0]
    if kind == KIND_BOX:
        q = np.abs(local) - size
    else:
        q = np.stack([np.hypot(local[:, 0], local[:, 1]) - size[0], np.abs(local[:, 2]) - size[2]], axis=1)
    return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)


def _inside_room(kind: int, center, rotation, size, room_lo, room_hi, margin: float = 0.01) -> bool:
    corners = center + (CORNER_SIGNS * size) @ rotation.T
    if kind == KIND_SPHERE:
        corners = center + np.array([[-1, -1, -1], [1, 1, 1]]) * size[0]
    return bool((corners >= room_lo + margin).all() and (corners <= room_hi - margin).all())


def _span_to_walls(point, direction, room_lo, room_hi) -> tuple[float, float]:
    """Distances from `point` along -direction and +direction to the room boundary."""
    with np.errstate(divide="ignore"):
        t_hi = np.where(direction > 0, (room_hi - point) / direction, (room_lo - point) / direction)
        t_lo = np.where(direction > 0, (point - room_lo) / direction, (point - room_hi) / direction)
    return float(np.min(np.where(direction != 0, t_lo, np.inf))), float(np.min(np.where(direction != 0, t_hi, np.inf)))


def _object_candidate(rng: np.random.Generator, thin: bool, anchor: np.ndarray, room_lo, room_hi):
    """(kind, center, rotation, size, buried) of a random object around `anchor` (a point seen by a camera);
    buried objects (poles, wires) reach into the floor, ceiling or walls on purpose."""
    yaw = _rotation(np.array([0.0, 1.0, 0.0]), rng.uniform(-np.pi, np.pi))
    height = room_hi[1] - room_lo[1]
    if not thin:
        kind = int(rng.choice([KIND_BOX, KIND_SPHERE, KIND_CYLINDER], p=[0.45, 0.3, 0.25]))
        if kind == KIND_BOX:
            size = rng.uniform(0.12, 0.55, 3)
            floating = rng.random() < 0.3
            rotation = _random_rotation(rng) if floating else yaw
            y = anchor[1] if floating else size[1]
            return kind, np.array([anchor[0], y, anchor[2]]), rotation, size, False
        if kind == KIND_SPHERE:
            r = rng.uniform(0.12, 0.5)
            y = anchor[1] if rng.random() < 0.5 else r
            return kind, np.array([anchor[0], y, anchor[2]]), _random_rotation(rng), np.array([r, r, r]), False
        r, half = rng.uniform(0.08, 0.35), rng.uniform(0.15, 0.8)
        upright = yaw @ np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # local z -> world y
        return kind, np.array([anchor[0], half, anchor[2]]), upright, np.array([r, r, half]), False
    choice = rng.choice(3, p=[0.35, 0.3, 0.35])
    if choice == 0:  # floor-to-ceiling pole, its caps buried in the floor and ceiling
        r = rng.uniform(0.02, 0.045)
        upright = yaw @ np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
        centre = np.array([anchor[0], room_lo[1] + height / 2, anchor[2]])
        return KIND_CYLINDER, centre, upright, np.array([r, r, height / 2 + 0.02]), True
    if choice == 1:  # thin bar
        tilt = _rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(-0.4, 0.4))
        size = np.array([rng.uniform(0.4, 1.3), rng.uniform(0.012, 0.03), rng.uniform(0.012, 0.03)])
        return KIND_BOX, anchor.copy(), yaw @ tilt, size, False
    # wire from wall to wall (ends buried in the walls), roughly horizontal
    direction = look_direction(np.array(rng.uniform(-np.pi, np.pi)), np.array(rng.uniform(-0.3, 0.3)))
    back, ahead = _span_to_walls(anchor, direction, room_lo, room_hi)
    centre = anchor + direction * (ahead - back) / 2
    helper = np.array([0.0, 1.0, 0.0]) if abs(direction[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x_axis = np.cross(helper, direction)
    x_axis /= np.linalg.norm(x_axis)
    rotation = np.stack([x_axis, np.cross(direction, x_axis), direction], axis=1)
    r = rng.uniform(0.01, 0.022)
    return KIND_CYLINDER, centre, rotation, np.array([r, r, (ahead + back) / 2 + 0.02]), True


def sample_scene(rng: np.random.Generator, frames: int, width: int, height: int,
                 detail: str = "standard") -> tuple[Scene, Trajectory]:
    """A random room, camera path and objects. Objects are placed in front of the cameras (so most are seen) and
    only where every camera keeps its clearance; room walls, floor and ceiling get planar textures. `detail`
    (DETAIL_LEVELS) "rich" adds a speckle to every surface, drawn after everything else, so the rooms, paths and
    patterns are those of "standard" with the same generator."""
    if detail not in DETAIL_LEVELS:
        raise SceneError(f"--detail: expected one of {', '.join(DETAIL_LEVELS)}, got {detail!r}")
    aspect = width / height
    if not 1.0 / MAX_ASPECT <= aspect <= MAX_ASPECT:
        raise SceneError(f"--width/--height: aspect ratio {width}x{height} is beyond {MAX_ASPECT:g}:1 "
                         f"(the room cannot then keep every surface within depth {MAX_DEPTH:g})")
    fov_x = rng.uniform(50.0, 70.0)
    margin = clearance(centred_intrinsics(fov_x, width, height))
    size = np.array([max(rng.uniform(6.0, 10.0), 2 * margin + 2.5), max(rng.uniform(2.9, 3.8), 2 * margin + 0.3),
                     max(rng.uniform(8.0, 13.0), 2 * margin + 3.5)])
    if np.linalg.norm(size) >= MAX_DEPTH:  # cannot happen within MAX_ASPECT; kept as a guard of the guarantee
        raise SceneError(f"room diagonal {np.linalg.norm(size):.1f} exceeds the depth limit {MAX_DEPTH:g}")
    room_lo = np.array([-size[0] / 2, 0.0, -size[2] / 2])
    room_hi = room_lo + size
    trajectory, orbit_target = sample_trajectory(rng, frames, width, height, room_lo, room_hi, fov_x)
    positions = trajectory.cam2world[:, :3, 3]
    need = clearance(trajectory.intrinsics)

    objects = []  # (kind, center, rotation, size)

    def try_add(candidate) -> bool:
        kind, center, rotation, size_, buried = candidate
        if not buried and not _inside_room(kind, center, rotation, size_, room_lo, room_hi):
            return False
        if _object_distance(kind, center, rotation, size_, positions).min() < need:
            return False
        objects.append(candidate[:4])
        return True

    if orbit_target is not None:  # the orbited object, on the floor at the orbit centre
        for _ in range(20):
            if try_add(_object_candidate(rng, False, orbit_target, room_lo, room_hi)):
                break
    num_solid, num_thin = int(rng.integers(6, 13)), int(rng.integers(2, 6))
    for thin in [False] * num_solid + [True] * num_thin:
        for _ in range(25):
            frame = int(rng.integers(0, frames))
            pixel = rng.uniform(0.15, 0.85, 2)
            k = trajectory.intrinsics
            ray = np.array([(pixel[0] - k[0, 2]) / k[0, 0], (pixel[1] - k[1, 2]) / k[1, 1], 1.0])
            anchor = positions[frame] + trajectory.cam2world[frame, :3, :3] @ ray * rng.uniform(2.2, 7.0)
            if not ((anchor > room_lo + 0.1).all() and (anchor < room_hi - 0.1).all()):
                continue
            if try_add(_object_candidate(rng, thin, anchor, room_lo, room_hi)):
                break

    materials = []
    for face in range(NUM_ROOM_FACES):
        axis, side = divmod(face, 2)
        normal = np.zeros(3)
        normal[axis] = 1.0 if side == 0 else -1.0  # pointing into the room
        if axis == 1 and side == 0:  # floor: tiles, planks, checkers
            materials.append(_material(rng, [CHECKER, GRID, PLANKS, CHECKER_STRIPES], [3, 2, 3, 2], (0.5, 3.0), normal))
        elif axis == 1:  # ceiling: mostly quiet
            materials.append(_material(rng, [PLAIN, GRID, STRIPES, CHECKER], [3, 2, 1, 1], (0.3, 2.0), normal))
        else:
            materials.append(_material(rng, [CHECKER, STRIPES, GRID, PLANKS, CHECKER_STRIPES], [3, 3, 2, 1, 2],
                                       (0.4, 7.0), normal))
    for _ in objects:
        materials.append(_material(rng, [PLAIN, CHECKER, STRIPES, CHECKER_STRIPES], [1, 3, 3, 2], (1.5, 8.0)))

    lights = np.stack([look_direction(np.array(rng.uniform(-np.pi, np.pi)), np.array(rng.uniform(0.5, 1.2))),
                       look_direction(np.array(rng.uniform(-np.pi, np.pi)), np.array(rng.uniform(-0.3, 0.6)))])
    speckle = np.zeros((len(materials), 2))
    if detail == "rich":
        speckle[:, 0] = np.exp(rng.uniform(*np.log(SPECKLE_FREQ), len(materials)))
        speckle[:, 1] = rng.uniform(*SPECKLE_CONTRAST, len(materials))
    stack = lambda items, key: np.stack([np.asarray(m[key], dtype=np.float64) for m in items])  # noqa: E731
    scene = Scene(
        room_lo=room_lo, room_hi=room_hi,
        kind=np.array([o[0] for o in objects], dtype=np.int64),
        center=np.array([o[1] for o in objects]).reshape(-1, 3),
        rotation=np.array([o[2] for o in objects]).reshape(-1, 3, 3),
        size=np.array([o[3] for o in objects]).reshape(-1, 3),
        pattern=np.array([m["pattern"] for m in materials], dtype=np.int64), frame=stack(materials, "frame"),
        freq=stack(materials, "freq"), phase=stack(materials, "phase"), colors=stack(materials, "colors"),
        speckle=speckle, light_dir=lights, light_weight=np.array([rng.uniform(0.45, 0.6), rng.uniform(0.12, 0.22)]),
        ambient=float(rng.uniform(0.3, 0.45)),
    )
    return scene, trajectory
