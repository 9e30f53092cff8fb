"""render(): shapes, compositing of depth/background, boundary validation, backend selection."""
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

import splatting
import splatting.backends as registry
from splatting import Cameras, Gaussians, RenderOutput, render
from splatting.backends import get_backend, reference

from ._scenes import mixed_scene, orbit_cameras

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _single_gaussian(dtype=torch.float64, opacity_logit=0.0, z=0.0):
    """One isotropic Gaussian at the origin, seen head-on from (0, 0, 2.7) by a 16x16 camera."""
    g = Gaussians(means=torch.tensor([[[0.0, 0.0, z]]], dtype=dtype),
                  log_scales=torch.full((1, 1, 3), math.log(0.05), dtype=dtype),
                  quats=torch.tensor([[[1.0, 0, 0, 0]]], dtype=dtype),
                  opacity_logits=torch.tensor([[opacity_logit]], dtype=dtype),
                  sh=torch.full((1, 1, 1, 3), 1.0, dtype=dtype))
    w2c = torch.eye(4, dtype=dtype)
    w2c[2, 3] = 2.7
    w2c[0, 0] = -1  # camera at +z looking toward -z: flip x and z (a proper rotation about y)
    w2c[2, 2] = -1
    k = torch.tensor([[40.0, 0, 8], [0, 40.0, 8], [0, 0, 1]], dtype=dtype)
    return g, Cameras(w2c[None, None], k[None, None], width=16, height=16)


def test_shapes_for_batches_of_scenes_and_cameras():
    b, c = 2, 3
    out = render(mixed_scene(b, 10), orbit_cameras(b, c, width=20, height=12), backend="reference")
    assert isinstance(out, RenderOutput)
    assert out.color.shape == (b, c, 3, 12, 20)
    assert out.depth.shape == (b, c, 1, 12, 20) and out.alpha.shape == (b, c, 1, 12, 20)
    assert out.means2d is None and out.radii is None
    with pytest.raises(Exception):
        out.color = out.alpha  # frozen


def test_images_are_scene_major_and_independent():
    b, c = 2, 2
    g = mixed_scene(b, 10, seed=4)
    cams = orbit_cameras(b, c, width=20, height=12, generator=torch.Generator().manual_seed(5))
    full = render(g, cams, backend="reference")
    one = render(g.map(lambda t: t[1:2]), Cameras(cams.world_to_cam[1:2, 1:2], cams.K[1:2, 1:2], 20, 12),
                 backend="reference")
    torch.testing.assert_close(full.color[1, 1], one.color[0, 0])
    torch.testing.assert_close(full.depth[1, 1], one.depth[0, 0])


def test_centre_pixel_composition_is_analytic():
    g, cams = _single_gaussian(opacity_logit=0.5)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    out = render(g, cams, background=bg, backend="reference")
    # Pixel (7, 7) is centred at (7.5, 7.5); the mean projects to (8, 8): offset 0.5 px in x and y.
    sigma2d = 40.0 * 0.05 / 2.7  # std in pixels
    var = sigma2d ** 2 + 0.3
    alpha = torch.sigmoid(torch.tensor(0.5, dtype=torch.float64)) * math.exp(-0.5 * (0.25 + 0.25) / var)
    colour = 0.28209479177387814 * 1.0 + 0.5
    torch.testing.assert_close(out.alpha[0, 0, 0, 7, 7], alpha)
    torch.testing.assert_close(out.color[0, 0, :, 7, 7], colour * alpha + (1 - alpha) * bg)
    torch.testing.assert_close(out.depth[0, 0, 0, 7, 7], torch.tensor(2.7, dtype=torch.float64))


def test_empty_scene_renders_background():
    cams = orbit_cameras(2, 2, width=10, height=7)
    g = mixed_scene(2, 0).select(slice(0, 0))
    assert g.num_gaussians == 0
    out = render(g, cams, background=torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64))
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0
    torch.testing.assert_close(out.color[1, 0, :, 3, 4], torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64))


def test_background_broadcasting_and_errors():
    g, cams = _single_gaussian()
    for bg in (torch.ones(3, dtype=torch.float64), torch.ones(1, 1, 3, dtype=torch.float64), [1.0, 1.0, 1.0]):
        out = render(g, cams, background=bg, backend="reference")
        assert out.color.shape == (1, 1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"background: expected a tensor broadcastable to \[B, C, 3\]"):
        render(g, cams, background=torch.ones(4), backend="reference")
    with pytest.raises(ValueError, match="background: expected finite"):
        render(g, cams, background=torch.tensor([0.0, float("nan"), 0.0]), backend="reference")


def test_return_means2d_keeps_screen_space_gradient():
    g = mixed_scene(2, 6).map(lambda t: t.requires_grad_())
    cams = orbit_cameras(2, 3, width=20, height=12)
    out = render(g, cams, backend="reference", return_means2d=True)
    assert out.means2d.shape == (2, 3, g.num_gaussians, 2) and out.radii.shape == (2, 3, g.num_gaussians)
    out.color.sum().backward()
    grad = out.means2d.grad
    assert grad is not None and grad.shape == out.means2d.shape
    assert (grad[out.radii == 0] == 0).all(), "culled Gaussians get no screen-space gradient"
    assert grad[out.radii > 0].abs().sum() > 0


def test_validation_errors_name_the_argument():
    g = mixed_scene(2, 4)
    cams = orbit_cameras(2, 1)
    with pytest.raises(ValueError, match="gaussians: expected a splatting.Gaussians"):
        render({"means": g.means}, cams)
    with pytest.raises(ValueError, match="cameras: expected a splatting.Cameras"):
        render(g, "camera")
    with pytest.raises(ValueError, match=r"cameras: batch size B = 3 .* gaussians B = 2"):
        render(g, orbit_cameras(3, 1))
    bad = g.map(torch.clone)
    bad.means[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="Gaussians.means: 1 non-finite"):
        render(bad, cams)
    bad = g.map(torch.clone)
    bad.quats[1, 0] = 0
    with pytest.raises(ValueError, match="Gaussians.quats: 1 quaternion"):
        render(bad, cams)
    with pytest.raises(ValueError, match=r"Gaussians.means: expected shape \[B, N, 3\]"):
        Gaussians(g.means[..., :2], g.log_scales, g.quats, g.opacity_logits, g.sh)
    odd = orbit_cameras(2, 1)
    odd.width = 0  # Cameras is mutable: render re-checks
    with pytest.raises(ValueError, match="cameras.width: expected a positive int"):
        render(g, odd)
    with pytest.raises(ValueError, match=r"backend: unknown name 'cuda'; valid: 'auto', 'reference', 'cpu'"):
        render(g, cams, backend="cuda")


def test_device_mismatch_is_reported_before_touching_values():
    g = mixed_scene(1, 3).map(lambda t: t.to("meta"))
    with pytest.raises(ValueError, match="cameras: on cpu, but gaussians are on meta"):
        render(g, orbit_cameras(1, 1))


def test_explicit_unavailable_backend_raises_with_reason(monkeypatch):
    for name in ("gsplat", "inria"):
        if registry.unavailable_reason(name) is None:
            continue
        with pytest.raises(RuntimeError, match=f"backend '{name}' is not available: .+"):
            get_backend(name, "cpu")
    monkeypatch.setattr(registry, "unavailable_reason", lambda name: None)  # pretend everything is installed
    with pytest.raises(RuntimeError, match=r"backend 'gsplat' cannot render cpu tensors \(it supports: cuda\)"):
        get_backend("gsplat", "cpu")


def test_env_override_and_auto_fallback(monkeypatch, caplog):
    monkeypatch.setenv(registry.ENV_VAR, "reference")
    assert get_backend("auto", "cpu") is reference
    monkeypatch.setenv(registry.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match="GSGAN_BACKEND='nonsense': unknown backend"):
        get_backend("auto", "cpu")
    monkeypatch.delenv(registry.ENV_VAR)

    monkeypatch.setattr(registry, "_auto_choice", {})
    real = registry.unavailable_reason
    monkeypatch.setattr(registry, "unavailable_reason",
                        lambda name: "no C++ compiler found" if name == "cpu" else real(name))
    with caplog.at_level(logging.INFO, logger="splatting.backends"):
        with pytest.warns(RuntimeWarning, match=r"'cpu' is unavailable \(no C\+\+ compiler found\).*To fix"):
            assert get_backend("auto", "cpu") is reference
    assert "picked 'reference'" in caplog.text
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        assert get_backend("auto", "cpu") is reference


def test_import_compiles_nothing_and_doctor_reports():
    code = ("import sys, splatting; "
            "print(sorted(m for m in sys.modules if m.startswith('splatting.backends.') or 'cpp_extension' in m))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
    from splatting.doctor import report

    text = report()
    for name in registry.BACKENDS:
        assert name in text
    assert "backend='auto' picks" in text
    assert set(splatting.__all__) == {"Gaussians", "Cameras", "render", "RenderOutput", "available_backends",
                                      "write_ply", "read_ply"}


def test_docstring_example_runs():
    import doctest

    result = doctest.testmod(sys.modules["splatting.render"])
    assert result.attempted > 0 and result.failed == 0
