"""training/synthetic_scenes.py beyond the heads: box / cylinder / torus hits against brute-force ray marching,
normals, the rings and chairs families, and the backdrops (composited exactly where rays miss)."""
import numpy as np
import pytest

from training import synthetic_scenes as ss

FRONTAL = np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]])  # at (0, 0, 2.7), looking at -z
K_FFHQ = np.array([[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]])


def inside(scene, points):
    """[..., 3] world points -> [...] inside any part: each kind's implicit inequality, written independently."""
    q = np.einsum("pji,...pj->...pi", scene.rotations, points[..., None, :] - scene.centers) / scene.radii
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    kind = scene.kind
    rho = np.sqrt(x * x + y * y)
    tests = np.where(kind == ss.KIND_ELLIPSOID, (x * x + y * y + z * z) < 1, False)
    tests |= (kind == ss.KIND_BOX) & (np.maximum(np.maximum(abs(x), abs(y)), abs(z)) < 1)
    tests |= (kind == ss.KIND_CYLINDER) & (rho < 1) & (abs(z) < 1)
    tests |= (kind == ss.KIND_TORUS) & ((rho - 1) ** 2 + z * z < scene.tube ** 2)
    return tests.any(-1)


def scene_with(family, predicate, poses="ffhq", seed=0):
    for index in range(200):
        scene = ss.scene_for(poses, seed, index, family)
        if predicate(scene):
            return scene
    raise AssertionError(f"no {family} scene satisfies the predicate")


@pytest.mark.parametrize("family", ["rings", "chairs"])
def test_nearest_hit_against_ray_marching(family):
    rng = np.random.default_rng(3)
    scene = ss.scene_for("ffhq", 1, 2, family)
    label = ss.synth_labels("ffhq", 1, seed=4)[0]
    cam, k = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    t, part, _ = ss.intersect(scene, cam, k, 48, 48)
    origin, dirs = ss.camera_rays(cam, k, 48, 48)
    pick = rng.choice(48 * 48, size=300, replace=False)
    t, dirs = t.reshape(-1)[pick], dirs.reshape(-1, 3)[pick]
    steps = np.linspace(2.2, 3.2, 2000)  # the object lies within ~0.35 of the origin, the camera at 2.7
    inside_any = inside(scene, origin + steps[None, :, None] * dirs[:, None, :])
    first = np.where(inside_any.any(1), steps[inside_any.argmax(1)], np.inf)
    hit = np.isfinite(t)
    assert hit.sum() > 40 and (~hit).sum() > 40
    # A ray grazing a part within one marching step may be seen by one method only: allow a handful.
    assert (np.isfinite(first) != hit).sum() <= 3
    both = hit & np.isfinite(first)
    assert np.all((first[both] - t[both] >= -1e-5) & (first[both] - t[both] <= steps[1] - steps[0] + 1e-5))


def test_torus_normals_are_the_distance_gradient_and_face_the_camera():
    scene = scene_with("rings", lambda s: s.num_parts == 1)
    t, part, local = ss.intersect(scene, FRONTAL, K_FFHQ, 64, 64)
    hit = np.isfinite(t)
    loc = local[hit]
    np.testing.assert_allclose(ss.torus_distance(loc, scene.tube[0]), 0.0, atol=2e-4)
    normals = ss.local_normals(scene, 0, loc)
    eps = 1e-6
    grad = np.stack([(ss.torus_distance(loc + eps * e, scene.tube[0]) - ss.torus_distance(loc - eps * e, scene.tube[0]))
                     / (2 * eps) for e in np.eye(3)], axis=1)
    unit = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, grad / np.linalg.norm(grad, axis=1, keepdims=True), atol=1e-5)
    world = np.einsum("ij,mj->mi", scene.rotations[0], normals / scene.radii[0])
    _, dirs = ss.camera_rays(FRONTAL, K_FFHQ, 64, 64)
    assert (np.einsum("mi,mi->m", world, dirs[hit]) < 0).all()  # outward normals face the camera


def test_rings_show_the_backdrop_through_their_hole():
    scene = scene_with("rings", lambda s: s.num_parts == 1)  # one ring, no second ring or ball
    t, _, _ = ss.intersect(scene, FRONTAL, K_FFHQ, 64, 64)
    row = np.isfinite(t[32])
    assert not row[31] and not row[32]  # the ray through the centre passes through the hole
    runs = np.flatnonzero(np.diff(row.astype(int)) == 1)
    assert len(runs) >= 2  # the ring on both sides of the hole


def test_chairs_have_thin_legs_with_gaps_between_them():
    size = ss.POSE_PRESETS["ffhq"]["object_size"]
    for index in range(6):
        scene = ss.scene_for("ffhq", 0, index, "chairs")
        legs = scene.kind == ss.KIND_CYLINDER
        assert legs.sum() >= 4 and (scene.radii[legs, 0] < 0.08 * size).all()
        t, _, _ = ss.intersect(scene, FRONTAL, K_FFHQ, 64, 64)
        # Under the seat (world y = -0.23, image row 57 of 64): separate legs with backdrop between them.
        row = np.isfinite(t[57])
        assert 2 <= (np.diff(row.astype(int)) == 1).sum() and row.mean() < 0.5, index


@pytest.mark.parametrize("family", list(ss.FAMILIES))
def test_families_fill_the_frame_from_every_pose(family):
    labels = ss.synth_labels("ffhq", 12, seed=2)
    shares = []
    for i, label in enumerate(labels):
        scene = ss.scene_for("ffhq", 2, i, family)
        shares.append(ss.coverage(scene, label[:16].reshape(4, 4), label[16:].reshape(3, 3), 32))
    assert 0.08 < min(shares) and max(shares) < 0.95, shares
    a = ss.scene_for("ffhq", 2, 0, family)
    b = ss.scene_for("ffhq", 2, 0, family)
    c = ss.scene_for("ffhq", 3, 0, family)
    assert np.array_equal(a.centers, b.centers) and not np.array_equal(a.color_a, c.color_a)


@pytest.mark.parametrize("background", ss.BACKGROUNDS)
def test_backdrop_fills_exactly_the_missed_rays(background):
    """image(background) - image(black) = backdrop colour x the share of each pixel's rays that miss."""
    scene = ss.scene_for("ffhq", 0, 1, "chairs")
    backdrop = ss.backdrop_for(background, "ffhq", 0, 1)
    res, sup = 24, 2
    black = ss.render(scene, FRONTAL, K_FFHQ, res, supersample=sup).astype(float)
    other = ss.render(scene, FRONTAL, K_FFHQ, res, supersample=sup, background=backdrop).astype(float)
    t, _, _ = ss.intersect(scene, FRONTAL, K_FFHQ, res * sup, res * sup)
    _, dirs = ss.camera_rays(FRONTAL, K_FFHQ, res * sup, res * sup)
    if isinstance(backdrop, ss.Backdrop):
        colors = backdrop.colors(dirs.reshape(-1, 3)).reshape(res * sup, res * sup, 3)
    else:
        colors = np.broadcast_to(np.asarray(backdrop, float), (res * sup, res * sup, 3))
    expected = (colors * ~np.isfinite(t)[..., None]).reshape(res, sup, res, sup, 3).mean(axis=(1, 3)) * 255
    assert np.abs(other - black - expected).max() <= 1.0 + 1e-9  # two roundings to uint8
    if background != "black":
        assert (~np.isfinite(t)).mean() > 0.3 and np.abs(other - black).max() > 20


def test_plain_backdrops_are_their_colours():
    for name, value in (("black", 0), ("grey", 128), ("white", 255)):
        scene = ss.scene_for("ffhq", 0, 0, "rings")
        image = ss.render(scene, FRONTAL, K_FFHQ, 16, background=ss.backdrop_for(name, "ffhq", 0, 0))
        assert (image[0, 0] == value).all()


def test_gradient_runs_with_elevation_and_noise_is_low_frequency_and_per_scene():
    gradient = ss.backdrop_for("gradient", "ffhq", 0, 0)
    span = ss.POSE_PRESETS["ffhq"]["backdrop_span"]
    up = lambda e: np.array([[0.0, np.sin(e), -np.cos(e)]])  # noqa: E731 -- a direction at elevation e
    np.testing.assert_allclose(gradient.colors(up(-span))[0], ss.GRADIENT_COLORS[0], atol=1e-12)
    np.testing.assert_allclose(gradient.colors(up(span))[0], ss.GRADIENT_COLORS[1], atol=1e-12)
    levels = [gradient.colors(up(e)).sum() for e in np.linspace(-span, span, 9)]
    assert np.all(np.diff(levels) > 0)
    _, dirs = ss.camera_rays(FRONTAL, K_FFHQ, 64, 64)
    np.testing.assert_array_equal(ss.backdrop_for("gradient", "ffhq", 3, 5).colors(dirs.reshape(-1, 3)),
                                  gradient.colors(dirs.reshape(-1, 3)))  # one gradient for the whole dataset

    noise = ss.backdrop_for("noise", "ffhq", 0, 0)
    image = noise.colors(dirs.reshape(-1, 3)).reshape(64, 64, 3)
    assert image.std() > 0.03  # a visible pattern ...
    assert np.abs(np.diff(image, axis=1)).max() < 0.05  # ... without pixel-scale detail
    other = ss.backdrop_for("noise", "ffhq", 0, 1).colors(dirs.reshape(-1, 3)).reshape(64, 64, 3)
    assert np.abs(other - image).mean() > 0.05
    again = ss.backdrop_for("noise", "ffhq", 0, 0).colors(dirs.reshape(-1, 3)).reshape(64, 64, 3)
    np.testing.assert_array_equal(again, image)


def test_backdrop_is_at_infinity():
    """Two cameras with the same orientation at different places see the same backdrop (a distant background)."""
    noise = ss.backdrop_for("noise", "orbit", 1, 0)
    empty = ss.scene_for("orbit", 1, 0, "rings")
    far = FRONTAL.copy()
    far[:3, 3] = [5.0, -3.0, 40.0]  # the object is out of view from here
    moved = FRONTAL.copy()
    moved[:3, 3] = [-6.0, 2.0, 45.0]
    a = ss.render(empty, far, K_FFHQ, 16, background=noise)
    b = ss.render(empty, moved, K_FFHQ, 16, background=noise)
    np.testing.assert_array_equal(a, b)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="family: expected one of heads, rings, chairs, got 'cars'"):
        ss.scene_for("ffhq", 0, 0, "cars")
    with pytest.raises(ValueError, match="background: expected one of black, grey, white, gradient, noise"):
        ss.backdrop_for("sky", "ffhq", 0, 0)
    scene = ss.scene_for("ffhq", 0, 0, "rings")
    import dataclasses

    broken = dataclasses.replace(scene, kind=np.full_like(scene.kind, 9))
    with pytest.raises(ValueError, match="Scene.kind: part 0 has unknown kind 9"):
        ss.intersect(broken, FRONTAL, K_FFHQ, 8, 8)
