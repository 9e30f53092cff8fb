"""Procedural multi-view scenes (reconstruction.synthetic_scenes) and `dataset_tool.py scenes`.

The ray caster is checked against dense ray marching of exact signed distances, the camera basis against
splatting.cameras.look_at, the depth/clearance guarantees and the parallax the reconstruction model needs on
sampled scenes, and the CLI end to end through the chunk reader."""
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from reconstruction import scene_dataset as sd
from reconstruction import scene_raycast as rc
from reconstruction import synthetic_scenes as ss
from reconstruction.chunks import ChunkStore, decode_image, parse_cameras, read_index
from splatting.cameras import look_at
from tests.dataset_tool_cli import fails, folder_state, ok


def _scene(index, frames=40, width=64, height=64, split="train", seed=0):
    return ss.sample_scene(sd.scene_rng(seed, split, index), frames, width, height)


# ----------------------------------------------------------------------------------------------------------
# Ray casting against references


def _random_pose(rng):
    axis = rng.normal(size=3)
    return ss._rotation(axis / np.linalg.norm(axis), rng.uniform(-np.pi, np.pi))


@pytest.mark.parametrize("kind, size", [(ss.KIND_BOX, (0.5, 0.2, 0.35)), (ss.KIND_SPHERE, (0.4, 0.4, 0.4)),
                                        (ss.KIND_CYLINDER, (0.25, 0.25, 0.6))])
def test_intersect_object_matches_ray_marching(kind, size):
    """Entry distances equal the first sign change of the exact SDF along each ray (dense marching)."""
    rng = np.random.default_rng(1)
    size = np.array(size)
    center, rotation = rng.normal(size=3), _random_pose(rng)
    origins = center + rng.normal(size=(200, 3)) * 0.2 + np.array([0.0, 0.0, -3.0])
    targets = center + rng.uniform(-0.6, 0.6, size=(200, 3))
    dirs = targets - origins
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    step = 1e-3
    ts = np.arange(0.0, 6.0, step)
    hits = 0
    for o, d in zip(origins, dirs):
        got = rc.intersect_object(kind, (o - center) @ rotation, (d @ rotation)[:, None], size)[0]
        sdf = ss._object_distance(kind, center, rotation, size, o + ts[:, None] * d)
        inside = np.flatnonzero(sdf <= 0)
        if inside.size == 0:
            assert got == np.inf
        else:
            hits += 1
            assert abs(got - ts[inside[0]]) <= 2 * step
    assert 30 < hits < 190  # both hits and misses were exercised


def test_thin_wire_float32_matches_float64():
    """A 1 cm wire 15 units away: the float32 caster agrees with float64 (the |o x d| discriminant)."""
    size = np.array([0.01, 0.01, 3.0])
    rotation = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # local z = world x
    origin = np.array([0.0, 0.0, -15.0])
    y = np.linspace(-0.015, 0.015, 301)
    dirs = np.stack([np.zeros_like(y), y, np.full_like(y, 15.0)])
    dirs /= np.linalg.norm(dirs, axis=0)
    t64 = rc.intersect_object(ss.KIND_CYLINDER, origin @ rotation, rotation.T @ dirs, size)
    t32 = rc.intersect_object(ss.KIND_CYLINDER, origin @ rotation, (rotation.T @ dirs).astype(np.float32), size)
    assert np.isfinite(t64).sum() > 100
    assert (np.isfinite(t64) ^ np.isfinite(t32)).sum() <= 2  # at most the two grazing rays may differ
    both = np.isfinite(t64) & np.isfinite(t32)
    assert np.abs(t64[both] - t32[both]).max() < 1e-3


@pytest.mark.parametrize("kind, size", [(ss.KIND_BOX, (0.5, 0.2, 0.35)), (ss.KIND_SPHERE, (0.4, 0.4, 0.4)),
                                        (ss.KIND_CYLINDER, (0.25, 0.25, 0.6))])
def test_object_normal_is_sdf_gradient(kind, size):
    rng = np.random.default_rng(2)
    size = np.array(size)
    origin = np.array([0.3, -3.0, 0.2])  # from the side, so the cylinder shows both its side and a cap
    dirs = rng.uniform(-0.8, 0.8, size=(300, 3)) - origin
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    t = rc.intersect_object(kind, origin, dirs.T, size)
    ok = np.isfinite(t)
    points = origin + dirs[ok] * t[ok, None]
    normals = rc.object_normal(kind, points.T.copy(), size).T
    eps = 1e-6
    grad = np.stack([(ss._object_distance(kind, np.zeros(3), np.eye(3), size, points + eps * e)
                      - ss._object_distance(kind, np.zeros(3), np.eye(3), size, points - eps * e)) / (2 * eps)
                     for e in np.eye(3)], axis=1)
    # Away from edges (where the gradient is not defined) the normal is the SDF gradient.
    smooth = np.abs(np.linalg.norm(grad, axis=1) - 1) < 1e-3
    assert smooth.sum() > 50
    np.testing.assert_allclose(normals[smooth], grad[smooth], atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)


def test_room_hit_lands_on_the_named_face():
    lo, hi = np.array([-3.0, 0.0, -4.0]), np.array([3.0, 3.0, 4.0])
    origin = np.array([0.5, 1.5, -1.0])
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(3, 500))
    dirs[:, :6] = np.concatenate([np.eye(3), -np.eye(3)], axis=1)  # axis-aligned rays: zero components
    dirs[:, 6] = [-0.0, 1.0, 0.0]  # a negative zero must not flip the wall
    dirs /= np.linalg.norm(dirs, axis=0)
    t, face = rc._room_hit(origin, dirs, lo, hi)
    assert np.isfinite(t).all() and (t > 0).all()
    points = origin[:, None] + dirs * t
    axis, side = face // 2, face % 2
    plane = np.where(side == 1, hi[axis], lo[axis])
    np.testing.assert_allclose(points[axis, np.arange(500)], plane, atol=1e-9)
    assert ((points >= lo[:, None] - 1e-9) & (points <= hi[:, None] + 1e-9)).all()


# ----------------------------------------------------------------------------------------------------------
# Cameras


def test_camera_basis_matches_look_at():
    rng = np.random.default_rng(4)
    positions = rng.normal(size=(10, 3))
    forward = rng.normal(size=(10, 3))
    ours = ss.camera_to_world(positions, forward)
    ref = look_at(torch.from_numpy(positions), torch.from_numpy(positions + forward)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    rolled = ss.camera_to_world(positions, forward, roll=0.1)
    np.testing.assert_allclose(rolled[:, :3, 2], ref[:, :3, 2], atol=1e-12)  # roll keeps the viewing axis
    np.testing.assert_allclose(np.einsum("nij,nik->njk", rolled[:, :3, :3], rolled[:, :3, :3]),
                               np.broadcast_to(np.eye(3), (10, 3, 3)), atol=1e-12)


@pytest.mark.parametrize("width, height", [(64, 64), (96, 48), (32, 64)])
def test_trajectory_conventions(width, height):
    for index in range(4):
        scene, trajectory = _scene(index, width=width, height=height)
        k = trajectory.intrinsics
        fov_x = np.degrees(2 * np.arctan(0.5 / k[0, 0]))
        assert 50 <= fov_x <= 70
        assert k[0, 2] == 0.5 and k[1, 2] == 0.5
        np.testing.assert_allclose(k[1, 1] * height, k[0, 0] * width)  # square pixels
        rot = trajectory.cam2world[:, :3, :3]
        np.testing.assert_allclose(np.einsum("nji,njk->nik", rot, rot), np.broadcast_to(np.eye(3), rot.shape),
                                   atol=1e-10)
        np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-10)
        assert trajectory.cam2world.shape == (40, 4, 4)
        steps = np.linalg.norm(np.diff(trajectory.cam2world[:, :3, 3], axis=0), axis=1)
        assert steps.max() < 0.2 and steps.min() > 0.02  # smooth, always moving


def test_clearance_bound_covers_the_frustum():
    """Any frustum point with z < 1 is closer than the clearance, so cameras that keep it see depth >= 1."""
    k = ss.centred_intrinsics(70.0, 64, 32)
    corner = np.array([0.5 / k[0, 0], 0.5 / k[1, 1], 1.0])  # the farthest point of the z = 1 rectangle
    assert np.linalg.norm(corner) < ss.clearance(k)
    assert ss.clearance(ss.centred_intrinsics(50.0, 64, 64)) >= ss.MIN_CLEARANCE


def test_aspect_ratio_limit():
    with pytest.raises(ss.SceneError, match="aspect ratio"):
        _scene(0, width=200, height=50)


# ----------------------------------------------------------------------------------------------------------
# Scenes: guarantees and the properties the reconstruction model relies on


@pytest.mark.parametrize("width, height", [(32, 32), (48, 24), (16, 40)])
def test_depth_range_and_clearance(width, height):
    for index in range(6):
        scene, trajectory = _scene(index, frames=40, width=width, height=height)
        positions = trajectory.cam2world[:, :3, 3]
        assert ss.signed_distance(scene, positions).min() >= ss.clearance(trajectory.intrinsics) - 1e-9
        for frame in (0, 13, 39):
            image, depth = rc.render(scene, trajectory.cam2world[frame], trajectory.intrinsics, width, height,
                                     supersample=2, return_depth=True)
            assert image.shape == (height, width, 3) and image.dtype == np.uint8
            assert depth.shape == (2 * height, 2 * width)
            assert np.isfinite(depth).all()
            assert depth.min() >= ss.MIN_DEPTH and depth.max() <= ss.MAX_DEPTH


def test_scenes_have_objects_thin_structures_and_both_path_kinds():
    kinds, thin, objects = set(), 0, []
    for index in range(12):
        scene, trajectory = _scene(index, frames=20)
        kinds.add(trajectory.kind)
        objects.append(scene.num_objects)
        thin += int((scene.size.min(axis=1) < 0.05).sum())
    assert kinds == {"walk", "orbit"}
    assert min(objects) >= 4 and thin >= 12


def _project(points, cam2world, k, width):
    cam = (points - cam2world[:3, 3]) @ cam2world[:3, :3]
    uv = np.stack([k[0, 0] * cam[:, 0] / cam[:, 2] + k[0, 2], k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]], 1)
    return uv, cam[:, 2]


def test_parallax_between_frames_ten_apart():
    """Frames 10 apart: surfaces shift by a clear parallax (beyond what the rotation alone explains) and the
    views still overlap mostly."""
    medians, overlaps = [], []
    for index in range(10):
        scene, trajectory = _scene(index, frames=40)
        k, c2w = trajectory.intrinsics, trajectory.cam2world
        t, _, dirs = rc.cast(scene, c2w[10], k, 32, 32)
        points = (c2w[10, :3, 3][:, None] + dirs.reshape(3, -1) * t.ravel()).T
        uv, z = _project(points, c2w[20], k, 32)
        far_uv, _ = _project(c2w[20, :3, 3] + (points - c2w[10, :3, 3]) * 1e6, c2w[20], k, 32)  # rotation only
        visible = (z > 0) & (uv >= 0).all(1) & (uv <= 1).all(1)
        overlaps.append(visible.mean())
        nearest = z[visible] < np.quantile(z[visible], 0.25)  # nearby surfaces
        medians.append(np.median(np.abs(uv - far_uv)[visible][nearest][:, 0]))
    assert np.mean(overlaps) > 0.6
    assert 0.08 < np.median(medians) < 0.35, medians  # fraction of the image width


def test_middle_target_is_not_the_nearest_context_image():
    """The copy-the-nearest-context baseline must be poor on the evaluation views (the model has to beat it)."""
    psnrs = []
    for index in range(6):
        scene, trajectory = _scene(index, split="test")
        views = sd.evaluation_views(0, index, 40)
        i, j = views["context"]
        m = views["target"][1]
        render = lambda f: rc.render(scene, trajectory.cam2world[f], trajectory.intrinsics, 32, 32, 2) / 255.0  # noqa
        nearest = i if m - i <= j - m else j
        mse = np.mean((render(m) - render(nearest)) ** 2)
        psnrs.append(10 * np.log10(1.0 / mse))
    assert np.mean(psnrs) < 21.0, psnrs  # about 18.7 dB here (32x32); copying is far from a reconstruction


def test_images_have_fine_detail():
    """High-frequency textures: neighbouring pixels differ a lot somewhere in most frames."""
    scene, trajectory = _scene(5)
    image = rc.render(scene, trajectory.cam2world[0], trajectory.intrinsics, 64, 64, 3).astype(np.float64)
    jumps = np.abs(np.diff(image.mean(axis=2), axis=1))
    assert (jumps > 40).mean() > 0.02
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200  # several colours, shading, anti-aliasing


def _high_frequency(image: np.ndarray) -> float:
    grey = image.astype(np.float64).mean(axis=2)
    return float(np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2]
                        - grey[1:-1, 2:]).mean())


def test_rich_detail_adds_pixel_scale_speckle_to_the_same_rooms():
    gains = []
    for index in range(4):
        standard, path = _scene(index)
        rich, rich_path = ss.sample_scene(sd.scene_rng(0, "train", index), 40, 64, 64, "rich")
        assert not standard.speckle.any() and (rich.speckle[:, 1] > 0).all()
        lo, hi = ss.SPECKLE_FREQ
        assert ((rich.speckle[:, 0] >= lo) & (rich.speckle[:, 0] <= hi)).all()
        for field in ("kind", "center", "size", "pattern", "freq", "colors", "light_dir"):
            np.testing.assert_array_equal(getattr(standard, field), getattr(rich, field))
        np.testing.assert_array_equal(path.cam2world, rich_path.cam2world)
        frame = path.cam2world[len(path.cam2world) // 2]
        plain = rc.render(standard, frame, path.intrinsics, 64, 64, 3)
        speckled = rc.render(rich, frame, path.intrinsics, 64, 64, 3)
        gains.append(_high_frequency(speckled) / _high_frequency(plain))
        assert np.abs(speckled.astype(int) - plain.astype(int)).mean() < 20  # the same room, only detail added
    assert min(gains) > 1.05 and np.mean(gains) > 1.15, gains  # about 1.1-1.5 here: already textured rooms
    with pytest.raises(ss.SceneError, match="--detail"):
        ss.sample_scene(sd.scene_rng(0, "train", 0), 40, 64, 64, "extreme")


def test_supersampling_antialiases():
    scene, trajectory = _scene(2)
    sharp = rc.render(scene, trajectory.cam2world[0], trajectory.intrinsics, 32, 32, 1).astype(np.float64)
    smooth = rc.render(scene, trajectory.cam2world[0], trajectory.intrinsics, 32, 32, 4).astype(np.float64)
    reference = rc.render(scene, trajectory.cam2world[0], trajectory.intrinsics, 32, 32, 6).astype(np.float64)
    assert np.abs(smooth - reference).mean() < np.abs(sharp - reference).mean()


def test_render_scene_job_is_deterministic_and_keyed():
    job = (3, "test", 7, 6, 24, 16, 2, "png", 95)
    first, second = sd.render_scene_job(job), sd.render_scene_job(job)
    assert first["images"] == second["images"]
    np.testing.assert_array_equal(first["cam2world"], second["cam2world"])
    assert re.fullmatch(r"[0-9a-f]{16}", first["key"]) and first["key"] == sd.scene_key(3, "test", 7)
    other = sd.render_scene_job((3, "train", 7, 6, 24, 16, 2, "png", 95))
    assert other["key"] != first["key"] and other["images"] != first["images"]
    assert Image.open(__import__("io").BytesIO(first["images"][0])).size == (24, 16)
    jpeg = sd.render_scene_job((3, "test", 7, 6, 24, 16, 2, "jpeg", 90))
    assert jpeg["images"][0][:2] == b"\xff\xd8"


def test_evaluation_views():
    for index in range(30):
        views = sd.evaluation_views(0, index, 40)
        i, j = views["context"]
        assert sd.CONTEXT_GAP[0] <= j - i <= sd.CONTEXT_GAP[1] and 0 <= i and j < 40
        assert len(set(views["target"])) == 3 and all(i < t < j for t in views["target"])
    assert sd.evaluation_views(0, 3, 40) == sd.evaluation_views(0, 3, 40)
    short = sd.evaluation_views(0, 1, 6)
    assert short["context"] == [0, 5] and all(0 < t < 5 for t in short["target"])
    with pytest.raises(ss.SceneError, match="at least 5 frames"):
        sd.evaluation_views(0, 0, 4)


# ----------------------------------------------------------------------------------------------------------
# dataset_tool.py scenes


SMALL = ("--train-scenes", 3, "--test-scenes", 2, "--frames", 12, "--width", 24, "--height", 16,
         "--supersample", 2, "--seed", 5)


def test_scenes_cli_round_trip(tmp_path):
    dest = tmp_path / "scenes"
    ok("scenes", "--dest", dest, *SMALL)
    assert sorted(os.listdir(dest)) == ["evaluation_index.json", "scenes.json", "test", "train"]
    info = json.loads((dest / "scenes.json").read_text())
    assert info["near"] == 1.0 and info["far"] == 100.0 and info["image_shape"] == [16, 24]
    assert info["detail"] == "standard"
    assert info["frames"] == 12 and info["scenes"] == {"train": 3, "test": 2}
    train, test = read_index(str(dest), "train"), read_index(str(dest), "test")
    assert list(train) == [sd.scene_key(5, "train", i) for i in range(3)]
    evaluation = json.loads((dest / "evaluation_index.json").read_text())
    assert list(evaluation) == list(test)
    for key, views in evaluation.items():
        assert views == sd.evaluation_views(5, list(test).index(key), 12)
    store = ChunkStore(str(dest), "train")
    for index, key in enumerate(store.keys()):
        example = store.get(key)
        expected = sd.render_scene_job((5, "train", index, 12, 24, 16, 2, "png", 95))
        assert example["timestamps"].tolist() == list(range(12))
        extrinsics, intrinsics = parse_cameras(example["cameras"])
        np.testing.assert_allclose(extrinsics.numpy(), expected["cam2world"], atol=2e-6)
        np.testing.assert_allclose(intrinsics.numpy(), expected["intrinsics"], atol=1e-7)
        assert [bytes(image.numpy()) for image in example["images"]] == expected["images"]
        assert decode_image(example["images"][0], key).shape == (3, 16, 24)


def test_scenes_cli_rich_detail(tmp_path):
    ok("scenes", "--dest", tmp_path / "rich", *SMALL, "--detail", "rich")
    assert json.loads((tmp_path / "rich" / "scenes.json").read_text())["detail"] == "rich"
    key = sd.scene_key(5, "train", 0)
    example = ChunkStore(str(tmp_path / "rich"), "train").get(key)
    expected = sd.render_scene_job((5, "train", 0, 12, 24, 16, 2, "png", 95, "rich"))
    assert [bytes(image.numpy()) for image in example["images"]] == expected["images"]
    assert expected["images"] != sd.render_scene_job((5, "train", 0, 12, 24, 16, 2, "png", 95))["images"]


def test_scenes_cli_is_deterministic_with_workers(tmp_path):
    ok("scenes", "--dest", tmp_path / "a", *SMALL, "--workers", 1)
    ok("scenes", "--dest", tmp_path / "b", *SMALL, "--workers", 2)
    assert folder_state(tmp_path / "a") == folder_state(tmp_path / "b")


def test_scenes_cli_overwrite_and_bad_options(tmp_path):
    dest = tmp_path / "scenes"
    args = ("--train-scenes", 1, "--test-scenes", 1, "--frames", 6, "--resolution", 8, "--supersample", 1)
    ok("scenes", "--dest", dest, *args)
    first = folder_state(dest)
    fails(tmp_path, "already exists", "scenes", "--dest", dest, *args, "--seed", 1)
    assert folder_state(dest) == first
    ok("scenes", "--dest", dest, *args, "--seed", 1, "--overwrite")
    assert folder_state(dest) != first
    assert sorted(os.listdir(tmp_path)) == ["scenes"]  # no temporary or old folder left behind
    (tmp_path / "file").write_text("x")
    fails(tmp_path, "is a file", "scenes", "--dest", tmp_path / "file", *args)
    fails(tmp_path, "--width/--height", "scenes", "--dest", tmp_path / "new", *args, "--width", 64, "--height", 8)
    fails(tmp_path, "at least one scene", "scenes", "--dest", tmp_path / "new", "--train-scenes", 0,
          "--test-scenes", 0)
    fails(tmp_path, "--frames", "scenes", "--dest", tmp_path / "new", *args[:4], "--frames", 3)
    fails(tmp_path, "--format", "scenes", "--dest", tmp_path / "new", *args, "--format", "gif")


def test_scenes_cli_failure_leaves_nothing(tmp_path, monkeypatch):
    real = sd.render_scene_job

    def flaky(job):
        if job[2] == 1:
            raise ss.SceneError("frames: simulated failure")
        return real(job)

    monkeypatch.setattr(sd, "render_scene_job", flaky)
    fails(tmp_path, "simulated failure", "scenes", "--dest", tmp_path / "scenes", "--train-scenes", 3,
          "--test-scenes", 0, "--frames", 5, "--resolution", 8, "--supersample", 1, "--workers", 1)
