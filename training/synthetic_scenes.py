"""Procedural head-like scenes and an analytic ray caster, for multi-view datasets that need no download.

A scene is a handful of ellipsoids (head, ears, nose, eyes, mouth, hair, neck) with colours and procedural
textures defined in each ellipsoid's own coordinates, so the same surface point has the same colour from every
viewpoint and the data are truly multi-view consistent. Rendering intersects camera rays with every ellipsoid in
closed form (numpy, vectorised over pixels), keeps the nearest hit and shades it with Lambert + ambient light
from a light fixed in the world. It deliberately does not use the Gaussian rasterizer, so the data can test it.

Conventions match the EG3D labels: world y-up, the face looks toward +z (the frontal camera sits on +z),
cameras are OpenCV cam2world matrices with normalized intrinsics, pixel (i, j) is centred at (i + 0.5, j + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

TEXTURE_PLAIN, TEXTURE_STRIPES, TEXTURE_SPOTS, TEXTURE_NOISE = 0, 1, 2, 3
_NUM_SPOTS = 8
_NUM_WAVES = 6


@dataclass(frozen=True)
class Scene:
    """P ellipsoids. All arrays are float64 numpy; `rotations` map local to world axes (columns)."""

    centers: np.ndarray  # [P, 3]
    radii: np.ndarray  # [P, 3] semi-axes along the local axes
    rotations: np.ndarray  # [P, 3, 3]
    color_a: np.ndarray  # [P, 3] base albedo, linear 0..1
    color_b: np.ndarray  # [P, 3] pattern albedo
    texture: np.ndarray  # [P] int: TEXTURE_*
    tex_freq: np.ndarray  # [P] stripe frequency / spot radius (on the unit sphere) / noise frequency
    tex_axis: np.ndarray  # [P, 3] stripe direction (unit)
    tex_phase: np.ndarray  # [P]
    spots: np.ndarray  # [P, _NUM_SPOTS, 3] spot centres on the unit sphere
    waves: np.ndarray  # [P, _NUM_WAVES, 4] noise directions (3) + phase (1)
    light_dir: np.ndarray  # [3] unit vector toward the light, world coordinates
    ambient: float = 0.35

    @property
    def num_parts(self) -> int:
        return int(self.centers.shape[0])


def mirror_scene_x(scene: Scene) -> Scene:
    """The scene reflected through the x = 0 plane (textures follow their surfaces).

    Used to check that the x-flip augmentation (mirrored image + mirrored camera) equals rendering the
    mirrored world: with R' = M R the local coordinates of a mirrored point are unchanged.
    """
    m = np.diag([-1.0, 1.0, 1.0])
    return replace(
        scene,
        centers=scene.centers @ m,
        rotations=np.einsum("ij,pjk->pik", m, scene.rotations),
        light_dir=scene.light_dir @ m,
    )


# ----------------------------------------------------------------------------------------------------------
# Scene generation


def _rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """A random rotation by at most max_angle radians (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _random_color(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.95) -> np.ndarray:
    return rng.uniform(lo, hi, size=3)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class _PartList:
    """Collects ellipsoids and their materials, then packs them into a Scene."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.rows: list[dict] = []

    def add(self, center, radii, rotation=None, color=None, color_b=None, texture=TEXTURE_PLAIN, freq=None):
        rng = self.rng
        color = _random_color(rng) if color is None else np.asarray(color, dtype=np.float64)
        if color_b is None:
            color_b = np.clip(color * rng.uniform(0.3, 0.7) + rng.uniform(0.0, 0.3, size=3), 0.0, 1.0)
        if freq is None:
            freq = {TEXTURE_PLAIN: 0.0, TEXTURE_STRIPES: rng.uniform(6.0, 16.0), TEXTURE_SPOTS: rng.uniform(0.18, 0.4),
                    TEXTURE_NOISE: rng.uniform(3.0, 8.0)}[texture]
        self.rows.append(dict(
            center=np.asarray(center, dtype=np.float64), radii=np.asarray(radii, dtype=np.float64),
            rotation=np.eye(3) if rotation is None else rotation, color_a=color, color_b=np.asarray(color_b, float),
            texture=texture, freq=freq, axis=_unit_vectors(rng, 1)[0], phase=rng.uniform(0, 2 * np.pi),
            spots=_unit_vectors(rng, _NUM_SPOTS),
            waves=np.concatenate([_unit_vectors(rng, _NUM_WAVES), rng.uniform(0, 2 * np.pi, (_NUM_WAVES, 1))], 1),
        ))

    def scene(self, light_dir: np.ndarray, ambient: float) -> Scene:
        stack = lambda key: np.stack([np.asarray(r[key], dtype=np.float64) for r in self.rows])  # noqa: E731
        return Scene(
            centers=stack("center"), radii=stack("radii"), rotations=stack("rotation"), color_a=stack("color_a"),
            color_b=stack("color_b"), texture=np.array([r["texture"] for r in self.rows], dtype=np.int64),
            tex_freq=stack("freq"), tex_axis=stack("axis"), tex_phase=stack("phase"), spots=stack("spots"),
            waves=stack("waves"), light_dir=light_dir / np.linalg.norm(light_dir), ambient=ambient,
        )


def _surface_z(head_radii: np.ndarray, x: float, y: float) -> float:
    """z of the front surface of an axis-aligned head ellipsoid centred at the origin, above (x, y)."""
    q = 1.0 - (x / head_radii[0]) ** 2 - (y / head_radii[1]) ** 2
    return float(head_radii[2] * np.sqrt(max(q, 0.0)))


def random_head_scene(rng: np.random.Generator, size: float) -> Scene:
    """A head-like composition whose extent is about `size` (the head's largest semi-axis).

    Shapes, proportions, colours and textures vary with rng: face-like (side ears) or animal-like (top ears),
    optional hair cap and neck, textured skin/fur (stripes, spots or noise).
    """
    parts = _PartList(rng)
    head = np.array([rng.uniform(0.72, 0.9), rng.uniform(0.85, 1.0), rng.uniform(0.78, 0.95)])
    skin = _random_color(rng, 0.3, 0.95)
    parts.add([0, 0, 0], head, color=skin, texture=int(rng.integers(0, 4)))

    if rng.random() < 0.5:  # face-like: ears on the sides
        ear = np.array([rng.uniform(0.08, 0.14), rng.uniform(0.18, 0.28), rng.uniform(0.1, 0.16)])
        for side in (-1.0, 1.0):
            parts.add([side * head[0] * 0.97, rng.uniform(-0.1, 0.05), -0.05], ear, color=skin * 0.9)
    else:  # animal-like: pointed ears on top, tilted outward
        ear = np.array([rng.uniform(0.12, 0.2), rng.uniform(0.3, 0.42), rng.uniform(0.07, 0.12)])
        tilt = rng.uniform(0.2, 0.6)
        ear_color = _random_color(rng)
        for side in (-1.0, 1.0):
            parts.add([side * head[0] * 0.55, head[1] * 0.85, -0.1], ear, rotation=_rot_z(-side * tilt),
                      color=ear_color, texture=TEXTURE_NOISE)

    if rng.random() < 0.5:  # hair cap: a slightly larger ellipsoid behind and above the face
        hair = head * np.array([1.05, 0.9, 1.0])
        parts.add([0, head[1] * 0.2, -head[2] * 0.18], hair, color=_random_color(rng, 0.05, 0.8),
                  texture=int(rng.choice([TEXTURE_PLAIN, TEXTURE_STRIPES, TEXTURE_NOISE])))

    eye_x, eye_y = rng.uniform(0.22, 0.34), rng.uniform(0.1, 0.28)
    eye_r = rng.uniform(0.1, 0.15)
    eye_white = np.array([0.95, 0.95, 0.92])
    iris = _random_color(rng, 0.0, 0.6)
    for side in (-1.0, 1.0):
        z = _surface_z(head, eye_x, eye_y)
        parts.add([side * eye_x, eye_y, z - 0.35 * eye_r], [eye_r] * 3, color=eye_white, color_b=eye_white)
        parts.add([side * eye_x, eye_y, z + 0.45 * eye_r], [0.5 * eye_r] * 3, color=iris, color_b=iris)

    nose = np.array([rng.uniform(0.08, 0.14), rng.uniform(0.12, 0.22), rng.uniform(0.1, 0.2)])
    nose_y = rng.uniform(-0.2, 0.0)
    parts.add([0, nose_y, _surface_z(head, 0.0, nose_y) - 0.2 * nose[2]], nose, color=skin * rng.uniform(0.7, 1.0))

    mouth_y = rng.uniform(-0.55, -0.38)
    mouth = np.array([rng.uniform(0.18, 0.3), rng.uniform(0.035, 0.07), 0.08])
    lips = np.array([rng.uniform(0.5, 0.9), rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)])
    parts.add([0, mouth_y, _surface_z(head, 0.0, mouth_y) - 0.04], mouth, color=lips, color_b=lips)

    if rng.random() < 0.7:  # neck, reaching down out of the frame
        parts.add([0, -head[1] * 1.05, -0.15], [head[0] * 0.55, head[1] * 0.6, head[2] * 0.55], color=skin * 0.85)

    s = np.full(3, size)
    built = parts.scene(light_dir=np.array([rng.uniform(-0.5, 0.5), 0.7, 0.7]), ambient=rng.uniform(0.3, 0.45))
    # Scale the whole composition and turn it a little so no two heads are posed identically.
    turn = _rotation(rng, 0.15)
    return replace(built, centers=(built.centers * s) @ turn.T, radii=built.radii * s,
                   rotations=np.einsum("ij,pjk->pik", turn, built.rotations))


# ----------------------------------------------------------------------------------------------------------
# Ray casting


def camera_rays(cam2world: np.ndarray, intrinsics: np.ndarray, width: int, height: int):
    """Ray origin [3] and unnormalised world directions [H*W, 3] through the pixel centres."""
    fx, fy = intrinsics[0, 0] * width, intrinsics[1, 1] * height
    cx, cy = intrinsics[0, 2] * width, intrinsics[1, 2] * height
    u = (np.arange(width) + 0.5 - cx) / fx
    v = (np.arange(height) + 0.5 - cy) / fy
    uu, vv = np.meshgrid(u, v)  # [H, W], row = y
    dirs_cam = np.stack([uu.ravel(), vv.ravel(), np.ones(width * height)], axis=1)
    return cam2world[:3, 3].copy(), dirs_cam @ cam2world[:3, :3].T


def intersect(scene: Scene, origin: np.ndarray, dirs: np.ndarray):
    """Nearest ray-ellipsoid hit: (t [M] (inf where missed), part index [M], local unit-sphere point [M, 3])."""
    inv_r = 1.0 / scene.radii  # [P, 3]
    o_local = np.einsum("pji,pj->pi", scene.rotations, origin[None] - scene.centers) * inv_r  # R^T (o - c) / r
    d_local = np.einsum("pji,mj->pmi", scene.rotations, dirs) * inv_r[:, None]  # [P, M, 3]
    a = np.einsum("pmi,pmi->pm", d_local, d_local)
    b = np.einsum("pmi,pi->pm", d_local, o_local)  # half of the linear coefficient
    c = np.einsum("pi,pi->p", o_local, o_local)[:, None] - 1.0
    disc = b * b - a * c
    hit = disc > 0
    root = np.sqrt(np.where(hit, disc, 0.0))
    t_near = (-b - root) / a
    t_far = (-b + root) / a
    t = np.where(t_near > 1e-6, t_near, t_far)  # origin inside an ellipsoid: take the exit point
    t = np.where(hit & (t > 1e-6), t, np.inf)
    part = np.argmin(t, axis=0)
    cols = np.arange(dirs.shape[0])
    t_best = t[part, cols]
    local = o_local[part] + t_best[:, None] * d_local[part, cols]
    return t_best, part, local


def _albedo(scene: Scene, p: int, local: np.ndarray) -> np.ndarray:
    """Albedo [M, 3] of part p at local unit-sphere points [M, 3]."""
    kind = int(scene.texture[p])
    if kind == TEXTURE_STRIPES:
        w = 0.5 + 0.5 * np.sin(scene.tex_freq[p] * (local @ scene.tex_axis[p]) + scene.tex_phase[p])
        w = np.clip((w - 0.35) * 3.3, 0.0, 1.0)  # sharpen into bands
    elif kind == TEXTURE_SPOTS:
        dist = np.linalg.norm(local[:, None, :] - scene.spots[p][None], axis=2).min(axis=1)
        w = np.clip((scene.tex_freq[p] - dist) * 25.0, 0.0, 1.0)
    elif kind == TEXTURE_NOISE:
        waves = scene.waves[p]
        phases = scene.tex_freq[p] * (local @ waves[:, :3].T) * np.linspace(1.0, 2.5, _NUM_WAVES) + waves[:, 3]
        w = 0.5 + 0.5 * np.sin(phases).mean(axis=1) * 1.6
        w = np.clip(w, 0.0, 1.0)
    else:
        w = np.zeros(local.shape[0])
    return scene.color_a[p] * (1.0 - w[:, None]) + scene.color_b[p] * w[:, None]


def render(scene: Scene, cam2world: np.ndarray, intrinsics: np.ndarray, resolution: int, supersample: int = 2,
           background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """uint8 [R, R, 3] image of the scene (supersample x supersample rays per pixel, box-filtered)."""
    cam2world = np.asarray(cam2world, dtype=np.float64).reshape(4, 4)
    intrinsics = np.asarray(intrinsics, dtype=np.float64).reshape(3, 3)
    size = resolution * supersample
    origin, dirs = camera_rays(cam2world, intrinsics, size, size)
    t, part, local = intersect(scene, origin, dirs)
    rgb = np.empty((dirs.shape[0], 3))
    rgb[:] = np.asarray(background, dtype=np.float64)
    hit = np.isfinite(t)
    for p in np.unique(part[hit]):
        sel = hit & (part == p)
        loc = local[sel]
        normal = (loc * (1.0 / scene.radii[p])) @ scene.rotations[p].T  # gradient of the implicit surface
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        lambert = np.clip(normal @ scene.light_dir, 0.0, None)
        shade = scene.ambient + (1.0 - scene.ambient) * lambert
        rgb[sel] = _albedo(scene, int(p), loc) * shade[:, None]
    img = rgb.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def coverage(scene: Scene, cam2world: np.ndarray, intrinsics: np.ndarray, resolution: int) -> float:
    """Share of pixel centres whose ray hits the object (a sanity number for tests and `info`)."""
    origin, dirs = camera_rays(np.asarray(cam2world, float).reshape(4, 4), np.asarray(intrinsics, float).reshape(3, 3),
                               resolution, resolution)
    t, _, _ = intersect(scene, origin, dirs)
    return float(np.isfinite(t).mean())
