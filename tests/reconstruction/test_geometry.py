"""reconstruction.geometry and splatting.cameras' pixel rays: (un)projection round trips, inverse-depth planes,
plane-sweep warps of analytically rendered planes, and the quaternion helpers."""
import math

import pytest
import torch

from reconstruction.geometry import (GeometryError, inverse_depth_candidates, project, rotation_to_quaternion,
                                     unproject, warp_to_planes)
from splatting.cameras import camera_rays, look_at, pixel_centers
from splatting.projection import quat_to_rotmat, quaternion_multiply


def random_rotations(n, generator, dtype=torch.float64):
    return quat_to_rotmat(torch.randn(n, 4, generator=generator, dtype=dtype))


def random_cameras(n, generator):
    """Normalized intrinsics (non-centred principal point, fx != fy) and camera-to-world rigid transforms."""
    k = torch.zeros(n, 3, 3, dtype=torch.float64)
    k[:, 0, 0] = 0.8 + torch.rand(n, generator=generator, dtype=torch.float64)
    k[:, 1, 1] = 0.8 + torch.rand(n, generator=generator, dtype=torch.float64)
    k[:, 0, 2] = 0.4 + 0.2 * torch.rand(n, generator=generator, dtype=torch.float64)
    k[:, 1, 2] = 0.4 + 0.2 * torch.rand(n, generator=generator, dtype=torch.float64)
    k[:, 2, 2] = 1
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, :3, :3] = random_rotations(n, generator)
    c2w[:, :3, 3] = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return k, c2w


def test_pixel_centers_are_half_integers():
    uv = pixel_centers(2, 3)
    assert uv.shape == (2, 3, 2)
    assert torch.equal(uv[..., 0], torch.tensor([[0.5, 1.5, 2.5]] * 2))
    assert torch.equal(uv[..., 1], torch.tensor([[0.5] * 3, [1.5] * 3]))


def test_project_inverts_unproject():
    g = torch.Generator().manual_seed(0)
    k, c2w = random_cameras(3, g)
    depth = 0.5 + 4 * torch.rand(3, 5, 7, generator=g, dtype=torch.float64)
    points = unproject(depth, k, c2w)
    assert points.shape == (3, 5, 7, 3)
    uv, z = project(points, k, c2w, width=7, height=5)
    torch.testing.assert_close(uv, pixel_centers(5, 7, dtype=torch.float64).expand(3, 5, 7, 2))
    torch.testing.assert_close(z, depth)


def test_unproject_uses_z_depth_and_normalized_intrinsics():
    """The principal-point pixel at depth d lies on the optical axis at distance d; a pixel one focal length to
    the right lies at x = d."""
    k = torch.tensor([[[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64)[None]
    points = unproject(torch.full((1, 4, 4), 3.0, dtype=torch.float64), k, c2w)
    # pixel centres at 0.5..3.5 of a 4-pixel image; the centre (2.0, 2.0) sits between pixels 1 and 2
    torch.testing.assert_close(points[0, 1, 1], torch.tensor([-0.375, -0.375, 3.0], dtype=torch.float64))
    torch.testing.assert_close(camera_rays(k, 4, 4)[0, 2, 2], torch.tensor([0.125, 0.125, 1.0], dtype=torch.float64))


def test_inverse_depth_candidates_are_linear_in_disparity():
    near, far = torch.tensor([1.0, 2.0]), torch.tensor([100.0, 4.0])
    disp = inverse_depth_candidates(near, far, 5)
    assert disp.shape == (2, 5)
    torch.testing.assert_close(disp[:, 0], 1 / far)
    torch.testing.assert_close(disp[:, -1], 1 / near)
    steps = disp.diff(dim=-1)
    assert (steps > 0).all()
    torch.testing.assert_close(steps, steps[:, :1].expand_as(steps))


def test_warp_to_own_camera_is_identity_at_every_depth():
    g = torch.Generator().manual_seed(1)
    k, c2w = random_cameras(2, g)
    src = torch.randn(2, 4, 6, 9, generator=g, dtype=torch.float64)
    depths = torch.tensor([[0.3, 1.0, 7.0], [2.0, 5.0, 50.0]], dtype=torch.float64)
    warped, valid = warp_to_planes(src, k, c2w, k, c2w, depths)
    assert warped.shape == (2, 4, 3, 6, 9) and valid.shape == (2, 3, 6, 9)
    torch.testing.assert_close(warped, src[:, :, None].expand_as(warped))
    assert valid.all()


def _plane_texture(x, y):
    """A smooth 2-channel texture on the plane, in plane coordinates."""
    return torch.stack([torch.sin(1.3 * x + 0.4 * y), torch.cos(0.7 * x - 1.1 * y)], dim=0)


def _unit_features(x, y):
    """Features of constant norm 1 on the plane (3 phase pairs): their dot product is 1 exactly where two
    views see the same plane point and smaller elsewhere, so the correlation peaks at the true depth."""
    phases = (2.0 * x + 0.5 * y, 1.1 * x - 1.7 * y, 0.3 * x + 2.3 * y)
    return torch.stack([f(p) for p in phases for f in (torch.cos, torch.sin)], dim=0) / math.sqrt(3)


def _render_plane(k, c2w, plane_z, height, width, texture=_plane_texture):
    """Exact image [2, H, W] of the textured plane z = plane_z (world coordinates) seen by one camera."""
    rays = camera_rays(k[None], height, width)[0]                     # [H, W, 3] camera space, z = 1
    rays_world = rays @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    t = (plane_z - origin[2]) / rays_world[..., 2]
    hit = origin + t[..., None] * rays_world
    return texture(hit[..., 0], hit[..., 1])


def test_fronto_parallel_plane_translation_warps_exactly():
    """A sideways baseline b maps the plane at depth d onto a shift of f*b/d pixels; an integer shift is
    sampled exactly, the uncovered border is zero and flagged invalid."""
    h, w, f, d = 8, 16, 1.0, 4.0
    k = torch.tensor([[f, 0, 0.5], [0, f * w / h, 0.5], [0, 0, 1]], dtype=torch.float64)
    ref_c2w = torch.eye(4, dtype=torch.float64)
    src_c2w = torch.eye(4, dtype=torch.float64)
    shift_px = 3
    src_c2w[0, 3] = shift_px * d / (f * w)  # baseline giving exactly 3 pixels of disparity at depth d
    ref = _render_plane(k, ref_c2w, d, h, w)
    src = _render_plane(k, src_c2w, d, h, w)
    warped, valid = warp_to_planes(src[None], k[None], ref_c2w[None], k[None], src_c2w[None],
                                   torch.tensor([[d]], dtype=torch.float64))
    torch.testing.assert_close(warped[0, :, 0, :, shift_px:], ref[:, :, shift_px:])
    assert valid[0, 0, :, shift_px:].all()
    assert not valid[0, 0, :, :shift_px].any()
    assert (warped[0, :, 0, :, :shift_px - 1] == 0).all()  # sampled beyond the image edge: zero padding


def test_fronto_parallel_plane_general_motion_warps_at_its_depth_only():
    """A rotated and translated source camera: warping at the plane's depth reproduces the reference image
    (up to bilinear interpolation of a smooth texture); a wrong depth does not."""
    h = w = 48
    d = 3.0
    k = torch.tensor([[1.2, 0, 0.5], [0, 1.2, 0.5], [0, 0, 1]], dtype=torch.float64)
    ref_c2w = torch.eye(4, dtype=torch.float64)
    src_c2w = look_at(torch.tensor([0.4, -0.2, 0.1], dtype=torch.float64),
                      torch.tensor([0.0, 0.0, d], dtype=torch.float64), up=(0.0, -1.0, 0.0))
    ref = _render_plane(k, ref_c2w, d, h, w)
    src = _render_plane(k, src_c2w, d, h, w)
    depths = torch.tensor([[d, 2 * d]], dtype=torch.float64)
    warped, valid = warp_to_planes(src[None], k[None], ref_c2w[None], k[None], src_c2w[None], depths)
    assert valid[0, 0].sum() > 0.5 * h * w
    assert not valid[0, 0].all()  # the rotated view does not cover the whole reference image
    right = (warped[0, :, 0] - ref).abs()[:, valid[0, 0]]
    wrong = (warped[0, :, 1] - ref).abs()[:, valid[0, 1]]
    assert right.max() < 0.01
    assert wrong.mean() > 0.05


def test_cost_volume_correlation_peaks_at_the_true_plane():
    """correlation_volume over analytically rendered feature maps of a plane: the best candidate is the plane's."""
    from reconstruction.encoder.cost_volume import correlation_volume
    h = w = 32
    k = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    c2w[1, 0, 3] = 0.3
    near, far = torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.tensor([[20.0, 20.0]], dtype=torch.float64)
    disparities = inverse_depth_candidates(near, far, 16)
    true_index = 9
    d = float(1 / disparities[0, 0, true_index])
    feats = torch.stack([_render_plane(k, c2w[i], d, h, w, _unit_features) for i in range(2)])[None]  # [1,2,6,h,w]
    corr = correlation_volume(feats, k.expand(1, 2, 3, 3), c2w[None], 1 / disparities)
    assert corr.shape == (1, 2, 16, h, w)
    best = corr.argmax(dim=2)[:, :, :, 8:-8]  # pixels seen by both views at every candidate depth
    assert (best == true_index).float().mean() > 0.95


def test_quaternion_of_rotation_round_trips_including_half_turns():
    g = torch.Generator().manual_seed(2)
    rots = random_rotations(200, g)
    half_turns = torch.stack([torch.diag(torch.tensor(v, dtype=torch.float64))
                              for v in ([1.0, -1, -1], [-1.0, 1, -1], [-1.0, -1, 1])])
    rots = torch.cat([rots, half_turns, torch.eye(3, dtype=torch.float64)[None]])
    quats = rotation_to_quaternion(rots)
    torch.testing.assert_close(quats.norm(dim=-1), torch.ones(len(rots), dtype=torch.float64))
    torch.testing.assert_close(quat_to_rotmat(quats), rots)


def test_quaternion_multiply_composes_rotations():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(10, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(quat_to_rotmat(quaternion_multiply(a, b)), quat_to_rotmat(a) @ quat_to_rotmat(b))


@pytest.mark.parametrize("call, match", [
    (lambda: unproject(torch.ones(2, 4, 4), torch.eye(3)[None].repeat(2, 1, 1), torch.eye(4)[None]), "depth"),
    (lambda: unproject(torch.ones(1, 4, 4), torch.eye(4)[None], torch.eye(4)[None]), "intrinsics"),
    (lambda: project(torch.ones(1, 5, 3), torch.eye(3)[None], torch.eye(4)[None].repeat(2, 1, 1), 4, 4), "intrinsics"),
    (lambda: project(torch.ones(2, 5, 3), torch.eye(3)[None], torch.eye(4)[None], 4, 4), "points_world"),
    (lambda: inverse_depth_candidates(torch.tensor([2.0]), torch.tensor([1.0]), 4), "near/far"),
    (lambda: inverse_depth_candidates(torch.tensor([1.0]), torch.tensor([2.0]), 1), "num_candidates"),
    (lambda: warp_to_planes(torch.ones(1, 2, 4, 4), torch.eye(3)[None], torch.eye(4)[None], torch.eye(3)[None],
                            torch.eye(4)[None], torch.ones(2, 3)), "depths"),
    (lambda: warp_to_planes(torch.ones(1, 2, 4, 4), torch.eye(3)[None], torch.eye(3)[None], torch.eye(3)[None],
                            torch.eye(4)[None], torch.ones(1, 3)), "ref_c2w"),
    (lambda: warp_to_planes(torch.ones(2, 4, 4), torch.eye(3)[None], torch.eye(4)[None], torch.eye(3)[None],
                            torch.eye(4)[None], torch.ones(1, 3)), "src"),
    (lambda: rotation_to_quaternion(torch.eye(4)), "rot"),
])
def test_bad_inputs_raise_geometry_errors(call, match):
    with pytest.raises(GeometryError, match=match):
        call()
