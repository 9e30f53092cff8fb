"""projection.project against an independent per-Gaussian float64 computation, plus SH and gradient checks."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from splatting import Gaussians
from splatting.projection import project, quat_to_rotmat
from splatting.sh import SH_C0, sh_basis, sh_to_color

from ._scenes import mixed_scene, orbit_cameras


def _oracle(mean, log_scale, quat, w2c, k, width, height, near):
    """Literal per-Gaussian transcription of docs/interfaces.md (numpy float64). Returns a dict or None if culled."""
    w, x, y, z = quat
    rot = Rotation.from_quat([x, y, z, w]).as_matrix()  # scipy: independent quaternion -> matrix, (x, y, z, w)
    sigma = rot @ np.diag(np.exp(2 * log_scale)) @ rot.T
    t = w2c[:3, :3] @ mean + w2c[:3, 3]
    if t[2] < near:
        return None
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = t[2] * min(max(t[0] / t[2], -lim_x_neg), lim_x_pos)
    ty = t[2] * min(max(t[1] / t[2], -lim_y_neg), lim_y_pos)
    jac = np.array([[fx / t[2], 0, -fx * tx / t[2] ** 2], [0, fy / t[2], -fy * ty / t[2] ** 2]])
    cov2d = jac @ w2c[:3, :3] @ sigma @ w2c[:3, :3].T @ jac.T + 0.3 * np.eye(2)
    det = np.linalg.det(cov2d)
    if det <= 0:
        return None
    inv = np.linalg.inv(cov2d)
    mid = 0.5 * (cov2d[0, 0] + cov2d[1, 1])
    radius = math.ceil(3 * math.sqrt(mid + math.sqrt(max(0.01, mid * mid - det))))
    mx, my = fx * t[0] / t[2] + cx, fy * t[1] / t[2] + cy
    if mx + radius <= 0 or mx - radius >= width or my + radius <= 0 or my - radius >= height:
        return None
    return {"means2d": [mx, my], "conics": [inv[0, 0], inv[0, 1], inv[1, 1]], "depth": t[2], "radius": radius}


def test_project_matches_per_gaussian_oracle():
    b, c = 2, 3
    gaussians = mixed_scene(b, 12, sh_degree=0, seed=1)
    cameras = orbit_cameras(b, c, generator=torch.Generator().manual_seed(2))
    proj = project(gaussians, cameras)
    n = gaussians.num_gaussians
    assert proj.means2d.shape == (b * c, n, 2) and proj.radii.dtype == torch.int32
    culled = visible = 0
    for bi in range(b):
        for ci in range(c):
            img = bi * c + ci
            for gi in range(n):
                expect = _oracle(gaussians.means[bi, gi].numpy(), gaussians.log_scales[bi, gi].numpy(),
                                 gaussians.quats[bi, gi].numpy(), cameras.world_to_cam[bi, ci].numpy(),
                                 cameras.K[bi, ci].numpy(), cameras.width, cameras.height, cameras.near)
                if expect is None:
                    assert proj.radii[img, gi] == 0, (bi, ci, gi)
                    culled += 1
                    continue
                visible += 1
                assert proj.radii[img, gi] == expect["radius"], (bi, ci, gi)
                np.testing.assert_allclose(proj.means2d[img, gi].numpy(), expect["means2d"], rtol=1e-10)
                np.testing.assert_allclose(proj.conics[img, gi].numpy(), expect["conics"], rtol=1e-8, atol=1e-12)
                assert proj.depths[img, gi].item() == pytest.approx(expect["depth"], rel=1e-12)
    assert culled >= 2 * b * c and visible >= 10 * b * c  # behind-camera and off-screen ones are culled everywhere


def test_culling_cases():
    gaussians = mixed_scene(1, 0)  # only the awkward ones
    cameras = orbit_cameras(1, 2)
    radii = project(gaussians, cameras).radii
    assert (radii[:, 0] == 0).all(), "behind the camera"
    assert (radii[:, 1] == 0).all(), "off-screen"
    assert (radii[:, 2] > 40).all(), "huge Gaussian covers the image"
    assert (radii[:, 3] == 2).all(), "tiny Gaussian: dilation alone gives ceil(3 sqrt(0.3 + 0.1)) = 2"
    assert (radii[:, 4:] > 0).all()


def test_near_plane_cull():
    gaussians = mixed_scene(1, 20)
    cameras = orbit_cameras(1, 1)
    z = project(gaussians, cameras).depths[0]
    cameras.near = float(z.sort().values[8])  # cull roughly the nearest third
    proj = project(gaussians, cameras)
    assert ((proj.radii[0] == 0) | (z >= cameras.near)).all()
    assert (proj.radii[0][z < cameras.near] == 0).all()


def test_opacity_and_colour_activations():
    gaussians = mixed_scene(2, 5, sh_degree=0)
    gaussians.sh[:, 0, 0] = torch.tensor([3.0, -3.0, 0.1], dtype=torch.float64)  # above 1 and below 0
    proj = project(gaussians, orbit_cameras(2, 2))
    expect_opacity = torch.sigmoid(gaussians.opacity_logits).repeat_interleave(2, dim=0)
    torch.testing.assert_close(proj.opacities, expect_opacity)
    expect_rgb = (SH_C0 * gaussians.sh[:, :, 0] + 0.5).clamp_min(0).repeat_interleave(2, dim=0)
    torch.testing.assert_close(proj.colors, expect_rgb)
    assert (proj.colors > 1).any() and (proj.colors == 0).any(), "no upper clamp, lower clamp at 0"


def test_quat_to_rotmat_matches_scipy_and_normalizes():
    q = torch.randn(50, 4, dtype=torch.float64) * 3
    ours = quat_to_rotmat(q).numpy()
    theirs = Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy()).as_matrix()
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_sh_basis_orthonormal_and_3dgs_signs():
    # Gauss-Legendre in cos(theta) x uniform phi integrates these polynomials (degree <= 6) exactly.
    nodes, weights = np.polynomial.legendre.leggauss(12)
    phi = np.arange(24) * 2 * np.pi / 24
    cos_t, ph = np.meshgrid(nodes, phi, indexing="ij")
    sin_t = np.sqrt(1 - cos_t ** 2)
    dirs = torch.from_numpy(np.stack([sin_t * np.cos(ph), sin_t * np.sin(ph), cos_t], axis=-1))
    quad_w = torch.from_numpy(np.repeat(weights[:, None], 24, axis=1) * (2 * np.pi / 24))
    basis = sh_basis(3, dirs)  # [12, 24, 16]
    gram = torch.einsum("ijk,ijl,ij->kl", basis, basis, quad_w)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-10, rtol=0)
    # Signs of the 3DGS convention: Y_1 = -C1 y, Y_2 = C1 z, Y_3 = -C1 x.
    e = torch.eye(3, dtype=torch.float64)
    b1 = sh_basis(1, e)
    assert b1[1, 1] < 0 and b1[2, 2] > 0 and b1[0, 3] < 0


def test_sh_colour_view_dependence():
    sh = torch.zeros(1, 4, 3, dtype=torch.float64)
    sh[0, 2] = 1.0  # the z-linear coefficient
    front = sh_to_color(sh, torch.tensor([[0.0, 0.0, 5.0]], dtype=torch.float64))
    back = sh_to_color(sh, torch.tensor([[0.0, 0.0, -5.0]], dtype=torch.float64))
    torch.testing.assert_close(front, torch.full((1, 3), 0.5 + 0.4886025119029199, dtype=torch.float64))
    torch.testing.assert_close(back, torch.full((1, 3), 0.5 - 0.4886025119029199, dtype=torch.float64))
    zero_dir = sh_to_color(sh, torch.zeros(1, 3, dtype=torch.float64))
    assert torch.isfinite(zero_dir).all()


def test_sh_colour_broadcasts_over_views_and_matches_the_explicit_sum():
    # The render path passes coefficients [B, 1, N, K, 3] with directions [B, I, N, 3] (one set per camera).
    gen = torch.Generator().manual_seed(0)
    for degree in (1, 2, 3):
        k = (degree + 1) ** 2
        sh = torch.randn(2, 1, 5, k, 3, dtype=torch.float64, generator=gen, requires_grad=True)
        dirs = torch.randn(2, 3, 5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
        colour = sh_to_color(sh, dirs)
        assert colour.shape == (2, 3, 5, 3)
        unit = dirs / dirs.norm(dim=-1, keepdim=True)
        basis = sh_basis(degree, unit)
        explicit = sum(basis[..., j, None] * sh[..., j, :] for j in range(k)) + 0.5
        torch.testing.assert_close(colour, explicit.clamp_min(0), atol=1e-12, rtol=0)
        assert torch.autograd.gradcheck(lambda c, d: sh_to_color(c, d), (sh, dirs))


def test_batched_equals_single_images():
    b, c = 2, 3
    gaussians = mixed_scene(b, 10, sh_degree=2, seed=3)
    cameras = orbit_cameras(b, c, generator=torch.Generator().manual_seed(4))
    full = project(gaussians, cameras)
    for bi in range(b):
        for ci in range(c):
            one_g = gaussians.map(lambda t: t[bi:bi + 1])
            one_c = type(cameras)(cameras.world_to_cam[bi:bi + 1, ci:ci + 1], cameras.K[bi:bi + 1, ci:ci + 1],
                                  cameras.width, cameras.height, cameras.near)
            single = project(one_g, one_c)
            for name in ("means2d", "conics", "depths", "radii", "opacities", "colors"):
                torch.testing.assert_close(getattr(full, name)[bi * c + ci], getattr(single, name)[0],
                                           rtol=1e-12, atol=1e-12)


@pytest.mark.gradcheck
def test_project_gradcheck():
    gaussians = mixed_scene(1, 3, sh_degree=1, seed=5)
    cameras = orbit_cameras(1, 2, generator=torch.Generator().manual_seed(6))
    # Off-screen/behind Gaussians are kept: their outputs must still have finite, correct gradients.
    names = ("means", "log_scales", "quats", "opacity_logits", "sh")
    inputs = [getattr(gaussians, name).clone().requires_grad_() for name in names]

    def fn(*tensors):
        p = project(Gaussians(*tensors), cameras)
        return p.means2d, p.conics, p.depths, p.opacities, p.colors

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
