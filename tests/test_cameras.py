"""splatting/cameras.py: label conversions, projection conventions, the compat quirks, mirroring, validation."""

import numpy as np
import pytest
import torch

from splatting.cameras import (COMPAT_TAN_HALF_FOV, Cameras, eg3d_label, look_at, mirror_eg3d_labels,
                               rigid_inverse)

FOCAL = 4.2647
SIZES = [(32, 32), (64, 64), (256, 256), (512, 512), (96, 64), (64, 200)]


def project(cameras: Cameras, points: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates [B, C, P, 2] of world points [P, 3]: K @ (R X + t), divided by z."""
    homog = torch.cat([points, torch.ones_like(points[:, :1])], dim=-1)
    cam = (cameras.world_to_cam[:, :, None] @ homog[:, :, None])[..., :3, 0]
    pix = (cameras.K[:, :, None] @ cam[..., None])[..., 0]
    return pix[..., :2] / pix[..., 2:]


def random_cameras(n: int, seed: int, dtype=torch.float64):
    """cam2world [n, 4, 4] of cameras around the origin looking at points near it, and their targets."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=dtype), dim=-1)
    origin = direction * (2 + torch.rand(n, 1, generator=g, dtype=dtype))
    target = 0.3 * torch.randn(n, 3, generator=g, dtype=dtype)
    return look_at(origin, target), origin, target


def test_frontal_camera_is_opencv_y_down():
    c2w = look_at(torch.tensor([0.0, 0.0, 2.7]), torch.zeros(3))
    expected = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]])
    torch.testing.assert_close(c2w, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("width,height", SIZES)
def test_frontal_projection_matches_hand_computation(width, height):
    """World (a, b, 0) seen from (0, 0, 2.7): camera (a, -b, 2.7), so u = f W a / 2.7 + W/2, v = -f H b / 2.7 + H/2."""
    label = eg3d_label(look_at(torch.tensor([0.0, 0.0, 2.7], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)),
                       FOCAL)
    cams = Cameras.from_eg3d_labels(label[None], width, height)
    a, b = torch.tensor([0.0, 0.1, -0.2, 0.31]), torch.tensor([0.0, -0.05, 0.17, 0.2])
    points = torch.stack([a, b, torch.zeros_like(a)], dim=-1).double()
    expected = torch.stack([FOCAL * width * a / 2.7 + width / 2, -FOCAL * height * b / 2.7 + height / 2], -1).double()
    torch.testing.assert_close(project(cams, points)[0, 0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("width,height", SIZES)
def test_projection_matches_label_intrinsics(width, height):
    """Random rigid cameras and intrinsics: Cameras agrees with a numpy float64 pinhole built from the raw label."""
    c2w, _, _ = random_cameras(5, seed=width + height)
    g = torch.Generator().manual_seed(1)
    fx = 1 + 4 * torch.rand(5, generator=g, dtype=torch.float64)
    fy = 1 + 4 * torch.rand(5, generator=g, dtype=torch.float64)
    cx = 0.3 + 0.4 * torch.rand(5, generator=g, dtype=torch.float64)
    cy = 0.3 + 0.4 * torch.rand(5, generator=g, dtype=torch.float64)
    labels = eg3d_label(c2w, fx, fy, cx, cy)
    points = 0.5 * torch.randn(7, 3, generator=g, dtype=torch.float64)
    got = project(Cameras.from_eg3d_labels(labels, width, height), points)[:, 0]

    lab = labels.numpy()
    for i in range(5):
        w2c = np.linalg.inv(lab[i, :16].reshape(4, 4))
        cam = points.numpy() @ w2c[:3, :3].T + w2c[:3, 3]
        u = lab[i, 16] * width * cam[:, 0] / cam[:, 2] + lab[i, 18] * width
        v = lab[i, 20] * height * cam[:, 1] / cam[:, 2] + lab[i, 21] * height
        np.testing.assert_allclose(got[i].numpy(), np.stack([u, v], -1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("width,height", SIZES)
def test_target_projects_to_principal_point_and_fov_edges_to_image_edges(width, height):
    c2w, origin, target = random_cameras(4, seed=3)
    cams = Cameras.from_eg3d_labels(eg3d_label(c2w, FOCAL, 2.0, 0.45, 0.55), width, height)
    pix = torch.stack([project(cams, target[i:i + 1])[i, 0, 0] for i in range(4)])
    expected = torch.tensor([0.45 * width, 0.55 * height], dtype=torch.float64).expand(4, 2)
    torch.testing.assert_close(pix, expected, atol=1e-4, rtol=0)
    # Pixel-centre convention: the frustum's left/top edge (x/z = -cx/fx) is pixel coordinate 0, not -0.5.
    frontal_c2w = look_at(torch.tensor([0, 0, 2.7], dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    frontal = Cameras.from_eg3d_labels(eg3d_label(frontal_c2w, FOCAL)[None], width, height)
    edge = 2.7 * 0.5 / FOCAL
    pix = project(frontal, torch.tensor([[-edge, edge, 0.0], [edge, -edge, 0.0]], dtype=torch.float64))[0, 0]
    torch.testing.assert_close(pix, torch.tensor([[0.0, 0.0], [width, height]], dtype=torch.float64), atol=1e-6,
                               rtol=0)


def test_float32_projection_is_accurate():
    c2w, _, target = random_cameras(8, seed=4, dtype=torch.float32)
    cams = Cameras.from_eg3d_labels(eg3d_label(c2w, FOCAL), 512, 512)
    pix = torch.stack([project(cams, target[i:i + 1])[i, 0, 0] for i in range(8)])
    torch.testing.assert_close(pix, torch.full((8, 2), 256.0), atol=2e-3, rtol=0)  # float32: ~1e-7 * 2000 px focal


def test_look_at_is_rigid_and_points_at_target():
    c2w, origin, target = random_cameras(64, seed=5)
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(64, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(c2w[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(64, 4))
    direction = torch.nn.functional.normalize(target - origin, dim=-1)
    torch.testing.assert_close(rot[:, :, 2], direction)
    cams = Cameras.from_eg3d_labels(eg3d_label(c2w, FOCAL), 64, 64)
    torch.testing.assert_close(cams.forward[:, 0], direction)
    torch.testing.assert_close(cams.centers[:, 0], origin)
    torch.testing.assert_close(cams.cam_to_world[:, 0], c2w)
    # Image "up" (-y camera axis) has a non-negative world-y component: no camera is upside down.
    assert (-rot[:, 1, 1] >= -1e-12).all()


def test_look_at_rejects_degenerate_directions():
    with pytest.raises(ValueError, match="coincide"):
        look_at(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([0.0, 2.0, 0.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="origin"):
        look_at(torch.ones(2), torch.zeros(3))


def test_labels_round_trip_and_shapes():
    c2w, _, _ = random_cameras(6, seed=6)
    labels = eg3d_label(c2w, FOCAL, 3.1, 0.4, 0.6)
    cams = Cameras.from_eg3d_labels(labels, 96, 64)
    assert (cams.batch_size, cams.num_cameras, cams.width, cams.height) == (6, 1, 96, 64)
    assert cams.world_to_cam.shape == (6, 1, 4, 4) and cams.K.shape == (6, 1, 3, 3)
    torch.testing.assert_close(cams.to_eg3d_labels()[:, 0], labels, atol=1e-12, rtol=0)
    multi = Cameras.from_eg3d_labels(labels.reshape(2, 3, 25), 96, 64)
    assert multi.num_cameras == 3 and multi.batch_size == 2
    torch.testing.assert_close(multi.to_eg3d_labels(), labels.reshape(2, 3, 25), atol=1e-12, rtol=0)
    eye = torch.eye(4, dtype=torch.float64).expand(2, 3, 4, 4)
    torch.testing.assert_close(multi.world_to_cam @ multi.cam_to_world, eye)
    # float32 labels (as stored in datasets) and numpy input
    f32 = Cameras.from_eg3d_labels(labels.float().numpy(), 96, 64)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.to_eg3d_labels()[:, 0], labels.float(), atol=1e-5, rtol=0)
    moved = f32.to(dtype=torch.float64)
    assert moved.dtype == torch.float64 and moved.device == f32.device and moved.near == f32.near


def test_compat_quirks():
    """compat: centred K from tan_half = tan(6.48), label intrinsics ignored, world_to_cam t_x negated."""
    c2w, _, _ = random_cameras(5, seed=7)
    labels = eg3d_label(c2w, FOCAL, 3.0, 0.4, 0.6)
    clean = Cameras.from_eg3d_labels(labels, 128, 96)
    compat = Cameras.from_eg3d_labels(labels, 128, 96, compat=True)
    assert abs(COMPAT_TAN_HALF_FOV - 0.19940) < 1e-5
    expected_k = torch.tensor([[128 / (2 * COMPAT_TAN_HALF_FOV), 0, 64], [0, 96 / (2 * COMPAT_TAN_HALF_FOV), 48],
                               [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(compat.K, expected_k.expand(5, 1, 3, 3))
    torch.testing.assert_close(compat.world_to_cam[..., 0, 3], -clean.world_to_cam[..., 0, 3])
    torch.testing.assert_close(compat.world_to_cam[..., 1:, :], clean.world_to_cam[..., 1:, :])
    torch.testing.assert_close(compat.world_to_cam[..., :3, :3], clean.world_to_cam[..., :3, :3])
    assert (clean.world_to_cam[..., 0, 3].abs() > 1e-3).any()  # the quirk is visible for off-origin targets
    torch.testing.assert_close(compat.forward, clean.forward)
    custom = Cameras.from_eg3d_labels(labels, 128, 96, compat=True, tan_half=0.5)
    torch.testing.assert_close(custom.K[..., 0, 0], torch.full((5, 1), 128.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="tan_half"):
        Cameras.from_eg3d_labels(labels, 128, 96, tan_half=0.5)
    with pytest.raises(ValueError, match="tan_half"):
        Cameras.from_eg3d_labels(labels, 128, 96, compat=True, tan_half=-1.0)


def test_compat_matches_official_view_and_projection_recipe():
    """Reproduce docs/official-release.md literally: pose = c2w diag(1,-1,-1,1); V = inv(pose), rows 1-2 of R and all of t
    negated; 3DGS projection with P00 = P11 = 1/tan_half and ndc -> pixel ((ndc + 1) S - 1) / 2 (integer centres)."""
    c2w, _, _ = random_cameras(4, seed=8)
    width, height = 80, 64
    cams = Cameras.from_eg3d_labels(eg3d_label(c2w, FOCAL), width, height, compat=True)
    pose = c2w @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    view = torch.linalg.inv(pose)
    view[:, 1:3, :3] *= -1
    view[:, :3, 3] *= -1
    torch.testing.assert_close(cams.world_to_cam[:, 0], view)

    points = 0.4 * torch.randn(9, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cam = points @ view[:, :3, :3].transpose(1, 2) + view[:, None, :3, 3]
    ndc = cam[..., :2] / (cam[..., 2:] * COMPAT_TAN_HALF_FOV)
    size = torch.tensor([width, height], dtype=torch.float64)
    official = ((ndc + 1) * size - 1) / 2 + 0.5  # + 0.5: integer-centred pixels -> our i + 0.5 centres
    torch.testing.assert_close(project(cams, points)[:, 0], official, atol=1e-6, rtol=0)


def test_compat_and_clean_agree_for_cameras_aimed_at_origin():
    direction = torch.nn.functional.normalize(torch.randn(6, 3, dtype=torch.float64), dim=-1)
    labels = eg3d_label(look_at(2.7 * direction, torch.zeros(3, dtype=torch.float64)), FOCAL)
    clean = Cameras.from_eg3d_labels(labels, 64, 64)
    compat = Cameras.from_eg3d_labels(labels, 64, 64, compat=True)
    torch.testing.assert_close(compat.world_to_cam, clean.world_to_cam, atol=1e-12, rtol=0)
    torch.testing.assert_close(clean.world_to_cam[..., :3, 3],
                               torch.tensor([0, 0, 2.7], dtype=torch.float64).expand(6, 1, 3))


def test_mirror_labels_mirror_the_image():
    c2w, _, _ = random_cameras(5, seed=9)
    labels = eg3d_label(c2w, FOCAL, 3.3, 0.42, 0.55)
    mirrored = mirror_eg3d_labels(labels)
    width, height = 96, 64
    points = 0.4 * torch.randn(11, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    pix = project(Cameras.from_eg3d_labels(labels, width, height), points)
    pix_mirrored = project(Cameras.from_eg3d_labels(mirrored, width, height), points * flip)
    torch.testing.assert_close(pix_mirrored[..., 0], width - pix[..., 0], atol=1e-9, rtol=0)
    torch.testing.assert_close(pix_mirrored[..., 1], pix[..., 1], atol=1e-9, rtol=0)
    rot = mirrored[:, :16].reshape(5, 4, 4)[:, :3, :3]
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(mirror_eg3d_labels(mirrored), labels, atol=1e-12, rtol=0)
    # numpy in -> numpy out, input untouched
    arr = labels.numpy().astype(np.float32)
    before = arr.copy()
    out = mirror_eg3d_labels(arr)
    assert isinstance(out, np.ndarray) and np.array_equal(arr, before) and not np.array_equal(out, arr)
    # cx = 0.5 labels: exactly entries 1, 2, 3, 4, 8 change sign (rolled cameras so that no entry is zero)
    roll = torch.tensor([[0.6, -0.8, 0, 0], [0.8, 0.6, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    centred = eg3d_label(c2w @ roll, FOCAL)
    sign = torch.ones(25, dtype=torch.float64)
    sign[[1, 2, 3, 4, 8]] = -1
    assert (centred[:, :12] != 0).all()
    torch.testing.assert_close(mirror_eg3d_labels(centred), centred * sign, atol=0, rtol=0)


def test_eg3d_label_layout():
    c2w, _, _ = random_cameras(3, seed=10)
    fx = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    label = eg3d_label(c2w, fx)
    assert label.shape == (3, 25)
    torch.testing.assert_close(label[:, :16], c2w.flatten(1))
    torch.testing.assert_close(label[1, 16:], torch.tensor([2.0, 0, 0.5, 0, 2.0, 0.5, 0, 0, 1], dtype=torch.float64))
    with pytest.raises(ValueError, match="fx_norm"):
        eg3d_label(c2w, torch.ones(4))
    with pytest.raises(ValueError, match="cam2world"):
        eg3d_label(torch.eye(3), 1.0)


def test_projection_gradient_wrt_labels():
    c2w, _, _ = random_cameras(2, seed=11)
    points = 0.3 * torch.randn(4, 3, dtype=torch.float64)
    pose = c2w[:, :3].clone().requires_grad_(True)  # the rigid part; gradcheck's nudges keep it near-orthonormal
    focal = torch.tensor([FOCAL, 3.0], dtype=torch.float64, requires_grad=True)
    centre = torch.tensor([0.5, 0.4], dtype=torch.float64, requires_grad=True)

    def pixels(pose, focal, centre):
        c2w = torch.cat([pose, torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(2, 1, 4)], dim=1)
        labels = eg3d_label(c2w, focal, focal * 1.1, centre, 1 - centre)
        return project(Cameras.from_eg3d_labels(labels, 32, 48), points)

    torch.autograd.gradcheck(pixels, (pose, focal, centre))
    m = c2w.clone().requires_grad_(True)
    torch.autograd.gradcheck(rigid_inverse, (m,))


def _valid():
    return dict(world_to_cam=torch.eye(4).expand(2, 3, 4, 4).clone(),
                K=torch.tensor([[50.0, 0, 32], [0, 50, 32], [0, 0, 1]]).expand(2, 3, 3, 3).clone(), width=64, height=64)


@pytest.mark.parametrize("change,match", [
    (dict(world_to_cam=torch.eye(4).expand(2, 4, 4)), r"world_to_cam: expected shape \[B, C, 4, 4\]"),
    (dict(world_to_cam=torch.eye(4).expand(2, 3, 4, 4).numpy()), "world_to_cam: expected a torch.Tensor"),
    (dict(K=torch.eye(4).expand(2, 3, 4, 4)), r"K: expected shape \[B, C, 3, 3\]"),
    (dict(K=torch.eye(3).expand(1, 3, 3, 3)), r"K: expected leading dimensions \[B, C\]"),
    (dict(K=torch.eye(3, dtype=torch.float64).expand(2, 3, 3, 3)), "K: is torch.float64"),
    (dict(width=0), "width: expected a positive int"),
    (dict(height=64.0), "height: expected a positive int"),
    (dict(width=True), "width: expected a positive int"),
    (dict(near=0.0), "near: expected a finite float > 0"),
    (dict(near=float("nan")), "near"),
    (dict(world_to_cam=torch.full((2, 3, 4, 4), float("nan"))), "world_to_cam: contains non-finite"),
    (dict(K=torch.tensor([[50.0, 1, 32], [0, 50, 32], [0, 0, 1]]).expand(2, 3, 3, 3)), "K: expected pinhole"),
    (dict(K=torch.tensor([[-50.0, 0, 32], [0, 50, 32], [0, 0, 1]]).expand(2, 3, 3, 3)), "K: expected positive"),
])
def test_cameras_validation(change, match):
    Cameras(**_valid())  # the baseline is valid
    with pytest.raises(ValueError, match=match):
        Cameras(**{**_valid(), **change})


def test_label_validation():
    c2w, _, _ = random_cameras(2, seed=12)
    labels = eg3d_label(c2w, FOCAL)
    with pytest.raises(ValueError, match=r"labels: expected shape \[B, 25\]"):
        Cameras.from_eg3d_labels(labels[:, :24], 64, 64)
    with pytest.raises(ValueError, match="labels: expected a torch.Tensor"):
        Cameras.from_eg3d_labels(labels.tolist(), 64, 64)
    transposed = torch.cat([c2w.transpose(1, 2).flatten(1), labels[:, 16:]], dim=1)
    with pytest.raises(ValueError, match="transposed"):
        Cameras.from_eg3d_labels(transposed, 64, 64)
    scaled = torch.cat([(c2w * torch.tensor([2.0, 2, 2, 1], dtype=torch.float64)).flatten(1), labels[:, 16:]], 1)
    with pytest.raises(ValueError, match="orthonormal"):
        Cameras.from_eg3d_labels(scaled, 64, 64)
    skewed = labels.clone()
    skewed[:, 17] = 0.1
    with pytest.raises(ValueError, match="intrinsics"):
        Cameras.from_eg3d_labels(skewed, 64, 64)
    with pytest.raises(ValueError, match="focal"):
        Cameras.from_eg3d_labels(eg3d_label(c2w, -FOCAL), 64, 64)
    broken = labels.clone()
    broken[0, 5] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        Cameras.from_eg3d_labels(broken, 64, 64)
    with pytest.raises(ValueError, match="width"):
        Cameras.from_eg3d_labels(labels, -1, 64)
    with pytest.raises(ValueError, match="near"):
        Cameras.from_eg3d_labels(labels, 64, 64, near=-0.1)


VALUE_ERRORS = [  # rejected by the value checks, which validate=False skips
    dict(world_to_cam=torch.full((2, 3, 4, 4), float("nan"))),
    dict(K=torch.tensor([[50.0, 1, 32], [0, 50, 32], [0, 0, 1]]).expand(2, 3, 3, 3)),
    dict(K=torch.tensor([[-50.0, 0, 32], [0, 50, 32], [0, 0, 1]]).expand(2, 3, 3, 3)),
]


@pytest.mark.parametrize("change", VALUE_ERRORS)
def test_cameras_validate_false_skips_only_the_value_checks(change):
    with pytest.raises(ValueError):
        Cameras(**{**_valid(), **change})
    cameras = Cameras(**{**_valid(), **change}, validate=False)  # the caller vouches for the values
    assert "validate" not in vars(cameras)  # an init-only switch, not part of the cameras
    assert torch.equal(cameras.K, change.get("K", _valid()["K"]))
    for shape_error in (dict(world_to_cam=torch.eye(4).expand(2, 4, 4)), dict(width=0), dict(near=0.0)):
        with pytest.raises(ValueError):  # shapes, sizes and near are checked either way
            Cameras(**{**_valid(), **change, **shape_error}, validate=False)


def test_labels_validate_false_skips_only_the_value_checks():
    c2w, _, _ = random_cameras(2, seed=12)
    labels = eg3d_label(c2w, FOCAL)
    transposed = torch.cat([c2w.transpose(1, 2).flatten(1), labels[:, 16:]], dim=1)
    broken = labels.clone()
    broken[0, 5] = float("nan")
    for bad in (transposed, broken, eg3d_label(c2w, -FOCAL)):
        with pytest.raises(ValueError, match="labels: "):
            Cameras.from_eg3d_labels(bad, 64, 64)
        Cameras.from_eg3d_labels(bad, 64, 64, validate=False)
    # Valid labels: the same cameras either way, in both modes.
    for compat in (False, True):
        checked = Cameras.from_eg3d_labels(labels, 64, 48, compat=compat)
        unchecked = Cameras.from_eg3d_labels(labels, 64, 48, compat=compat, validate=False)
        assert torch.equal(checked.world_to_cam, unchecked.world_to_cam) and torch.equal(checked.K, unchecked.K)
    with pytest.raises(ValueError, match=r"labels: expected shape \[B, 25\]"):
        Cameras.from_eg3d_labels(labels[:, :24], 64, 64, validate=False)
    with pytest.raises(ValueError, match="width"):
        Cameras.from_eg3d_labels(labels, -1, 64, validate=False)
