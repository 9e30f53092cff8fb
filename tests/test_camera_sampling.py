"""training/camera_sampling.py: sampler statistics, FFHQ pose augmentation, trajectories, determinism, validation."""
import math

import pytest
import torch

from splatting.cameras import look_at
from training.camera_sampling import (COMPAT_PI, FFHQ_FOCAL, FFHQ_PIVOT, SHAPENET_FOCAL, SHAPENET_RADIUS,
                                      ffhq_pose_augmentation, frontal_label, orbit_cam2world, orbit_labels,
                                      sample_cam2world, video_trajectory_label)


def angles_from_origin(origin: torch.Tensor):
    """Invert origin = r (sin(phi) cos(pi - h), cos(phi), sin(phi) sin(pi - h)), phi = arccos(1 - 2 v / pi)."""
    radius = origin.norm(dim=-1)
    yaw = math.pi - torch.atan2(origin[..., 2], origin[..., 0])
    v = math.pi * (1 - origin[..., 1] / radius) / 2
    return yaw, v, radius


def assert_looks_at(cam2world: torch.Tensor, lookat):
    target = torch.tensor(lookat, dtype=cam2world.dtype)
    direction = torch.nn.functional.normalize(target - cam2world[..., :3, 3], dim=-1)
    torch.testing.assert_close(cam2world[..., :3, 2], direction, atol=1e-5, rtol=0)
    rot = cam2world[..., :3, :3]
    eye = torch.eye(3, dtype=rot.dtype).expand_as(rot)
    torch.testing.assert_close(rot.transpose(-1, -2) @ rot, eye, atol=1e-5, rtol=0)


def test_frontal_angles_give_frontal_camera():
    c2w = sample_cam2world(3, math.pi / 2, math.pi / 2, 0.0, 0.0, radius=2.7, lookat=(0, 0, 0.2), dtype=torch.float64)
    expected = look_at(torch.tensor([0, 0, 2.7], dtype=torch.float64), torch.tensor([0, 0, 0.2], dtype=torch.float64))
    torch.testing.assert_close(c2w, expected.expand(3, 4, 4), atol=1e-12, rtol=0)
    label = frontal_label(lookat=FFHQ_PIVOT, dtype=torch.float64)
    assert label.shape == (25,)
    torch.testing.assert_close(label[:16].reshape(4, 4), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(label[16:], torch.tensor([FFHQ_FOCAL, 0, 0.5, 0, FFHQ_FOCAL, 0.5, 0, 0, 1],
                                                        dtype=torch.float64))
    compat = frontal_label(compat=True, dtype=torch.float64)
    yaw, v, _ = angles_from_origin(compat[:16].reshape(4, 4)[:3, 3])
    assert abs(yaw - COMPAT_PI / 2) < 1e-9 and abs(v - COMPAT_PI / 2) < 1e-9


def test_gaussian_sampler_statistics():
    g = torch.Generator().manual_seed(0)
    lookat = (0.1, -0.05, 0.2)
    c2w = sample_cam2world(20000, 1.4, 1.7, 0.3, 0.15, radius=2.2, lookat=lookat, generator=g, dtype=torch.float64)
    yaw, v, radius = angles_from_origin(c2w[:, :3, 3])
    torch.testing.assert_close(radius, torch.full_like(radius, 2.2))
    # 20000 samples: standard error of the mean 0.3/141 = 0.002, of the std about 0.5%.
    assert abs(yaw.mean() - 1.4) < 0.01 and abs(yaw.std() / 0.3 - 1) < 0.03
    assert abs(v.mean() - 1.7) < 0.005 and abs(v.std() / 0.15 - 1) < 0.03
    assert_looks_at(c2w, lookat)


def test_uniform_sampler_range():
    g = torch.Generator().manual_seed(1)
    c2w = sample_cam2world(20000, 1.2, 1.5, 0.4, 0.2, distribution="uniform", generator=g, dtype=torch.float64)
    yaw, v, radius = angles_from_origin(c2w[:, :3, 3])
    torch.testing.assert_close(radius, torch.full_like(radius, 2.7))
    assert yaw.min() >= 0.8 - 1e-9 and yaw.max() <= 1.6 + 1e-9
    assert yaw.min() < 0.81 and yaw.max() > 1.59  # the whole range is covered
    assert v.min() >= 1.3 - 1e-9 and v.max() <= 1.7 + 1e-9
    assert abs(yaw.std() - 0.4 / math.sqrt(3)) < 0.005 and abs(v.mean() - 1.5) < 0.005
    assert_looks_at(c2w, (0, 0, 0))


def test_vertical_angle_is_clamped_to_avoid_the_poles():
    c2w = sample_cam2world(2, math.pi / 2, -1.0, 0.0, 0.0, dtype=torch.float64)
    assert torch.isfinite(c2w).all()
    _, v, _ = angles_from_origin(c2w[:, :3, 3])
    torch.testing.assert_close(v, torch.full_like(v, 1e-5), atol=1e-9, rtol=0)


def test_sampler_is_deterministic_for_a_seed():
    def draw(seed):
        return sample_cam2world(8, 1.5, 1.5, 0.3, 0.3, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def make_labels(n: int) -> torch.Tensor:
    """Dataset-like labels with distinct intrinsics per row, cameras aimed at the FFHQ pivot."""
    c2w = orbit_cam2world(torch.linspace(1.2, 1.9, n), torch.linspace(1.4, 1.7, n), lookat=FFHQ_PIVOT)
    intrinsics = torch.tensor([0, 0, 0.5, 0, 0, 0.5, 0, 0, 1.0]).repeat(n, 1)
    intrinsics[:, 0] = intrinsics[:, 4] = torch.linspace(3.5, 5.0, n)
    return torch.cat([c2w.flatten(1), intrinsics], dim=1)


def test_ffhq_pose_augmentation_replaces_about_prob_and_keeps_intrinsics():
    labels = make_labels(4000)
    before = labels.clone()
    out = ffhq_pose_augmentation(labels, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels, before)  # input untouched
    replaced = (out[:, :16] != labels[:, :16]).any(dim=1)
    assert abs(replaced.float().mean() - 0.5) < 0.04  # 4000 draws: standard error 0.008
    assert torch.equal(out[~replaced], labels[~replaced])
    assert torch.equal(out[:, 16:], labels[:, 16:])
    c2w = out[replaced, :16].reshape(-1, 4, 4).double()
    assert_looks_at(c2w, (0, 0, 0))
    yaw, v, radius = angles_from_origin(c2w[:, :3, 3])
    torch.testing.assert_close(radius, torch.full_like(radius, 2.7), atol=1e-5, rtol=0)
    yaw_std = math.pi * 16.6108 / 180  # 0.2899
    assert abs(yaw.mean() - math.pi / 2) < 0.03 and abs(yaw.std() / yaw_std - 1) < 0.06
    v_mean, v_half = math.pi / 2 - 5.15961 / 180 * math.pi, math.pi * 3 * 7.44043 / 180  # 0.3895
    assert v.min() >= v_mean - v_half - 1e-4 and v.max() <= v_mean + v_half + 1e-4
    assert v.min() < v_mean - v_half + 0.02 and v.max() > v_mean + v_half - 0.02


def test_ffhq_pose_augmentation_is_deterministic_and_honours_prob_extremes():
    labels = make_labels(64)

    def run(seed, prob=0.5, compat=False):
        return ffhq_pose_augmentation(labels, prob, generator=torch.Generator().manual_seed(seed), compat=compat)

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    assert torch.equal(run(5, prob=0.0), labels)
    assert (run(5, prob=1.0)[:, :16] != labels[:, :16]).any(dim=1).all()
    # compat uses 3.14 for pi in the constants: same draws, slightly different cameras
    clean, compat = run(5, prob=1.0), run(5, prob=1.0, compat=True)
    assert not torch.equal(clean, compat)
    torch.testing.assert_close(clean, compat, atol=0.02, rtol=0)


def test_video_trajectory_and_orbit():
    labels = video_trajectory_label(torch.arange(8), 8, lookat=FFHQ_PIVOT, dtype=torch.float64)
    assert labels.shape == (8, 25)
    c2w = labels[:, :16].reshape(8, 4, 4)
    assert_looks_at(c2w, FFHQ_PIVOT)
    yaw, v, radius = angles_from_origin(c2w[:, :3, 3])
    t = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(yaw, math.pi / 2 + 0.35 * torch.sin(2 * math.pi * t / 8))
    torch.testing.assert_close(v, math.pi / 2 - 0.05 + 0.25 * torch.cos(2 * math.pi * t / 8))
    torch.testing.assert_close(radius, torch.full_like(radius, 2.7))
    single = video_trajectory_label(3, 8, dtype=torch.float64)
    assert single.shape == (25,)
    torch.testing.assert_close(single, labels[3])
    torch.testing.assert_close(video_trajectory_label(11, 8, dtype=torch.float64), labels[3])  # periodic

    orbit = orbit_labels(12, radius=SHAPENET_RADIUS, lookat=(0, 0, 0), focal=SHAPENET_FOCAL, dtype=torch.float64)
    assert orbit.shape == (12, 25)
    yaw, v, radius = angles_from_origin(orbit[:, :16].reshape(12, 4, 4)[:, :3, 3])
    steps = torch.remainder(yaw.diff(), 2 * math.pi)
    torch.testing.assert_close(steps, torch.full_like(steps, 2 * math.pi / 12))
    torch.testing.assert_close(orbit[0, :3], torch.tensor([1.0, 0, 0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(radius, torch.full_like(radius, SHAPENET_RADIUS))
    assert orbit[0, 16] == SHAPENET_FOCAL


@pytest.mark.parametrize("call,match", [
    (lambda: sample_cam2world(0, 1.5, 1.5, 0.1, 0.1), "batch_size"),
    (lambda: sample_cam2world(4, 1.5, 1.5, -0.1, 0.1), "horizontal_stddev"),
    (lambda: sample_cam2world(4, 1.5, float("nan"), 0.1, 0.1), "vertical_mean"),
    (lambda: sample_cam2world(4, 1.5, 1.5, 0.1, 0.1, distribution="laplace"), "distribution"),
    (lambda: sample_cam2world(4, 1.5, 1.5, 0.1, 0.1, radius=0.0), "radius"),
    (lambda: sample_cam2world(4, 1.5, 1.5, 0.1, 0.1, lookat=(0, 0)), "lookat"),
    (lambda: ffhq_pose_augmentation(make_labels(4), 1.5), "prob"),
    (lambda: ffhq_pose_augmentation(make_labels(4)[:, :24], 0.5), "labels"),
    (lambda: ffhq_pose_augmentation(make_labels(4).numpy(), 0.5), "labels"),
    (lambda: video_trajectory_label(0, 0), "num_frames"),
    (lambda: orbit_labels(8, focal=-1.0), "focal"),
])
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
