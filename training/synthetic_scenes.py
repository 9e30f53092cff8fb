"""Procedural object scenes and an analytic ray caster, for multi-view datasets that need no download.

A scene is a handful of primitives (ellipsoids, boxes, capped cylinders, tori) with colours and procedural
textures defined in each primitive's own coordinates, so the same surface point has the same colour from every
viewpoint and the data are truly multi-view consistent. Three object families differ in topology and texture
statistics: `heads` (smooth blobs: head, ears, nose, eyes, mouth, hair, neck), `rings` (tori with see-through
holes and strong stripes) and `chairs` (flat boxes on thin cylinder legs). Rendering intersects camera rays with
every primitive (closed form; tori by sphere tracing their exact distance function; numpy, vectorised over
pixels), keeps the nearest hit and shades it with Lambert + ambient light from a light fixed in the world. Rays
that miss show a backdrop: a constant colour or an environment at infinity (a function of the ray direction, so
it too is multi-view consistent). It deliberately does not use the Gaussian rasterizer, so the data can test it.

Conventions match the EG3D labels: world y-up, the face looks toward +z (the frontal camera sits on +z),
cameras are OpenCV cam2world matrices with normalized intrinsics, pixel (i, j) is centred at (i + 0.5, j + 0.5).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

TEXTURE_PLAIN, TEXTURE_STRIPES, TEXTURE_SPOTS, TEXTURE_NOISE = 0, 1, 2, 3
# Primitive kinds. In a primitive's local coordinates q = R^T (x - c) / radii it is the unit sphere, the cube
# [-1, 1]^3, the cylinder qx^2 + qy^2 <= 1, |qz| <= 1 (axis local z), or the torus around local z with ring radius
# 1 and tube radius `tube`.
KIND_ELLIPSOID, KIND_BOX, KIND_CYLINDER, KIND_TORUS = 0, 1, 2, 3
_NUM_SPOTS = 8
_NUM_WAVES = 6
_TORUS_MAX_STEPS = 1000  # sphere-tracing iterations (most rays decide within ~30; grazing ones need more)
_TORUS_TOLERANCE = 1e-6  # local units (ring radius 1): a ray closer than this to the surface is a hit


@dataclass(frozen=True)
class Scene:
    """P primitives. All arrays are float64 numpy; `rotations` map local to world axes (columns)."""

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
    kind: np.ndarray  # [P] int: KIND_*
    tube: np.ndarray  # [P] torus tube radius in local units (0 for the other kinds)
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


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


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

    def add(self, center, radii, rotation=None, color=None, color_b=None, texture=TEXTURE_PLAIN, freq=None,
            kind=KIND_ELLIPSOID, tube=0.0):
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
            kind=kind, tube=float(tube),
        ))

    def scene(self, light_dir: np.ndarray, ambient: float) -> Scene:
        stack = lambda key: np.stack([np.asarray(r[key], dtype=np.float64) for r in self.rows])  # noqa: E731
        return Scene(
            centers=stack("center"), radii=stack("radii"), rotations=stack("rotation"), color_a=stack("color_a"),
            color_b=stack("color_b"), texture=np.array([r["texture"] for r in self.rows], dtype=np.int64),
            tex_freq=stack("freq"), tex_axis=stack("axis"), tex_phase=stack("phase"), spots=stack("spots"),
            waves=stack("waves"), kind=np.array([r["kind"] for r in self.rows], dtype=np.int64),
            tube=stack("tube"), light_dir=light_dir / np.linalg.norm(light_dir), ambient=ambient,
        )


def _finish(parts: _PartList, rng: np.random.Generator, size: float) -> Scene:
    """Light the composition, scale it to `size` and turn it a little (so no two objects are posed identically)."""
    built = parts.scene(light_dir=np.array([rng.uniform(-0.5, 0.5), 0.7, 0.7]), ambient=rng.uniform(0.3, 0.45))
    turn = _rotation(rng, 0.15)
    return replace(built, centers=(built.centers * size) @ turn.T, radii=built.radii * size,
                   rotations=np.einsum("ij,pjk->pik", turn, built.rotations))


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

    return _finish(parts, rng, size)


def random_ring_scene(rng: np.random.Generator, size: float) -> Scene:
    """Rings: a torus whose hole roughly faces the +z cameras, strongly striped (contrasting bands), sometimes
    crossed by a second, perpendicular torus (a gyroscope) and sometimes with a ball in the middle. The holes show
    the backdrop through the object: a topology the head family never has. Extent about `size`."""
    parts = _PartList(rng)
    ring = rng.uniform(0.6, 0.78)
    tube = rng.uniform(0.18, 0.4)
    facing = _rot_y(rng.uniform(-0.6, 0.6)) @ _rot_x(rng.uniform(-0.5, 0.5))
    texture = int(rng.choice([TEXTURE_STRIPES, TEXTURE_STRIPES, TEXTURE_STRIPES, TEXTURE_SPOTS, TEXTURE_NOISE]))
    parts.add([0, 0, 0], ring * np.array([1.0, rng.uniform(0.9, 1.1), 1.0]), rotation=facing,
              color=_random_color(rng), color_b=_random_color(rng), texture=texture, kind=KIND_TORUS, tube=tube)
    if rng.random() < 0.5:  # a second ring through the same centre, at a right angle
        inner = ring * rng.uniform(0.72, 0.9)
        colors = _random_color(rng), _random_color(rng)
        parts.add([0, 0, 0], [inner] * 3, rotation=facing @ _rot_y(np.pi / 2), color=colors[0], color_b=colors[1],
                  texture=TEXTURE_STRIPES, kind=KIND_TORUS, tube=tube * rng.uniform(0.5, 0.9))
    if rng.random() < 0.4:  # a ball in the hole, smaller than it
        parts.add([0, 0, 0], [ring * (1 - tube) * rng.uniform(0.3, 0.6)] * 3, color=_random_color(rng),
                  texture=int(rng.choice([TEXTURE_PLAIN, TEXTURE_SPOTS])))
    return _finish(parts, rng, size)


def random_chair_scene(rng: np.random.Generator, size: float) -> Scene:
    """Chairs: a flat box seat on four thin cylinder legs with a back (a solid panel, or posts and thin spindles),
    turned by up to +-50 degrees, wood-like stripes on the flat parts. Thin parts a few pixels (or less) wide, and
    gaps between them: texture and silhouette statistics unlike the heads. Extent about `size`."""
    parts = _PartList(rng)
    wood, leg_color = _random_color(rng, 0.25, 0.9), _random_color(rng, 0.1, 0.7)
    yaw = _rot_y(rng.uniform(-0.9, 0.9))
    upright = yaw @ _rot_x(-np.pi / 2)  # cylinder axis (local z) along world y
    width, thick, depth = rng.uniform(0.45, 0.6), rng.uniform(0.05, 0.09), rng.uniform(0.4, 0.52)
    seat_y = rng.uniform(-0.2, 0.0)
    floor = -1.05
    at = lambda x, y, z: yaw @ np.array([x, y, z])  # noqa: E731 -- a point of the chair, turned
    parts.add(at(0, seat_y, 0), [width, thick, depth], rotation=yaw, color=wood, texture=TEXTURE_STRIPES,
              kind=KIND_BOX)
    leg_r = rng.uniform(0.035, 0.07)
    half = (seat_y - thick - floor) / 2
    for sx in (-1.0, 1.0):
        for sz in (-1.0, 1.0):
            parts.add(at(sx * (width - leg_r - 0.02), floor + half, sz * (depth - leg_r - 0.02)), [leg_r, leg_r, half],
                      rotation=upright, color=leg_color, kind=KIND_CYLINDER)
    back_h = rng.uniform(0.3, 0.45)
    back_z = -(depth - 0.05)
    if rng.random() < 0.5:  # a solid panel
        parts.add(at(0, seat_y + thick + back_h, back_z), [width, back_h, 0.05], rotation=yaw, color=wood,
                  texture=TEXTURE_STRIPES, kind=KIND_BOX)
    else:  # two posts, a top rail and thin spindles between them
        rail = rng.uniform(0.05, 0.08)
        post_half = back_h - rail / 2
        for sx in (-1.0, 1.0):
            parts.add(at(sx * (width - leg_r), seat_y + thick + post_half, back_z), [leg_r, leg_r, post_half],
                      rotation=upright, color=leg_color, kind=KIND_CYLINDER)
        parts.add(at(0, seat_y + thick + 2 * back_h - rail, back_z), [width, rail, 0.045], rotation=yaw, color=wood,
                  texture=TEXTURE_STRIPES, kind=KIND_BOX)
        spindles = int(rng.integers(2, 5))
        spindle_r = rng.uniform(0.02, 0.035)
        for x in np.linspace(-width, width, spindles + 2)[1:-1]:
            parts.add(at(x, seat_y + thick + post_half, back_z), [spindle_r, spindle_r, post_half], rotation=upright,
                      color=leg_color, kind=KIND_CYLINDER)
    if rng.random() < 0.4:  # a cushion
        parts.add(at(0, seat_y + thick + 0.04, 0.02), [width * 0.85, 0.07, depth * 0.85], rotation=yaw,
                  color=_random_color(rng), texture=int(rng.choice([TEXTURE_SPOTS, TEXTURE_NOISE])))
    return _finish(parts, rng, size)


FAMILIES = {"heads": random_head_scene, "rings": random_ring_scene, "chairs": random_chair_scene}


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


def _bounding_radius(scene: Scene, p: int) -> float:
    """World radius of a sphere around part p's centre that holds the whole part."""
    radii, kind = scene.radii[p], int(scene.kind[p])
    if kind == KIND_BOX:
        return float(np.linalg.norm(radii))
    if kind == KIND_CYLINDER:
        return float(np.hypot(radii[:2].max(), radii[2]))
    if kind == KIND_TORUS:
        return float(radii.max() * (1.0 + scene.tube[p]))
    return float(radii.max())


def _ellipsoid_hits(o_local: np.ndarray, d_local: np.ndarray) -> np.ndarray:
    """Ray parameter t [h, w] of the first hit of the unit sphere (inf where missed), rays o + t d in local units."""
    a = np.einsum("hwi,hwi->hw", d_local, d_local)
    b = d_local @ o_local  # half of the linear coefficient
    c = float(o_local @ o_local) - 1.0
    disc = b * b - a * c
    hit = disc > 0
    root = np.sqrt(np.where(hit, disc, 0.0))
    t = (-b - root) / a
    t = np.where(t > 1e-6, t, (-b + root) / a)  # origin inside the ellipsoid: take the exit point
    return np.where(hit & (t > 1e-6), t, np.inf)


def torus_distance(q: np.ndarray, tube: float) -> np.ndarray:
    """Exact signed distance [...] of local points q [..., 3] to the torus around local z (ring radius 1)."""
    ring = np.sqrt(q[..., 0] ** 2 + q[..., 1] ** 2) - 1.0
    return np.sqrt(ring * ring + q[..., 2] ** 2) - tube


def _torus_hits(o_local: np.ndarray, d_local: np.ndarray, tube: float) -> np.ndarray:
    """Sphere tracing from where each ray enters the bounding sphere (radius 1 + tube): the distance function
    is exact, so steps never cross the surface. A ray hits once its distance is below _TORUS_TOLERANCE and misses
    once it leaves the sphere; rays still undecided (grazing the surface) keep stepping, alone, up to
    _TORUS_MAX_STEPS."""
    shape = d_local.shape[:-1]
    d = d_local.reshape(-1, 3)
    scale = np.sqrt(np.einsum("mi,mi->m", d, d))
    unit = d / scale[:, None]
    b = unit @ o_local
    disc = b * b - (float(o_local @ o_local) - (1.0 + tube) ** 2)
    root = np.sqrt(np.maximum(disc, 0.0))
    t, t_exit = np.maximum(-b - root, 0.0), -b + root
    hit = np.zeros(t.shape, dtype=bool)
    active = np.flatnonzero(disc > 0)
    for _ in range(_TORUS_MAX_STEPS):
        if active.size == 0:
            break
        step = torus_distance(o_local + t[active, None] * unit[active], tube)
        converged = step < _TORUS_TOLERANCE
        hit[active[converged]] = True
        t[active] += np.where(converged, 0.0, step)
        active = active[~converged & (t[active] <= t_exit[active])]
    return np.where(hit & (t <= t_exit), t / scale, np.inf).reshape(shape)


def _convex_hits(kind: int, o_local: np.ndarray, d_local: np.ndarray) -> np.ndarray:
    """Unit cube / cylinder hits through the reconstruction ray caster's closed forms (which take unit rays)."""
    from reconstruction.scene_raycast import intersect_object
    from reconstruction.synthetic_scenes import KIND_BOX as R_BOX, KIND_CYLINDER as R_CYLINDER

    scale = np.sqrt(np.einsum("hwi,hwi->hw", d_local, d_local))
    unit = np.moveaxis(d_local / scale[..., None], -1, 0)
    t = intersect_object(R_BOX if kind == KIND_BOX else R_CYLINDER, o_local, unit, (1.0, 1.0, 1.0))
    return t / scale


def _local_hits(scene: Scene, p: int, o_local: np.ndarray, d_local: np.ndarray) -> np.ndarray:
    """t [h, w] of rays o + t d (local units of part p) at their first hit of the part; inf where they miss."""
    kind = int(scene.kind[p])
    if kind == KIND_ELLIPSOID:
        return _ellipsoid_hits(o_local, d_local)
    if kind == KIND_TORUS:
        return _torus_hits(o_local, d_local, float(scene.tube[p]))
    if kind in (KIND_BOX, KIND_CYLINDER):
        return _convex_hits(kind, o_local, d_local)
    raise ValueError(f"Scene.kind: part {p} has unknown kind {kind}; expected one of 0-3 (KIND_*)")


def intersect(scene: Scene, cam2world: np.ndarray, intrinsics: np.ndarray, width: int, height: int):
    """Nearest ray-primitive hit per pixel: t [H, W] (inf where missed), part index [H, W], local point [H, W, 3].

    Each primitive is tested only against the pixels inside the screen box of its bounding sphere, so small
    parts (eyes, nose, legs) cost little.
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
        bound = _bounding_radius(scene, p)
        c0, c1 = _pixel_range(x, bound, z, fx, cx, width)
        r0, r1 = _pixel_range(y, bound, z, fy, cy, height)
        if c0 >= c1 or r0 >= r1:
            continue
        inv_r = 1.0 / scene.radii[p]
        o_local = ((origin - scene.centers[p]) @ scene.rotations[p]) * inv_r  # R^T (o - c) / r
        d_local = (dirs[r0:r1, c0:c1] @ scene.rotations[p]) * inv_r
        t = _local_hits(scene, p, o_local, d_local)
        closer = t < t_best[r0:r1, c0:c1]
        if not closer.any():
            continue
        np.copyto(t_best[r0:r1, c0:c1], t, where=closer)
        np.copyto(part_best[r0:r1, c0:c1], p, where=closer)
        np.copyto(local_best[r0:r1, c0:c1], o_local + t[..., None] * d_local, where=closer[..., None])
    return t_best, part_best, local_best


def local_normals(scene: Scene, p: int, local: np.ndarray) -> np.ndarray:
    """Gradient directions [M, 3] (local units, not normalised) of part p's surface at local points [M, 3]."""
    kind = int(scene.kind[p])
    if kind == KIND_ELLIPSOID:
        return local
    if kind == KIND_TORUS:
        rho = np.maximum(np.sqrt(local[:, 0] ** 2 + local[:, 1] ** 2), 1e-12)
        return local - np.stack([local[:, 0] / rho, local[:, 1] / rho, np.zeros_like(rho)], axis=1)
    from reconstruction.scene_raycast import object_normal
    from reconstruction.synthetic_scenes import KIND_BOX as R_BOX, KIND_CYLINDER as R_CYLINDER

    return object_normal(R_BOX if kind == KIND_BOX else R_CYLINDER, local.T.copy(), np.ones(3)).T


def _albedo(scene: Scene, p: int, local: np.ndarray) -> np.ndarray:
    """Albedo [M, 3] of part p at its local surface points [M, 3] (on the unit sphere for ellipsoids)."""
    kind = int(scene.texture[p])
    if kind == TEXTURE_STRIPES:
        w = 0.5 + 0.5 * np.sin(scene.tex_freq[p] * (local @ scene.tex_axis[p]) + scene.tex_phase[p])
        w = np.clip((w - 0.35) * 3.3, 0.0, 1.0)  # sharpen into bands
    elif kind == TEXTURE_SPOTS:
        # |a - b|^2 = 2 - 2 a.b for points on the unit sphere (other kinds: their points' directions)
        if scene.kind[p] != KIND_ELLIPSOID:
            local = local / np.sqrt(np.einsum("mi,mi->m", local, local))[:, None]
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
    """uint8 [R, R, 3] image of the scene (supersample x supersample rays per pixel, box-filtered).

    background: an RGB triple in 0..1, or a Backdrop (a colour per ray direction)."""
    cam2world = np.asarray(cam2world, dtype=np.float64).reshape(4, 4)
    intrinsics = np.asarray(intrinsics, dtype=np.float64).reshape(3, 3)
    size = resolution * supersample
    t, part, local = intersect(scene, cam2world, intrinsics, size, size)
    rgb = np.empty((size * size, 3))
    if isinstance(background, Backdrop):
        rgb[:] = background.colors(camera_rays(cam2world, intrinsics, size, size)[1].reshape(-1, 3))
    else:
        rgb[:] = np.asarray(background, dtype=np.float64)
    # Shade all hits at once, grouped by part (sorted) so each texture is evaluated on a contiguous slice.
    pixels = np.flatnonzero(np.isfinite(t.ravel()))
    parts = part.ravel()[pixels]
    order = np.argsort(parts, kind="stable")
    pixels, parts = pixels[order], parts[order]
    loc = local.reshape(-1, 3)[pixels]
    bounds = np.searchsorted(parts, np.arange(scene.num_parts + 1))
    gradient = loc.copy()  # local surface gradients; the unit sphere's is the point itself
    for p in np.flatnonzero(scene.kind != KIND_ELLIPSOID):
        if bounds[p] < bounds[p + 1]:
            gradient[bounds[p]:bounds[p + 1]] = local_normals(scene, p, loc[bounds[p]:bounds[p + 1]])
    normal = np.einsum("mij,mj->mi", scene.rotations[parts], gradient / scene.radii[parts])  # to world: R S^-1 g
    normal /= np.sqrt(np.einsum("mi,mi->m", normal, normal))[:, None]
    shade = scene.ambient + (1.0 - scene.ambient) * np.clip(normal @ scene.light_dir, 0.0, None)
    albedo = np.empty_like(loc)
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

# Camera rigs. ffhq: the FFHQ pose distribution of docs/official-release.md (radius 2.7, focal 4.2647), which sees only
# about +-0.32 around the origin, so heads are ~0.27 in size; orbit: ShapeNet-like full turn (radius 1.7, focal
# 1.7074, about +-0.5 visible) with a pitch band of +-ORBIT_PITCH_HALF_RANGE around the equator. backdrop_span: the
# elevation (radians) over which a gradient backdrop runs from bottom to top colour, and the length scale of the noise
# backdrop: about the elevations the rig's views cover (ffhq: +-0.12 field of view plus the pitch spread; orbit:
# +-0.28 plus +-0.35).
POSE_PRESETS = {"ffhq": {"object_size": 0.27, "backdrop_span": 0.45},
                "orbit": {"object_size": 0.42, "backdrop_span": 0.5}}
ORBIT_PITCH_HALF_RANGE = 0.35  # radians (about 20 degrees)
# Backdrops of `synth`: constant colours, or an environment at infinity (a colour per ray direction, so every view of
# a scene agrees about it, as a distant background in a real capture does): a vertical gradient (the same for every
# scene) or low-frequency noise between two colours (its own per scene).
BACKGROUNDS = ("black", "grey", "white", "gradient", "noise")
_PLAIN_BACKDROPS = {"black": (0.0, 0.0, 0.0), "grey": (0.5, 0.5, 0.5), "white": (1.0, 1.0, 1.0)}
GRADIENT_COLORS = ((0.30, 0.27, 0.24), (0.78, 0.84, 0.93))  # bottom, top: a dark floor under a pale sky
_BACKDROP_WAVES = 4


@dataclass(frozen=True)
class Backdrop:
    """Colour of the rays that miss the object, as a function of their world direction (see BACKGROUNDS)."""

    kind: str               # "gradient" | "noise"
    color_a: np.ndarray     # [3] bottom colour / first noise colour
    color_b: np.ndarray     # [3] top colour / second noise colour
    span: float             # radians: the gradient's elevation range, the noise's length scale
    waves: np.ndarray       # [_BACKDROP_WAVES, 5] noise: direction (3), phase, cycles per span

    def colors(self, dirs: np.ndarray) -> np.ndarray:
        """[M, 3] colours of rays with (unnormalised) world directions [M, 3]."""
        unit = dirs / np.sqrt(np.einsum("mi,mi->m", dirs, dirs))[:, None]
        if self.kind == "gradient":
            elevation = np.arcsin(np.clip(unit[:, 1], -1.0, 1.0))
            w = np.clip(0.5 + elevation / (2.0 * self.span), 0.0, 1.0)
        else:
            phases = (unit @ self.waves[:, :3].T) * (2 * np.pi * self.waves[:, 4] / self.span) + self.waves[:, 3]
            w = np.clip(0.5 + 0.7 * np.sin(phases).mean(axis=1), 0.0, 1.0)
        return self.color_a * (1.0 - w[:, None]) + self.color_b * w[:, None]


def backdrop_for(background: str, poses: str, seed: int, scene_index: int):
    """The backdrop of scene `scene_index`: an RGB triple or a Backdrop (noise: drawn from its own stream, so the
    scene itself does not depend on the background)."""
    if background in _PLAIN_BACKDROPS:
        return _PLAIN_BACKDROPS[background]
    if background not in BACKGROUNDS:
        raise ValueError(f"background: expected one of {', '.join(BACKGROUNDS)}, got {background!r}")
    span = POSE_PRESETS[poses]["backdrop_span"]
    if background == "gradient":
        return Backdrop("gradient", np.array(GRADIENT_COLORS[0]), np.array(GRADIENT_COLORS[1]), span,
                        np.zeros((_BACKDROP_WAVES, 5)))
    rng = np.random.default_rng([int(seed), int(scene_index), 1])
    waves = np.concatenate([_unit_vectors(rng, _BACKDROP_WAVES), rng.uniform(0, 2 * np.pi, (_BACKDROP_WAVES, 1)),
                            rng.uniform(0.4, 1.0, (_BACKDROP_WAVES, 1))], axis=1)
    return Backdrop("noise", _random_color(rng, 0.1, 0.9), _random_color(rng, 0.1, 0.9), span, waves)


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
def scene_for(poses: str, seed: int, scene_index: int, family: str = "heads") -> Scene:
    """Scene number `scene_index` of a synthetic dataset (independent of how many scenes or images there are)."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    rng = np.random.default_rng([int(seed), int(scene_index)])
    return FAMILIES[family](rng, POSE_PRESETS[poses]["object_size"])


def scene_assignment(count: int, num_scenes: int) -> np.ndarray:
    """Scene index of each image: contiguous blocks, so images i, i+1, ... show one scene from several views."""
    return (np.arange(count, dtype=np.int64) * num_scenes) // count


def render_synth_image(job: tuple) -> np.ndarray:
    """uint8 [R, R, 3] for job = (poses, seed, scene_index, label [25], resolution, supersample, family, background).

    A module-level function of plain arguments so that multiprocessing workers can run it.
    """
    poses, seed, scene_index, label, resolution, supersample, family, background = job
    label = np.asarray(label, dtype=np.float64)
    return render(scene_for(poses, seed, scene_index, family), label[:16].reshape(4, 4), label[16:].reshape(3, 3),
                  resolution, supersample=supersample, background=backdrop_for(background, poses, seed, scene_index))
