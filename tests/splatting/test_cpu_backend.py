"""The C++ CPU rasterizer against two oracles: a literal per-pixel loop (below) and splatting.backends.reference.

Forward within 1e-4, every gradient (means2d, conics, feats, opacities) within 1e-3 relative; plus the build
machinery (cache reuse, stale lock, missing compiler, compiler log, OpenMP probe, build key), double backward and
input validation. Tests that need the compiled extension take the `cpu_backend` fixture (tests/conftest.py): it
skips when the build fails, except on CI, where that is a failure.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from splatting.backends import cpu

from ..conftest import require_cpu_backend


# ----------------------------------------------------------------------------------------------- oracle
def loop_rasterize(means2d, conics, feats, opacities, depths, radii, width, height):
    """docs/interfaces.md rasterization contract, one pixel at a time (float32 torch scalars, autograd)."""
    num_images, n, d_feats = feats.shape
    tiles_x, tiles_y = math.ceil(width / 16), math.ceil(height / 16)
    f32 = torch.float32
    outs, alphas = [], []
    for img in range(num_images):
        order = sorted(range(n), key=lambda g: (depths[img, g].item(), g))
        rects = {}
        for g in order:
            if radii[img, g] <= 0:
                continue
            mx, my, r = means2d[img, g, 0].detach(), means2d[img, g, 1].detach(), radii[img, g].to(f32)
            lo = lambda v, hi: int(torch.floor(v / 16).clamp(0, hi))  # noqa: E731
            up = lambda v, hi: int(torch.ceil(v / 16).clamp(0, hi))  # noqa: E731
            rects[g] = (lo(mx - r, tiles_x), up(mx + r, tiles_x), lo(my - r, tiles_y), up(my + r, tiles_y))
        pixels_out, pixels_alpha = [], []
        for j in range(height):
            for i in range(width):
                tx, ty = i // 16, j // 16
                px, py = torch.tensor(i + 0.5, dtype=f32), torch.tensor(j + 0.5, dtype=f32)
                T = torch.tensor(1.0, dtype=f32)
                acc = torch.zeros(d_feats, dtype=f32)
                for g in order:
                    rect = rects.get(g)
                    if rect is None or not (rect[0] <= tx < rect[1] and rect[2] <= ty < rect[3]):
                        continue
                    dx, dy = means2d[img, g, 0] - px, means2d[img, g, 1] - py
                    a, b, c = conics[img, g]
                    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                    if sigma < 0:
                        continue
                    alpha = torch.clamp(opacities[img, g] * torch.exp(-sigma), max=0.99)
                    if alpha < 1.0 / 255.0:
                        continue
                    t_next = T * (1 - alpha)
                    if t_next < 1e-4:
                        break
                    acc = acc + feats[img, g] * alpha * T
                    T = t_next
                pixels_out.append(acc)
                pixels_alpha.append(1 - T)
        outs.append(torch.stack(pixels_out).reshape(height, width, d_feats))
        alphas.append(torch.stack(pixels_alpha).reshape(height, width, 1))
    return torch.stack(outs), torch.stack(alphas)


# ----------------------------------------------------------------------------------------------- scenes
def random_scene(num_images, n, width, height, d_feats=4, scale=(0.3, 12.0), opacity=(0.05, 1.0), margin=10.0,
                 cull_fraction=0.1, seed=0):
    """Random 2D Gaussians in projected form: conics from rotated, dilated covariances, contract radii."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    means2d = torch.stack([u(num_images, n) * (width + 2 * margin) - margin,
                           u(num_images, n) * (height + 2 * margin) - margin], dim=-1)
    s = torch.exp(math.log(scale[0]) + u(num_images, n, 2) * (math.log(scale[1]) - math.log(scale[0])))
    theta = u(num_images, n) * math.pi
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    cov = rot @ torch.diag_embed(s ** 2) @ rot.transpose(-1, -2) + 0.3 * torch.eye(2)
    a, b, c = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]
    det = a * c - b * b
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.01))
    radii = torch.ceil(3 * torch.sqrt(lam)).to(torch.int32)
    radii[u(num_images, n) < cull_fraction] = 0
    opacities = opacity[0] + u(num_images, n) * (opacity[1] - opacity[0])
    depths = torch.round(u(num_images, n) * 20) / 4 + 1  # coarse: many depth ties
    feats = u(num_images, n, d_feats) * 2 - 0.5
    return [t.float().contiguous() if t.is_floating_point() else t.contiguous()
            for t in (means2d, conics, feats, opacities, depths)] + [radii.contiguous()]


def run_with_grads(fn, scene, width, height, seed=1):
    means2d, conics, feats, opacities, depths, radii = [t.clone() for t in scene]
    leaves = [means2d, conics, feats, opacities]
    for t in leaves:
        t.requires_grad_(True)
    out, alpha = fn(means2d, conics, feats, opacities, depths, radii, width, height)
    g = torch.Generator().manual_seed(seed)
    w_out, w_alpha = torch.randn(out.shape, generator=g), torch.randn(alpha.shape, generator=g)
    ((out * w_out).sum() + (alpha * w_alpha).sum()).backward()
    return out.detach(), alpha.detach(), [t.grad for t in leaves]


def assert_grads_close(grads, expected, rtol=1e-3):
    for name, got, want in zip(("means2d", "conics", "feats", "opacities"), grads, expected):
        scale = want.abs().max().item()
        err = (got - want).abs()
        # Relative error where the gradient is not tiny; tiny ones only need to be tiny.
        tol = rtol * want.abs() + 1e-5 * max(scale, 1e-3)
        bad = err > tol
        assert not bad.any(), (f"{name}: {int(bad.sum())} of {bad.numel()} entries off, worst abs err "
                               f"{err.max().item():.3g} (max |grad| {scale:.3g})")


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", ["mixed", "huge", "tiny", "tile_edges", "opaque"])
def test_matches_per_pixel_loop(case, cpu_backend):
    width, height = 21, 18  # not multiples of 16: partial tiles
    kwargs = dict(mixed={}, huge=dict(scale=(15.0, 60.0)), tiny=dict(scale=(0.05, 0.6)),
                  tile_edges=dict(scale=(0.5, 3.0)), opaque=dict(opacity=(0.9, 1.0), scale=(3.0, 10.0)))[case]
    n = 6 if case in ("huge", "opaque") else 9  # every Gaussian covers every pixel there: keep the loop short
    scene = random_scene(2, n, width, height, seed=3, **kwargs)
    if case == "tile_edges":  # centres on and just off tile borders
        scene[0][..., 0] = torch.tensor([16.0, 15.999, 16.001, 0.0, 32.0, 8.0, 16.0, 21.0, -0.5])
        scene[0][..., 1] = torch.tensor([16.0, 16.0, 15.999, 16.001, 0.0, 18.0, 9.0, 17.5, 16.0])
    want_out, want_alpha, want_grads = run_with_grads(loop_rasterize, scene, width, height)
    got_out, got_alpha, got_grads = run_with_grads(cpu.rasterize, scene, width, height)
    assert (got_out - want_out).abs().max() <= 1e-4
    assert (got_alpha - want_alpha).abs().max() <= 1e-4
    assert_grads_close(got_grads, want_grads)


@pytest.mark.parametrize("d_feats,size", [(4, (53, 40)), (3, (32, 32)), (1, (17, 33)), (6, (40, 23))])
def test_matches_reference(d_feats, size, cpu_backend):
    reference = pytest.importorskip("splatting.backends.reference")
    width, height = size
    scene = random_scene(3, 150, width, height, d_feats=d_feats, seed=d_feats)
    want_out, want_alpha, want_grads = run_with_grads(reference.rasterize, scene, width, height)
    got_out, got_alpha, got_grads = run_with_grads(cpu.rasterize, scene, width, height)
    assert want_alpha.max() > 0.9  # the scene really composites many layers, incl. early stops
    assert (got_out - want_out).abs().max() <= 1e-4
    assert (got_alpha - want_alpha).abs().max() <= 1e-4
    assert_grads_close(got_grads, want_grads)


def test_early_stop_and_clamp_against_reference(cpu_backend):
    reference = pytest.importorskip("splatting.backends.reference")
    scene = random_scene(2, 120, 40, 40, opacity=(0.95, 1.0), scale=(4.0, 15.0), cull_fraction=0.0, seed=7)
    scene[3][:, :10] = 1.0  # alpha clamped at 0.99 at the centre: no gradient through the clamp there
    want = run_with_grads(reference.rasterize, scene, 40, 40)
    got = run_with_grads(cpu.rasterize, scene, 40, 40)
    assert (got[1] - want[1]).abs().max() <= 1e-4 and (got[0] - want[0]).abs().max() <= 1e-4
    assert_grads_close(got[2], want[2])


def test_empty_inputs(cpu_backend):
    for n, cull in ((0, 0.0), (7, 1.0)):
        scene = random_scene(2, n, 19, 35, cull_fraction=cull)
        out, alpha, grads = run_with_grads(cpu.rasterize, scene, 19, 35)
        assert out.shape == (2, 35, 19, 4) and alpha.shape == (2, 35, 19, 1)
        assert out.abs().max() == 0
        assert alpha.abs().max() == 0
        assert all(g.abs().sum() == 0 and g.shape == t.shape for g, t in zip(grads, scene[:4]))
    # Gaussians entirely off-screen (radius > 0) and a 1x1 image.
    scene = random_scene(1, 5, 1, 1, seed=2)
    scene[0] += 100.0
    out, alpha, _ = run_with_grads(cpu.rasterize, scene, 1, 1)
    assert out.shape == (1, 1, 1, 4) and alpha.item() == 0


def test_deterministic_and_thread_independent(cpu_backend):
    scene = random_scene(2, 200, 48, 40, seed=11)
    threads = torch.get_num_threads()
    try:
        first = run_with_grads(cpu.rasterize, scene, 48, 40)
        torch.set_num_threads(1)
        single = run_with_grads(cpu.rasterize, scene, 48, 40)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip([first[0], first[1], *first[2]], [single[0], single[1], *single[2]]):
        assert torch.equal(a, b)


def test_only_output_or_alpha_gradient(cpu_backend):
    scene = random_scene(1, 30, 20, 20, seed=5)
    means2d = scene[0].clone().requires_grad_(True)
    out, alpha = cpu.rasterize(means2d, *scene[1:], 20, 20)
    alpha.sum().backward()  # grad_out is None for `out`
    assert means2d.grad.abs().sum() > 0


def test_validation_errors(cpu_backend):
    scene = random_scene(1, 4, 16, 16)
    with pytest.raises(ValueError, match="radii must be int32"):
        cpu.rasterize(*scene[:5], scene[5].long(), 16, 16)
    with pytest.raises(ValueError, match="conics must have shape"):
        cpu.rasterize(scene[0], scene[1][..., :2], *scene[2:], 16, 16)
    with pytest.raises(ValueError, match="feats must be float32"):
        cpu.rasterize(scene[0], scene[1], scene[2].double(), *scene[3:], 16, 16)
    with pytest.raises(ValueError, match="width must be a positive int"):
        cpu.rasterize(*scene, 0, 16)
    # Non-contiguous inputs are accepted (copied).
    feats = torch.cat([scene[2], scene[2]], dim=-1)[..., :4]
    assert not feats.is_contiguous()
    out, _ = cpu.rasterize(scene[0], scene[1], feats, *scene[3:], 16, 16)
    assert torch.allclose(out, cpu.rasterize(*scene, 16, 16)[0])


# ----------------------------------------------------------------------------------------------- build
def test_second_process_reuses_build_and_clears_stale_lock(cpu_backend):
    build_dir = os.path.join(cpu._cache_root(), f"{cpu._NAME}-{cpu._build_key()}")
    assert os.path.isdir(build_dir)
    open(os.path.join(build_dir, "lock"), "w").close()  # as left behind by a killed build
    code = ("from splatting.backends import cpu; import torch; "
            "s = [torch.zeros(1, 0, k) for k in (2, 3, 4)]; "
            "out, a = cpu.rasterize(s[0], s[1], s[2], torch.zeros(1, 0), torch.zeros(1, 0), "
            "torch.zeros(1, 0, dtype=torch.int32), 5, 5); print('ok', tuple(out.shape))")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ok (1, 5, 5, 4)" in proc.stdout
    assert "building" not in proc.stderr  # reused, not rebuilt
    assert not os.path.exists(os.path.join(build_dir, "lock"))


def _fresh_state(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "_module", None)
    monkeypatch.setattr(cpu, "_error", None)
    monkeypatch.setattr(cpu, "_cache_root", lambda: str(tmp_path / "torch_extensions"))


def test_missing_compiler_is_reported(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setattr(cpu.shutil, "which", lambda name: None)
    assert cpu.availability() == "no C++ compiler found (install g++)"
    with pytest.raises(cpu.CpuBackendUnavailable, match="no C.. compiler"):
        cpu.rasterize(*random_scene(1, 2, 8, 8), 8, 8)


def test_build_error_keeps_compiler_log(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    bad = tmp_path / "broken.cpp"
    bad.write_text("int gsgan_broken( { return 0; }\n")
    monkeypatch.setattr(cpu, "_SOURCES", [str(bad)])
    reason = cpu.availability()
    assert reason is not None and "error" in reason.lower()
    with pytest.raises(cpu.CpuBackendUnavailable) as info:
        cpu.load()
    assert "broken.cpp" in str(info.value) and "error" in str(info.value)


def test_double_backward_is_refused_clearly(cpu_backend):
    scene = random_scene(1, 20, 16, 16, seed=4)
    means2d = scene[0].clone().requires_grad_(True)
    out, alpha = cpu.rasterize(means2d, *scene[1:], 16, 16)
    (grad,) = torch.autograd.grad((out.square().sum() + alpha.sum()), means2d, create_graph=True)
    assert grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.square().sum().backward()


def test_build_key_follows_the_source(monkeypatch, tmp_path):
    source = tmp_path / "rasterize_cpu.cpp"
    with open(cpu._SOURCES[0]) as f:
        original = f.read()
    source.write_text(original)
    monkeypatch.setattr(cpu, "_SOURCES", [str(source)])
    key = cpu._build_key()
    assert cpu._build_key() == key  # stable: a finished build is found again
    source.write_text(original + "// an edit\n")
    assert cpu._build_key() != key  # any change to the C++ source means one new build


def test_openmp_probe_is_run_once_and_recorded(monkeypatch, tmp_path, cpu_backend):
    assert cpu_backend.load().openmp()  # this machine's compiler takes -fopenmp: the build is multi-threaded
    assert cpu._openmp_flags(str(tmp_path)) == ["-fopenmp"]
    assert (tmp_path / cpu._OPENMP_RECORD).read_text() == "-fopenmp"
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert cpu._openmp_flags(str(tmp_path)) == ["-fopenmp"]  # answered from the record, not re-probed


def test_compiler_without_openmp_gives_single_threaded_flags(monkeypatch, tmp_path):
    fake = tmp_path / "c++"  # a compiler that rejects -fopenmp, as Apple clang does
    fake.write_text("#!/bin/sh\necho \"clang: error: unsupported option '-fopenmp'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert cpu._openmp_flags(str(tmp_path)) == []
    assert (tmp_path / cpu._OPENMP_RECORD).read_text() == ""
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert cpu._openmp_flags(str(other)) == []  # a compiler that cannot even run counts as one without OpenMP


@pytest.mark.parametrize("ci", ["true", ""])
def test_unavailable_backend_fails_on_ci_and_skips_elsewhere(monkeypatch, ci):
    monkeypatch.setattr(cpu, "availability", lambda: "no C++ compiler found (install g++)")
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(expected, match="no C.. compiler found"):
        require_cpu_backend()
