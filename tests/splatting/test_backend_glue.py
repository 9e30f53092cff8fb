"""The pure-PyTorch glue of the CUDA backends, tested on the CPU with stand-in modules (no GPU, no gsplat, no Inria).

The stand-ins read their arguments the way the real libraries document them (gsplat: `isect_tiles`,
`isect_offset_encode`, `rasterize_to_pixels` with image width before height; Inria: column-major view and
projection matrices, the NDC -> pixel rule ((ndc + 1) * size - 1) / 2 with integer pixel centres, the 6-float
upper-triangle covariance, EWA with its own Jacobian) and check shapes, dtypes and layout; they then composite with
the contract's rules (splatting.backends.reference). So any glue mistake (a swapped argument, a transposed matrix,
a half-pixel shift, a wrong radius layout for the installed gsplat version) shows up as an image or gradient
difference against the reference backend. The CUDA kernels' own deviations are measured in test_parity.py.
"""
from __future__ import annotations

import math
from collections import namedtuple

import pytest
import torch

from splatting import Cameras, Gaussians, render
from splatting.backends import BACKENDS, BackendInfo, get_backend, reference, unavailable_reason
from splatting.backends import gsplat as gsplat_backend
from splatting.backends import inria as inria_backend
from splatting.cameras import look_at, rigid_inverse

from ._scenes import mixed_scene, orbit_cameras

FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")


# ----------------------------------------------------------------------------------------------- gsplat stand-in
class FakeGsplat:
    """gsplat's three tile functions; records every call. `version` decides the radii layout it demands."""

    def __init__(self, version="1.4.0"):
        self.__version__ = version
        self.calls = []

    def _per_axis(self):
        return tuple(int(v) for v in self.__version__.split(".")[:2]) >= (1, 5)

    def isect_tiles(self, means2d, radii, depths, tile_size, tile_width, tile_height, sort=True):
        images, n = depths.shape
        assert means2d.shape == (images, n, 2) and depths.shape == (images, n)
        for t in (means2d, depths):
            assert t.dtype == torch.float32 and t.is_contiguous()
        assert radii.dtype == torch.int32 and radii.is_contiguous()
        if self._per_axis():  # gsplat >= 1.5: separate x / y radii
            assert radii.shape == (images, n, 2)
            assert torch.equal(radii[..., 0], radii[..., 1])
            radii = radii[..., 0]
        else:
            assert radii.shape == (images, n)
        assert tile_size == 16 and sort
        self.calls.append(("isect_tiles", tile_width, tile_height))
        self.isect_ids = torch.zeros(1, dtype=torch.int64)
        self.flatten_ids = torch.zeros(1, dtype=torch.int32)
        self.binned = (radii.clone(), depths.clone(), tile_width, tile_height)
        return torch.zeros(images, n, dtype=torch.int32), self.isect_ids, self.flatten_ids

    def isect_offset_encode(self, isect_ids, n_images, tile_width, tile_height):
        assert isect_ids is self.isect_ids
        self.calls.append(("isect_offset_encode", n_images, tile_width, tile_height))
        self.offsets = torch.zeros(n_images, tile_height, tile_width, dtype=torch.int32)
        return self.offsets

    def rasterize_to_pixels(self, means2d, conics, colors, opacities, image_width, image_height, tile_size,
                            isect_offsets, flatten_ids):
        images, n = opacities.shape
        assert isect_offsets is self.offsets and flatten_ids is self.flatten_ids and tile_size == 16
        assert means2d.shape == (images, n, 2) and conics.shape == (images, n, 3) and colors.shape[:2] == (images, n)
        for t in (means2d, conics, colors, opacities):
            assert t.dtype == torch.float32 and t.is_contiguous()
        radii, depths, tile_width, tile_height = self.binned
        assert (tile_width, tile_height) == (math.ceil(image_width / 16), math.ceil(image_height / 16))
        self.calls.append(("rasterize_to_pixels", image_width, image_height))
        return reference.rasterize(means2d, conics, colors, opacities, depths, radii, image_width, image_height)


@pytest.fixture
def fake_gsplat(monkeypatch):
    """A FakeGsplat behind splatting.backends.gsplat, and the backend allowed on CPU tensors for render()."""
    fake = FakeGsplat()
    monkeypatch.setattr(gsplat_backend, "_import_gsplat", lambda: fake)
    monkeypatch.setattr(gsplat_backend, "availability", lambda: None)
    monkeypatch.setitem(BACKENDS, "gsplat", BackendInfo(BACKENDS["gsplat"].module, ("cpu", "cuda")))
    return fake


def _render_pair(backend, gaussians, cameras, background=None, seed=0):
    """(outputs, parameter gradients) of `backend` and of 'reference' for the same random weighted loss."""
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = gaussians.batch_size, cameras.num_cameras, cameras.height, cameras.width
    weights = [torch.rand(b, c, k, h, w, generator=gen, dtype=gaussians.means.dtype) for k in (3, 1, 1)]
    results = []
    for name in (backend, "reference"):
        leaves = gaussians.map(lambda t: t.detach().clone().requires_grad_())
        out = render(leaves, cameras, background=background, backend=name)
        sum((wt * x).sum() for wt, x in zip(weights, (out.color, out.depth, out.alpha))).backward()
        results.append((out, {k: getattr(leaves, k).grad for k in FIELDS}))
    return results


def _assert_same(results, out_atol, grad_rtol):
    (out, grads), (ref, ref_grads) = results
    for field in ("color", "depth", "alpha"):
        got, want = getattr(out, field), getattr(ref, field)
        assert got.shape == want.shape and got.dtype == want.dtype, field
        diff = (got - want).abs().max().item()
        assert diff <= out_atol, f"{field} differs by {diff:.3g}"
    for key, want in ref_grads.items():
        got = grads[key]
        assert got is not None and got.dtype == want.dtype, key
        scale = want.abs().max().item()
        assert scale > 0, key
        diff = (got - want).abs().max().item()
        assert diff <= grad_rtol * scale, f"gradient of {key}: max diff {diff:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("version", ["1.4.0", "1.5.3", "1.10.1+cu121"])
def test_gsplat_glue_renders_like_reference(fake_gsplat, version):
    fake_gsplat.__version__ = version
    gaussians = mixed_scene(2, 30, sh_degree=1, dtype=torch.float32, seed=3)
    cameras = orbit_cameras(2, 2, width=37, height=21, dtype=torch.float32, generator=torch.Generator().manual_seed(4))
    results = _render_pair("gsplat", gaussians, cameras, background=torch.tensor([0.2, 0.5, 0.8]))
    _assert_same(results, out_atol=1e-6, grad_rtol=1e-5)
    # One call for all B*C = 4 images; tiles of a 37x21 image: 3 x 2 (width before height everywhere).
    assert fake_gsplat.calls[:3] == [("isect_tiles", 3, 2), ("isect_offset_encode", 4, 3, 2),
                                     ("rasterize_to_pixels", 37, 21)]


def test_gsplat_glue_casts_float64_to_float32_and_back(fake_gsplat):
    gaussians = mixed_scene(1, 20, dtype=torch.float64, seed=5)
    cameras = orbit_cameras(1, 3, width=24, height=40, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    results = _render_pair("gsplat", gaussians, cameras)
    _assert_same(results, out_atol=1e-5, grad_rtol=1e-4)  # float32 inside, float64 outside
    assert results[0][0].color.dtype == torch.float64


def test_gsplat_glue_means2d_gradient_and_radii(fake_gsplat):
    gaussians = mixed_scene(1, 25, dtype=torch.float32, seed=7)
    cameras = orbit_cameras(1, 2, width=30, height=30, dtype=torch.float32, generator=torch.Generator().manual_seed(8))
    grads = []
    for name in ("gsplat", "reference"):
        leaves = gaussians.map(lambda t: t.detach().clone().requires_grad_())
        out = render(leaves, cameras, backend=name, return_means2d=True)
        out.color.sum().backward()
        grads.append((out.means2d.grad, out.radii))
    (got, radii), (want, ref_radii) = grads
    assert torch.equal(radii, ref_radii) and radii.dtype == torch.int32 and (radii == 0).any()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert want.abs().max() > 0


def test_gsplat_glue_never_calls_gsplat_without_gaussians(fake_gsplat):
    out, alpha = gsplat_backend.rasterize(torch.zeros(3, 0, 2), torch.zeros(3, 0, 3), torch.zeros(3, 0, 4),
                                          torch.zeros(3, 0), torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.int32),
                                          17, 9)
    assert out.shape == (3, 9, 17, 4) and alpha.shape == (3, 9, 17, 1) and fake_gsplat.calls == []


@pytest.mark.parametrize("version, per_axis", [("1.4.0", False), ("1.4.9", False), ("1.5.0", True), ("1.5.3", True),
                                               ("1.10.0", True), ("2.0.0rc1", True), ("unknown", False)])
def test_gsplat_radii_layout_follows_the_version(version, per_axis):
    assert gsplat_backend._radii_per_axis(type("M", (), {"__version__": version})) is per_axis


def test_gsplat_availability_reasons(monkeypatch):
    def missing():
        raise ImportError("No module named 'gsplat'")

    monkeypatch.setattr(gsplat_backend, "_import_gsplat", missing)
    assert "pip install gsgan[cuda]" in gsplat_backend.availability()
    old = type("Old", (), {"__version__": "1.0.0", "rasterize_to_pixels": None})
    monkeypatch.setattr(gsplat_backend, "_import_gsplat", lambda: old)
    reason = gsplat_backend.availability()
    assert "1.0.0 lacks isect_tiles, isect_offset_encode" in reason and "gsplat>=1.4" in reason
    monkeypatch.setattr(gsplat_backend, "_import_gsplat", lambda: FakeGsplat())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gsplat_backend.availability() == "no CUDA device"
    assert unavailable_reason("gsplat") == "no CUDA device"
    with pytest.raises(RuntimeError, match="backend 'gsplat' is not available: no CUDA device"):
        get_backend("gsplat", "cpu")


# ----------------------------------------------------------------------------------------------- Inria stand-in
ORIGINAL_FIELDS = ("image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier", "viewmatrix",
                   "projmatrix", "sh_degree", "campos", "prefiltered", "debug")


def fake_inria_module(fields=ORIGINAL_FIELDS, returns_depth=False):
    """A stand-in for `diff_gaussian_rasterization`, with the settings fields of a given release."""
    settings_type = namedtuple("GaussianRasterizationSettings", fields)
    calls = []

    class GaussianRasterizer:
        def __init__(self, raster_settings):
            assert isinstance(raster_settings, settings_type)
            self.s = raster_settings

        def __call__(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None, rotations=None,
                     cov3D_precomp=None):
            s = self.s
            n = means3D.shape[0]
            assert shs is None and scales is None and rotations is None and s.sh_degree == 0
            assert means3D.shape == (n, 3) and means2D.shape == (n, 3) and opacities.shape == (n, 1)
            assert colors_precomp.shape == (n, 3) and cov3D_precomp.shape == (n, 6)
            assert not means2D.detach().any() and means2D.requires_grad == means3D.requires_grad
            for t in (means3D, opacities, colors_precomp, cov3D_precomp, s.viewmatrix, s.projmatrix, s.campos):
                assert t.dtype == torch.float32
            assert s.viewmatrix.shape == (4, 4) and s.projmatrix.shape == (4, 4) and s.campos.shape == (3,)
            assert s.scale_modifier == 1.0 and not s.prefiltered and not s.debug and not s.bg.any()
            if "antialiasing" in fields:
                assert s.antialiasing is False
            calls.append((s.image_width, s.image_height))
            w, h = s.image_width, s.image_height
            # Matrices are read column-major: element (row r, col c) sits at flat index 4 c + r.
            view = s.viewmatrix.reshape(16).reshape(4, 4).T
            proj = s.projmatrix.reshape(16).reshape(4, 4).T
            hom = torch.cat([means3D, torch.ones_like(means3D[:, :1])], dim=1)
            p_view = hom @ view.T
            p_hom = hom @ proj.T
            ndc = p_hom[:, :2] / (p_hom[:, 3:] + 1e-7)
            pixel = ((ndc + 1) * torch.tensor([w, h], dtype=ndc.dtype) - 1) * 0.5  # integer pixel centres
            tx, ty, tz = p_view[:, 0], p_view[:, 1], p_view[:, 2]
            focal_x, focal_y = w / (2 * s.tanfovx), h / (2 * s.tanfovy)
            limx, limy = 1.3 * s.tanfovx, 1.3 * s.tanfovy
            tx = (tx / tz).clamp(-limx, limx) * tz
            ty = (ty / tz).clamp(-limy, limy) * tz
            zero = torch.zeros_like(tz)
            jac = torch.stack([torch.stack([focal_x / tz, zero, -focal_x * tx / tz ** 2], -1),
                               torch.stack([zero, focal_y / tz, -focal_y * ty / tz ** 2], -1)], -2)  # [N, 2, 3]
            xx, xy, xz, yy, yz, zz = cov3D_precomp.unbind(-1)
            cov3 = torch.stack([torch.stack([xx, xy, xz], -1), torch.stack([xy, yy, yz], -1),
                                torch.stack([xz, yz, zz], -1)], -2)
            t = jac @ view[:3, :3]
            cov2 = t @ cov3 @ t.transpose(-1, -2) + 0.3 * torch.eye(2)
            a, b, c = cov2[:, 0, 0], cov2[:, 0, 1], cov2[:, 1, 1]
            det = a * c - b * b
            conics = torch.stack([c / det, -b / det, a / det], -1)
            mid = 0.5 * (a + c)
            lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))  # its eigenvalue floor
            radii = torch.ceil(3 * torch.sqrt(lam.detach())).to(torch.int32)
            radii = torch.where((tz.detach() > 0.2) & (det.detach() > 0), radii, torch.zeros_like(radii))
            out, alpha = reference.rasterize((pixel + 0.5)[None], conics[None], colors_precomp[None],
                                             opacities[None, :, 0], tz.detach()[None], radii[None], w, h)
            color = out[0].permute(2, 0, 1)
            return (color, radii, torch.zeros(1, h, w)) if returns_depth else (color, radii)

    module = type("diff_gaussian_rasterization", (), {})()
    module.GaussianRasterizationSettings = settings_type
    module.GaussianRasterizer = GaussianRasterizer
    module.calls = calls
    return module


def _use_fake_inria(monkeypatch, module):
    monkeypatch.setattr(inria_backend, "_import", lambda: module)
    monkeypatch.setattr(inria_backend, "availability", lambda: None)
    monkeypatch.setitem(BACKENDS, "inria", BackendInfo(BACKENDS["inria"].module, ("cpu", "cuda")))


def _thresholds_free_scene(batch, n, seed):
    """Gaussians well inside every view, clearly elongated in screen space and far from the near plane, so that
    Inria's own thresholds (near 0.2, Jacobian clamp, eigenvalue floor 0.1) give what the shared projection gives."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    quats = torch.cat([torch.ones(batch, n, 1), (rand(batch, n, 3) - 0.5) * 0.3], dim=-1)
    return Gaussians(means=(rand(batch, n, 3) - 0.5) * torch.tensor([0.5, 0.3, 0.4]),
                     log_scales=torch.stack([-2.2 + 0.3 * rand(batch, n), -3.6 + 0.2 * rand(batch, n),
                                             -3.0 + 0.2 * rand(batch, n)], dim=-1),
                     quats=quats, opacity_logits=rand(batch, n) * 4 - 2, sh=(rand(batch, n, 4, 3) - 0.5) * 2)


def _cameras_with_offset_principal_point(batch, cams, width, height):
    yaw = torch.linspace(-0.4, 0.4, batch * cams).reshape(batch, cams)
    origins = torch.stack([2.7 * torch.sin(yaw), 0.2 * torch.cos(3 * yaw), 2.7 * torch.cos(yaw)], dim=-1)
    w2c = rigid_inverse(look_at(origins, torch.tensor([0.02, -0.01, 0.0])))
    k = torch.tensor([[1.7 * width, 0, 0.56 * width], [0, 1.6 * width, 0.44 * height], [0, 0, 1]])
    return Cameras(w2c, k.expand(batch, cams, 3, 3).clone(), width=width, height=height)


@pytest.mark.parametrize("fields, returns_depth", [(ORIGINAL_FIELDS, False),
                                                   (ORIGINAL_FIELDS + ("antialiasing",), True)])
def test_inria_glue_renders_like_reference(monkeypatch, fields, returns_depth):
    module = fake_inria_module(fields, returns_depth)
    _use_fake_inria(monkeypatch, module)
    gaussians = _thresholds_free_scene(2, 40, seed=9)
    cameras = _cameras_with_offset_principal_point(2, 2, width=40, height=28)
    results = _render_pair("inria", gaussians, cameras, background=torch.tensor([0.9, 0.1, 0.3]), seed=10)
    assert results[1][0].alpha.amax() > 0.5  # the scene is really seen
    _assert_same(results, out_atol=2e-5, grad_rtol=1e-3)
    # One rasterizer call per image and pass (colour, then depth + alpha): 2 scenes x 2 cameras x 2 passes.
    assert module.calls == [(40, 28)] * 8


def test_inria_glue_refuses_unknown_settings_and_means2d(monkeypatch):
    _use_fake_inria(monkeypatch, fake_inria_module(ORIGINAL_FIELDS + ("kernel_size",)))
    gaussians = _thresholds_free_scene(1, 5, seed=11)
    cameras = _cameras_with_offset_principal_point(1, 1, width=16, height=16)
    with pytest.raises(RuntimeError, match=r"unsupported settings field\(s\) \['kernel_size'\]"):
        render(gaussians, cameras, backend="inria")
    with pytest.raises(ValueError, match="return_means2d: not supported by the 'inria' backend"):
        render(gaussians, cameras, backend="inria", return_means2d=True)


def test_inria_glue_empty_scene_never_calls_the_extension(monkeypatch):
    module = fake_inria_module()
    _use_fake_inria(monkeypatch, module)
    gaussians = _thresholds_free_scene(2, 0, seed=12)
    out = render(gaussians, _cameras_with_offset_principal_point(2, 3, width=12, height=10), backend="inria",
                 background=torch.ones(3))
    assert out.color.shape == (2, 3, 3, 10, 12) and out.alpha.shape == (2, 3, 1, 10, 12)
    assert (out.color == 1).all() and (out.alpha == 0).all() and (out.depth == 0).all() and module.calls == []


def test_inria_projection_matrix_maps_to_our_pixels():
    """Its NDC -> pixel rule ((ndc + 1) * size - 1) / 2 on our projection matrix lands on our pixel minus 0.5."""
    k = torch.tensor([[50.0, 0, 13.0], [0, 47.0, 21.0], [0, 0, 1]])
    p = inria_backend._projection_matrix(k, 30, 40, near=0.05)
    points = torch.tensor([[0.1, -0.2, 2.0, 1.0], [-0.3, 0.25, 3.5, 1.0], [0.0, 0.0, 1.0, 1.0]])
    hom = points @ p.T
    ndc = hom[:, :2] / hom[:, 3:]
    pixel = ((ndc + 1) * torch.tensor([30.0, 40.0]) - 1) / 2
    ours = torch.stack([50 * points[:, 0] / points[:, 2] + 13, 47 * points[:, 1] / points[:, 2] + 21], -1)
    torch.testing.assert_close(pixel, ours - 0.5, rtol=0, atol=1e-5)
    torch.testing.assert_close(hom[:, 3], points[:, 2])  # w = view z


def test_inria_availability_reasons(monkeypatch):
    def missing():
        raise ImportError("No module named 'diff_gaussian_rasterization'")

    monkeypatch.setattr(inria_backend, "_import", missing)
    assert "diff_gaussian_rasterization not installed" in inria_backend.availability()
    monkeypatch.setattr(inria_backend, "_import", lambda: type("Empty", (), {})())
    assert "lacks GaussianRasterizationSettings" in inria_backend.availability()
    monkeypatch.setattr(inria_backend, "_import", lambda: fake_inria_module())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inria_backend.availability() == "no CUDA device"
