"""Geometry on real pixels: the Middlebury 2014 "Motorcycle" stereo pair (shipped by scikit-image), written as a
2-frame chunk, read back through the chunk loader and swept over inverse depth with the project's own warping
(`reconstruction.geometry.warp_to_planes`, the cost volume's warp). No learning: if the cameras, the chunk format,
the conventions (pixel centres, normalized intrinsics, OpenCV axes) or the warp were wrong anywhere, the
winner-take-all depth would not land on the ground-truth disparity."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("skimage")

from reconstruction.chunks import ChunkStore, decode_image, parse_cameras, write_chunks  # noqa: E402
from reconstruction.convert_views import motorcycle_example  # noqa: E402
from reconstruction.geometry import warp_to_planes  # noqa: E402

FOCAL, BASELINE, DOFFS = 994.978, 0.193001, 31.086  # px, metres, px (the downsampled pair's calibration)
WINDOW = 9


def _box_mean(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, WINDOW, stride=1, padding=WINDOW // 2, count_include_pad=False)


def _zncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Zero-mean normalized cross-correlation of [N, 1, H, W] maps over WINDOW x WINDOW boxes."""
    mu_a, mu_b = _box_mean(a), _box_mean(b)
    var_a = (_box_mean(a * a) - mu_a ** 2).clamp_min(1e-6)
    var_b = (_box_mean(b * b) - mu_b ** 2).clamp_min(1e-6)
    return (_box_mean(a * b) - mu_a * mu_b) / torch.sqrt(var_a * var_b)


def _textured(gray: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """Pixels whose local mean absolute gradient exceeds `threshold` (flat regions carry no stereo signal)."""
    gx = (gray[..., :, 2:] - gray[..., :, :-2]).abs()
    gy = (gray[..., 2:, :] - gray[..., :-2, :]).abs()
    grad = F.pad(gx, (1, 1, 0, 0)) + F.pad(gy, (0, 0, 1, 1))
    return F.avg_pool2d(grad, 5, stride=1, padding=2)[0, 0] > threshold


def test_plane_sweep_recovers_ground_truth_disparity(tmp_path):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    example, disparity = motorcycle_example()
    write_chunks(str(tmp_path), "test", [example])
    stored = ChunkStore(str(tmp_path), "test").get(example["key"])
    extrinsics, intrinsics = parse_cameras(stored["cameras"])
    left, right = (decode_image(data, f"frame {i}").float()[None] / 255 for i, data in enumerate(stored["images"]))
    height, width = left.shape[-2:]
    assert disparity.shape == (height, width)

    gray_left, gray_right = left.mean(1, keepdim=True), right.mean(1, keepdim=True)
    candidates = torch.arange(0.0, 72.0, 0.5)  # disparities in pixels; the pair's ground truth spans ~7-60
    depths = FOCAL * BASELINE / (candidates + DOFFS)  # z-depth of each fronto-parallel plane, metres
    scores = []
    for chunk in depths.split(16):
        warped, _ = warp_to_planes(gray_right, intrinsics[:1], extrinsics[:1], intrinsics[1:], extrinsics[1:],
                                   chunk[None])  # [1, 1, D, H, W]: the right image seen from the left camera
        planes = warped[0].permute(1, 0, 2, 3)  # [D, 1, H, W]
        scores.append(_zncc(gray_left.expand_as(planes), planes)[:, 0])
    estimate = candidates[torch.cat(scores).argmax(dim=0)]  # winner-take-all

    truth = torch.from_numpy(disparity)
    valid = torch.isfinite(truth) & _textured(gray_left)
    assert valid.float().mean() > 0.5  # most of the image is textured and has ground truth
    within = ((estimate - truth).abs() <= 1.0)[valid].float().mean().item()
    assert within >= 0.70, f"only {within:.1%} of valid textured pixels within 1 px of the ground truth"
