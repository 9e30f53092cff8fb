"""The reference rasterizer against a literal per-pixel loop, plus gradient checks through the whole render."""
import math

import pytest
import torch

from splatting import Gaussians, render
from splatting.backends import reference

from ._scenes import mixed_scene, orbit_cameras


def _oracle(means2d, conics, feats, opacities, depths, radii, width, height):
    """docs/interfaces.md "Rasterization contract", transcribed line by line (slow; tiny inputs only)."""
    num_images, n = opacities.shape
    out = torch.zeros(num_images, height, width, feats.shape[-1], dtype=torch.float64)
    alpha_out = torch.zeros(num_images, height, width, 1, dtype=torch.float64)
    tiles_x, tiles_y = math.ceil(width / 16), math.ceil(height / 16)
    for img in range(num_images):
        order = sorted(range(n), key=lambda g: (depths[img, g].item(), g))
        rects = {}
        for g in order:
            r = int(radii[img, g])
            if r > 0:
                mx, my = means2d[img, g].float().tolist()  # float32 arithmetic, as specified
                rects[g] = (min(max(math.floor(torch.tensor((mx - r) / 16, dtype=torch.float32)), 0), tiles_x),
                            min(max(math.ceil(torch.tensor((mx + r) / 16, dtype=torch.float32)), 0), tiles_x),
                            min(max(math.floor(torch.tensor((my - r) / 16, dtype=torch.float32)), 0), tiles_y),
                            min(max(math.ceil(torch.tensor((my + r) / 16, dtype=torch.float32)), 0), tiles_y))
        for j in range(height):
            for i in range(width):
                tile_x, tile_y = i // 16, j // 16
                px, py = i + 0.5, j + 0.5
                t = 1.0
                for g in order:
                    if g not in rects:
                        continue
                    x0, x1, y0, y1 = rects[g]
                    if not (x0 <= tile_x < x1 and y0 <= tile_y < y1):
                        continue
                    a, b, c = conics[img, g].tolist()
                    dx, dy = means2d[img, g, 0].item() - px, means2d[img, g, 1].item() - py
                    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                    if sigma < 0:
                        continue
                    alpha = min(0.99, opacities[img, g].item() * math.exp(-sigma))
                    if alpha < 1 / 255:
                        continue
                    t_next = t * (1 - alpha)
                    if t_next < 1e-4:
                        break
                    out[img, j, i] += feats[img, g].double() * alpha * t
                    t = t_next
                alpha_out[img, j, i, 0] = 1 - t
    return out, alpha_out


def _crafted_scene(dtype=torch.float64):
    """2 images, 40x20 pixels (3x2 tiles), Gaussians that exercise every rule of the contract."""
    means2d = torch.tensor([[
        [10.0, 10.0],   # 0: wide, opaque: clamped at 0.99 in the middle
        [10.5, 9.0],    # 1: behind 0 (larger depth) -> early stop where 0 and 2 saturate
        [9.0, 11.0],    # 2: in front of 0, opaque
        [30.0, 5.0],    # 3: radius deliberately too small: tile membership cuts it off at the tile edge
        [24.0, 12.0],   # 4: indefinite conic -> sigma < 0 is skipped
        [35.0, 15.0],   # 5: faint: alpha < 1/255 everywhere
        [20.0, 10.0],   # 6: culled (radius 0) although it would be visible
        [17.0, 3.0],    # 7: depth tie with 8 -> index order
        [17.0, 3.0],    # 8
    ]], dtype=dtype).repeat(2, 1, 1)
    means2d[1] += torch.tensor([1.3, -0.7], dtype=dtype)  # the second image shifted
    conics = torch.tensor([[
        [0.02, 0.0, 0.02], [0.05, 0.01, 0.04], [0.03, -0.01, 0.03], [0.01, 0.0, 0.01], [0.05, 0.2, 0.05],
        [0.1, 0.0, 0.1], [0.1, 0.0, 0.1], [0.2, 0.05, 0.1], [0.1, 0.0, 0.2],
    ]], dtype=dtype).repeat(2, 1, 1)
    opacities = torch.tensor([[0.999, 0.9, 0.995, 0.8, 0.7, 0.003, 0.9, 0.6, 0.5]], dtype=dtype).repeat(2, 1)
    depths = torch.tensor([[2.0, 3.0, 1.0, 2.5, 2.2, 1.5, 1.0, 4.0, 4.0]], dtype=dtype).repeat(2, 1)
    radii = torch.tensor([[30, 25, 30, 3, 12, 8, 0, 9, 9]], dtype=torch.int32).repeat(2, 1)
    feats = torch.linspace(0.1, 2.0, 2 * 9 * 4, dtype=dtype).reshape(2, 9, 4)
    return means2d, conics, feats, opacities, depths, radii, 40, 20


def test_reference_matches_pixel_loop_on_crafted_scene():
    args = _crafted_scene()
    out, alpha = reference.rasterize(*args)
    expect_out, expect_alpha = _oracle(*args)
    torch.testing.assert_close(out, expect_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(alpha, expect_alpha, rtol=1e-10, atol=1e-12)
    # The rules actually fired: saturation under the opaque pair, a hard tile edge for Gaussian 3.
    assert alpha.max() > 0.999
    means2d, conics, feats, opacities, depths, radii, w, h = args
    wider = radii.clone()
    wider[:, 3] = 12
    out_wide, _ = reference.rasterize(means2d, conics, feats, opacities, depths, wider, w, h)
    assert (out_wide - out).abs().max() > 1e-3, "the radius (tile membership) must change the image"


def test_reference_matches_pixel_loop_on_projected_scene():
    gaussians = mixed_scene(1, 8, seed=7)
    cameras = orbit_cameras(1, 2, width=36, height=20, generator=torch.Generator().manual_seed(8))
    from splatting.projection import project

    p = project(gaussians, cameras)
    feats = torch.cat([p.colors, p.depths[..., None]], dim=-1)
    args = (p.means2d, p.conics, feats, p.opacities, p.depths, p.radii, cameras.width, cameras.height)
    out, alpha = reference.rasterize(*args)
    expect_out, expect_alpha = _oracle(*args)
    torch.testing.assert_close(out, expect_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(alpha, expect_alpha, rtol=1e-10, atol=1e-12)


def test_chunking_does_not_change_results(monkeypatch):
    args = _crafted_scene()
    whole = reference.rasterize(*args)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 200)  # 11 pixels a chunk: many chunks, a partial last one
    tensors = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
               for a in args]
    chunked = reference.rasterize(*tensors)
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=1e-14)
    torch.testing.assert_close(chunked[1], whole[1], rtol=0, atol=1e-14)
    (chunked[0].sum() + chunked[1].sum()).backward()  # checkpointed chunks backpropagate
    assert torch.isfinite(tensors[0].grad).all() and tensors[0].grad.abs().sum() > 0


def test_empty_and_all_culled():
    for n in (0, 3):
        means2d = torch.zeros(2, n, 2)
        out, alpha = reference.rasterize(means2d, torch.ones(2, n, 3), torch.ones(2, n, 4), torch.ones(2, n),
                                         torch.ones(2, n), torch.zeros(2, n, dtype=torch.int32), 17, 9)
        assert out.shape == (2, 9, 17, 4) and alpha.shape == (2, 9, 17, 1)
        assert out.abs().max() == 0 and alpha.abs().max() == 0


def _project_outputs(weights, *outputs):
    """A few random linear functionals of channel-last outputs (cheap to gradcheck, still covers every pixel)."""
    return (weights * torch.cat(outputs, dim=-1)).flatten(1).sum(-1)


@pytest.mark.gradcheck
def test_rasterize_gradcheck():
    torch.manual_seed(3)
    num_images, n, w, h = 2, 4, 20, 18
    means2d = (torch.rand(num_images, n, 2, dtype=torch.float64) * torch.tensor([w, h]) * 0.6 + 4).requires_grad_()
    conics = (torch.tensor([0.08, 0.01, 0.06], dtype=torch.float64) * (1 + torch.rand(num_images, n, 3) * 0.3))
    conics = conics.requires_grad_()
    feats = torch.rand(num_images, n, 4, dtype=torch.float64, requires_grad=True)
    opacities = (0.3 + 0.4 * torch.rand(num_images, n, dtype=torch.float64)).requires_grad_()
    depths = torch.rand(num_images, n, dtype=torch.float64)
    radii = torch.full((num_images, n), 40, dtype=torch.int32)  # every tile: no membership discontinuity

    weights = torch.rand(3, num_images, h, w, 5, dtype=torch.float64)

    def fn(m, c, f, o):  # three random linear functionals of every output: 3 backward passes, not 3600
        out, alpha = reference.rasterize(m, c, f, o, depths, radii, w, h)
        return _project_outputs(weights, out, alpha)

    assert torch.autograd.gradcheck(fn, (means2d, conics, feats, opacities), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.gradcheck
def test_render_gradcheck_through_projection():
    # The exact duplicate (last Gaussian) is dropped: at a depth tie the image is not differentiable.
    gaussians = mixed_scene(1, 3, sh_degree=1, seed=11).select(slice(0, -1))
    gaussians.log_scales[0, 5] = -3.0  # keep 'huge' but not screen-filling so thresholds stay far
    cameras = orbit_cameras(1, 2, width=20, height=16, focal=0.9, generator=torch.Generator().manual_seed(12))
    names = ("means", "log_scales", "quats", "opacity_logits", "sh")
    inputs = [getattr(gaussians, name).clone().requires_grad_() for name in names]
    background = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)
    weights = torch.rand(3, 1, 2, 16, 20, 5, dtype=torch.float64)

    def fn(*tensors):
        out = render(Gaussians(*tensors), cameras, background=background, backend="reference")
        return _project_outputs(weights, *(x.movedim(2, -1) for x in (out.color, out.depth, out.alpha)))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_reference_scales_to_training_size():
    """64x64, batch 8, 2000 Gaussians: forward + backward with bounded memory (checkpointed pixel chunks)."""
    gaussians = mixed_scene(8, 2000, dtype=torch.float32, seed=13).map(lambda t: t.requires_grad_())
    cameras = orbit_cameras(8, 1, width=64, height=64, dtype=torch.float32)
    out = render(gaussians, cameras, backend="reference")
    (out.color.mean() + out.depth.mean()).backward()
    assert torch.isfinite(gaussians.means.grad).all() and gaussians.means.grad.abs().sum() > 0
