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

import functools
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
    """Ray origin [3] and unnormalised world directions [H, W, 3] through the pixel centres."""
    fx, fy = intrinsics[0, 0] * width, intrinsics[1, 1] * height
    cx, cy = intrinsics[0, 2] * width, intrinsics[1, 2] * height
    u = (np.arange(width) + 0.5 - cx) / fx
    v = (np.arange(height) + 0.5 - cy) / fy
    uu, vv = np.meshgrid(u, v)  # [H, W], row = y
    dirs_cam = np.stack([uu, vv, np.ones_like(uu)], axis=-1)
    return cam2world[:3, 3].copy(), dirs_cam @ cam2world[:3, :3].T


def _pixel_range(offset: float, radius: float, depth: float, focal: float, principal: float, size: int):
    """Pixel indices [start, stop) whose centres can see a sphere, along one image axis.

    The projection u = x / z of a sphere spans the tangent directions of its disc in the (x, z) plane:
    angle(centre) +- asin(radius / distance). One pixel of margin keeps the bound conservative.
    """
    dist = np.hypot(offset, depth)
    if radius >= dist:
        return 0, size
    theta, alpha = np.arctan2(offset, depth), np.arcsin(radius / dist)
    lo, hi = theta - alpha, theta + alpha
    start = 0 if lo <= -np.pi / 2 else int(np.floor(focal * np.tan(lo) + principal - 0.5)) - 1
    stop = size if hi >= np.pi / 2 else int(np.ceil(focal * np.tan(hi) + principal - 0.5)) + 2
    return max(start, 0), min(stop, size)


def intersect(scene: Scene, cam2world: np.ndarray, intrinsics: np.ndarray, width: int, height: int):
    """Nearest ray-ellipsoid hit per pixel: t [H, W] (inf where missed), part index [H, W], local point [H, W, 3].

    Each ellipsoid is tested only against the pixels inside the screen box of its bounding sphere, so small
    parts (eyes, nose) cost little.
    """
    origin, dirs = camera_rays(cam2world, intrinsics, width, height)
    fx, fy = intrinsics[0, 0] * width, intrinsics[1, 1] * height
    cx, cy = intrinsics[0, 2] * width, intrinsics[1, 2] * height
    t_best = np.full((height, width), np.inf)
    part_best = np.zeros((height, width), dtype=np.int64)
    local_best = np.zeros((height, width, 3))
    centers_cam = (scene.centers - origin) @ cam2world[:3, :3]  # R^T (c - o), rows
    for p in range(scene.num_parts):
        x, y, z = centers_cam[p]
        bound = float(scene.radii[p].max())
        c0, c1 = _pixel_range(x, bound, z, fx, cx, width)
        r0, r1 = _pixel_range(y, bound, z, fy, cy, height)
        if c0 >= c1 or r0 >= r1:
            continue
        inv_r = 1.0 / scene.radii[p]
        o_local = ((origin - scene.centers[p]) @ scene.rotations[p]) * inv_r  # R^T (o - c) / r
        d_local = (dirs[r0:r1, c0:c1] @ scene.rotations[p]) * inv_r
        a = np.einsum("hwi,hwi->hw", d_local, d_local)
        b = d_local @ o_local  # half of the linear coefficient
        c = float(o_local @ o_local) - 1.0
        disc = b * b - a * c
        hit = disc > 0
        root = np.sqrt(np.where(hit, disc, 0.0))
        t = (-b - root) / a
        t = np.where(t > 1e-6, t, (-b + root) / a)  # origin inside the ellipsoid: take the exit point
        closer = hit & (t > 1e-6) & (t < t_best[r0:r1, c0:c1])
        if not closer.any():
            continue
        np.copyto(t_best[r0:r1, c0:c1], t, where=closer)
        np.copyto(part_best[r0:r1, c0:c1], p, where=closer)
        np.copyto(local_best[r0:r1, c0:c1], o_local + t[..., None] * d_local, where=closer[..., None])
    return t_best, part_best, local_best


def _albedo(scene: Scene, p: int, local: np.ndarray) -> np.ndarray:
    """Albedo [M, 3] of part p at local unit-sphere points [M, 3]."""
    kind = int(scene.texture[p])
    if kind == TEXTURE_STRIPES:
        w = 0.5 + 0.5 * np.sin(scene.tex_freq[p] * (local @ scene.tex_axis[p]) + scene.tex_phase[p])
        w = np.clip((w - 0.35) * 3.3, 0.0, 1.0)  # sharpen into bands
    elif kind == TEXTURE_SPOTS:
        # |a - b|^2 = 2 - 2 a.b for points on the unit sphere
        dist = np.sqrt(np.clip(2.0 - 2.0 * (local @ scene.spots[p].T).max(axis=1), 0.0, None))
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
    t, part, local = intersect(scene, cam2world, intrinsics, size, size)
    rgb = np.empty((size * size, 3))
    rgb[:] = np.asarray(background, dtype=np.float64)
    # Shade all hits at once, grouped by part (sorted) so each texture is evaluated on a contiguous slice.
    pixels = np.flatnonzero(np.isfinite(t.ravel()))
    parts = part.ravel()[pixels]
    order = np.argsort(parts, kind="stable")
    pixels, parts = pixels[order], parts[order]
    loc = local.reshape(-1, 3)[pixels]
    normal = np.einsum("mij,mj->mi", scene.rotations[parts], loc / scene.radii[parts])  # implicit-surface gradient
    normal /= np.sqrt(np.einsum("mi,mi->m", normal, normal))[:, None]
    shade = scene.ambient + (1.0 - scene.ambient) * np.clip(normal @ scene.light_dir, 0.0, None)
    albedo = np.empty_like(loc)
    bounds = np.searchsorted(parts, np.arange(scene.num_parts + 1))
    for p in range(scene.num_parts):
        if bounds[p] < bounds[p + 1]:
            albedo[bounds[p]:bounds[p + 1]] = _albedo(scene, p, loc[bounds[p]:bounds[p + 1]])
    rgb[pixels] = albedo * shade[:, None]
    img = rgb.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def coverage(scene: Scene, cam2world: np.ndarray, intrinsics: np.ndarray, resolution: int) -> float:
    """Share of pixel centres whose ray hits the object (a sanity number for tests and `info`)."""
    t, _, _ = intersect(scene, np.asarray(cam2world, float).reshape(4, 4), np.asarray(intrinsics, float).reshape(3, 3),
                        resolution, resolution)
    return float(np.isfinite(t).mean())


# ----------------------------------------------------------------------------------------------------------
# Synthetic multi-view datasets (used by `dataset_tool.py synth`)

# Camera rigs. ffhq: the FFHQ pose distribution of docs/official-gsgan.md (radius 2.7, focal 4.2647), which sees only
# about +-0.32 around the origin, so heads are ~0.27 in size; orbit: ShapeNet-like full turn (radius 1.7, focal
# 1.7074, about +-0.5 visible) with a pitch band of +-ORBIT_PITCH_HALF_RANGE around the equator.
POSE_PRESETS = {"ffhq": {"object_size": 0.27}, "orbit": {"object_size": 0.42}}
ORBIT_PITCH_HALF_RANGE = 0.35  # radians (about 20 degrees)


def synth_labels(poses: str, count: int, seed: int) -> np.ndarray:
    """float64 [count, 25] EG3D labels of random cameras looking at the origin, deterministic for a seed."""
    import torch  # the renderer workers stay numpy-only; only the camera sampling needs torch

    from splatting.cameras import eg3d_label
    from training import camera_sampling as cs

    if poses not in POSE_PRESETS:
        raise ValueError(f"poses: expected one of {sorted(POSE_PRESETS)}, got {poses!r}")
    gen = torch.Generator().manual_seed(int(seed))
    if poses == "ffhq":
        # The FFHQ augmentation with probability 1 *is* the FFHQ pose distribution (yaw Gaussian, pitch uniform).
        base = eg3d_label(torch.eye(4, dtype=torch.float64).expand(count, 4, 4), cs.FFHQ_FOCAL)
        labels = cs.ffhq_pose_augmentation(base, 1.0, generator=gen, radius=cs.FFHQ_RADIUS)
    else:
        cam2world = cs.sample_cam2world(count, np.pi, np.pi / 2, np.pi, ORBIT_PITCH_HALF_RANGE,
                                        radius=cs.SHAPENET_RADIUS, distribution="uniform", generator=gen,
                                        dtype=torch.float64)
        labels = eg3d_label(cam2world, cs.SHAPENET_FOCAL)
    return labels.numpy()


@functools.lru_cache(maxsize=8)  # consecutive images show the same scene
def scene_for(poses: str, seed: int, scene_index: int) -> Scene:
    """Scene number `scene_index` of a synthetic dataset (independent of how many scenes or images there are)."""
    rng = np.random.default_rng([int(seed), int(scene_index)])
    return random_head_scene(rng, POSE_PRESETS[poses]["object_size"])


def scene_assignment(count: int, num_scenes: int) -> np.ndarray:
    """Scene index of each image: contiguous blocks, so images i, i+1, ... show one scene from several views."""
    return (np.arange(count, dtype=np.int64) * num_scenes) // count


def render_synth_image(job: tuple) -> np.ndarray:
    """uint8 [R, R, 3] for job = (poses, seed, scene_index, label [25], resolution, supersample).

    A module-level function of plain arguments so that multiprocessing workers can run it.
    """
    poses, seed, scene_index, label, resolution, supersample = job
    label = np.asarray(label, dtype=np.float64)
    return render(scene_for(poses, seed, scene_index), label[:16].reshape(4, 4), label[16:].reshape(3, 3),
                  resolution, supersample=supersample)
