"""The numpy ray caster of the built-in scenes (synthetic_scenes.py): nearest hits of the room and its objects,
Lambert shading of the solid textures, supersampled images and z-depth. No torch, so spawn workers stay light."""
from __future__ import annotations

import numpy as np

from .synthetic_scenes import CORNER_SIGNS, KIND_BOX, KIND_SPHERE, NUM_ROOM_FACES, Scene, albedo

# Rays are kept as structure-of-arrays ([3, ...]: x, y, z planes), so every step is a pass over contiguous
# arrays; float32 runs about twice as fast as float64 and the discriminants below stay accurate for thin wires.
RAY_DTYPE = np.float32


def camera_rays(intrinsics: np.ndarray, width: int, height: int) -> np.ndarray:
    """Unit camera-space directions [3, H, W] (RAY_DTYPE) through the pixel centres; the same for every frame of
    a scene, so render() takes them precomputed."""
    fx, fy = intrinsics[0, 0] * width, intrinsics[1, 1] * height
    cx, cy = intrinsics[0, 2] * width, intrinsics[1, 2] * height
    uu, vv = np.meshgrid((np.arange(width) + 0.5 - cx) / fx, (np.arange(height) + 0.5 - cy) / fy)
    cam = np.stack([uu, vv, np.ones_like(uu)])
    return (cam / np.linalg.norm(cam, axis=0, keepdims=True)).astype(RAY_DTYPE)


def _room_hit(origin: np.ndarray, dirs: np.ndarray, room_lo, room_hi):
    """Exit distance [...] of rays [3, ...] from inside the room and the surface id [...] (int16) of the face hit.

    The wall a ray heads for is picked by the sign bit, so a zero component (either sign) gives +inf there."""
    t_best = face = None
    for axis in range(3):
        ahead = ~np.signbit(dirs[axis])
        with np.errstate(divide="ignore"):
            t = (np.where(ahead, room_hi[axis], room_lo[axis]).astype(dirs.dtype) - origin[axis]) / dirs[axis]
        ids = (2 * axis + ahead).astype(np.int16)
        if t_best is None:
            t_best, face = t, ids
        else:
            closer = t < t_best
            t_best, face = np.where(closer, t, t_best), np.where(closer, ids, face)
    return t_best, face


def object_corners(scene: Scene) -> np.ndarray:
    """World corners [P, 8, 3] of every object's local bounding box."""
    return scene.center[:, None] + np.einsum("pkj,pij->pki", CORNER_SIGNS * scene.size[:, None], scene.rotation)


def screen_boxes(corners: np.ndarray, cam2world, intrinsics, width: int, height: int) -> np.ndarray:
    """int [P, 4] pixel rows/columns (r0, r1, c0, c1), half-open, that can see each convex hull of corners
    [P, 8, 3]; the whole image for a hull with a corner behind (or nearly at) the camera."""
    cam = (corners - cam2world[:3, 3]) @ cam2world[:3, :3]
    z = cam[..., 2]
    safe = np.where(z > 1e-3, z, 1.0)
    u = intrinsics[0, 0] * width * cam[..., 0] / safe + intrinsics[0, 2] * width
    v = intrinsics[1, 1] * height * cam[..., 1] / safe + intrinsics[1, 2] * height
    boxes = np.stack([np.floor(v.min(axis=1) - 0.5) - 1, np.ceil(v.max(axis=1) - 0.5) + 2,
                      np.floor(u.min(axis=1) - 0.5) - 1, np.ceil(u.max(axis=1) - 0.5) + 2], axis=1)
    boxes = np.clip(boxes, 0, [height, height, width, width]).astype(np.int64)
    boxes[z.min(axis=1) <= 1e-3] = [0, height, 0, width]
    return boxes


def intersect_object(kind: int, origin_local, dirs_local: np.ndarray, size) -> np.ndarray:
    """Entry distance [...] of unit rays dirs_local [3, ...] from origin_local [3] (both in the object's local
    coordinates) into a box / sphere / capped cylinder; inf where they miss. The origin must be outside.

    The discriminants use |o x d|^2 rather than |o|^2 |d|^2 - (o.d)^2, which stays accurate for thin wires seen
    from far away."""
    o = [float(v) for v in origin_local]
    d = dirs_local
    size = [float(v) for v in size]
    inf = np.inf
    if kind == KIND_BOX:  # slabs
        near, far = None, None
        for axis in range(3):
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / d[axis]
                t1, t2 = (-size[axis] - o[axis]) * inv, (size[axis] - o[axis]) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            near = lo if near is None else np.maximum(near, lo)
            far = hi if far is None else np.minimum(far, hi)
        return np.where((far >= near) & (near > 0), near, inf)
    if kind == KIND_SPHERE:
        b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
        cross2 = (o[1] * d[2] - o[2] * d[1]) ** 2 + (o[2] * d[0] - o[0] * d[2]) ** 2 + (o[0] * d[1] - o[1] * d[0]) ** 2
        disc = size[0] ** 2 - cross2
        t = -b - np.sqrt(np.maximum(disc, 0.0))
        return np.where((disc >= 0) & (t > 0), t, inf)
    # capped cylinder along local z: the side (an infinite cylinder cut to |z| <= half) or the near cap
    radius, half = size[0], size[2]
    a = d[0] ** 2 + d[1] ** 2
    b = o[0] * d[0] + o[1] * d[1]
    disc = a * radius ** 2 - (o[0] * d[1] - o[1] * d[0]) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        z = o[2] + t_side * d[2]
        t_cap = (-np.sign(d[2]) * half - o[2]) / d[2]
    side_ok = (disc >= 0) & (a > 0) & (t_side > 0) & (np.abs(z) <= half)
    x, y = o[0] + t_cap * d[0], o[1] + t_cap * d[1]
    cap_ok = (d[2] != 0) & (t_cap > 0) & (x * x + y * y <= radius ** 2)
    return np.minimum(np.where(side_ok, t_side, inf), np.where(cap_ok, t_cap, inf))


def object_normal(kind: int, local: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Outward unit normals [3, M] (local coordinates) at surface points [3, M]."""
    if kind == KIND_SPHERE:
        return local / np.sqrt((local * local).sum(axis=0))
    normal = np.zeros_like(local)
    cols = np.arange(local.shape[1])
    if kind == KIND_BOX:
        axis = np.abs(local / size.astype(local.dtype)[:, None]).argmax(axis=0)
        normal[axis, cols] = np.sign(local[axis, cols])
        return normal
    rho = np.sqrt(local[0] ** 2 + local[1] ** 2)
    on_cap = size[2] - np.abs(local[2]) < size[0] - rho  # nearer the cap plane than the side
    inv = np.where(on_cap, 0.0, 1.0 / np.maximum(rho, 1e-12))
    normal[0], normal[1] = local[0] * inv, local[1] * inv
    normal[2] = np.where(on_cap, np.sign(local[2]), 0.0)
    return normal


def cast(scene: Scene, cam2world: np.ndarray, intrinsics: np.ndarray, width: int, height: int, rays=None):
    """Nearest hit per pixel centre: distance t [H, W] along the unit world rays dirs [3, H, W], and the surface
    id [H, W] (int16). Each object is only tested on the pixels inside the screen box of its corners."""
    rays = camera_rays(intrinsics, width, height) if rays is None else rays
    dirs = (cam2world[:3, :3].astype(RAY_DTYPE) @ rays.reshape(3, -1)).reshape(3, height, width)
    origin = cam2world[:3, 3]
    t_best, surface = _room_hit(origin, dirs, scene.room_lo, scene.room_hi)
    if scene.num_objects == 0:
        return t_best, surface, dirs
    boxes = screen_boxes(object_corners(scene), cam2world, intrinsics, width, height)
    for p in range(scene.num_objects):
        kind, center, rotation, size = int(scene.kind[p]), scene.center[p], scene.rotation[p], scene.size[p]
        r0, r1, c0, c1 = (int(v) for v in boxes[p])
        if r0 >= r1 or c0 >= c1:
            continue
        block = dirs[:, r0:r1, c0:c1]
        local = (rotation.T.astype(RAY_DTYPE) @ block.reshape(3, -1)).reshape(block.shape)
        t = intersect_object(kind, (origin - center) @ rotation, local, size)
        closer = t < t_best[r0:r1, c0:c1]
        np.copyto(t_best[r0:r1, c0:c1], t, where=closer)
        np.copyto(surface[r0:r1, c0:c1], NUM_ROOM_FACES + p, where=closer)
    return t_best, surface, dirs


def _shade(scene: Scene, surf: int, points: np.ndarray) -> np.ndarray:
    """Shaded colour [3, M] of world points [3, M] on one surface: albedo x (ambient + key + fill light)."""
    dtype = points.dtype
    if surf < NUM_ROOM_FACES:
        local = points
        normals = np.zeros((3, 1), dtype=dtype)
        normals[surf // 2, 0] = 1.0 if surf % 2 == 0 else -1.0  # faces point into the room
    else:
        p = surf - NUM_ROOM_FACES
        rotation = scene.rotation[p].astype(dtype)
        local = rotation.T @ (points - scene.center[p].astype(dtype)[:, None])
        normals = rotation @ object_normal(int(scene.kind[p]), local, scene.size[p])
    light = scene.light_weight.astype(dtype) @ np.maximum(scene.light_dir.astype(dtype) @ normals, 0.0)
    return albedo(scene, surf, local) * (scene.ambient + light)


def render(scene: Scene, cam2world: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
           supersample: int = 3, return_depth: bool = False, rays=None):
    """uint8 [H, W, 3] image (supersample^2 rays per pixel, box-filtered) and, with return_depth, the camera
    z-depth [H * s, W * s] of every ray. `rays` = camera_rays(intrinsics, W * s, H * s), if precomputed."""
    cam2world = np.asarray(cam2world, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    s = int(supersample)
    rays = camera_rays(intrinsics, width * s, height * s) if rays is None else rays
    t, surface, dirs = cast(scene, cam2world, intrinsics, width * s, height * s, rays)
    flat_surface = surface.ravel()
    order = np.argsort(flat_surface, kind="stable")  # radix sort (int16): shade each surface on one slice
    bounds = np.concatenate([[0], np.cumsum(np.bincount(flat_surface, minlength=NUM_ROOM_FACES + scene.num_objects))])
    origin = cam2world[:3, 3].astype(RAY_DTYPE)[:, None]
    points = origin + np.take(dirs.reshape(3, -1), order, axis=1) * t.ravel()[order]
    rgb = np.empty_like(points)
    for surf in np.flatnonzero(bounds[1:] > bounds[:-1]):
        rgb[:, bounds[surf]:bounds[surf + 1]] = _shade(scene, int(surf), points[:, bounds[surf]:bounds[surf + 1]])
    unsort = np.empty_like(order)
    unsort[order] = np.arange(order.size)
    rays_rgb = np.take(rgb, unsort, axis=1).reshape(3, height, s, width, s)
    image = np.zeros((3, height, width), dtype=rgb.dtype)
    for i in range(s):  # box filter as s * s strided adds (much faster than mean over two axes)
        for j in range(s):
            image += rays_rgb[:, :, i, :, j]
    image = np.clip(np.rint(image.transpose(1, 2, 0) * (255.0 / (s * s))), 0, 255).astype(np.uint8)
    if return_depth:
        return image, t * rays[2]
    return image
