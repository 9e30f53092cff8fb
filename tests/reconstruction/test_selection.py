"""Gradient-based selection: a scene whose answer is known, the NDC-unit rule on non-square images, the
multi-view vector sum, no side effects on parameter gradients, and bad inputs."""
import math

import pytest
import torch

from reconstruction.densify.segment import DensifyError
from reconstruction.densify.selection import select_gaussians
from reconstruction.views import to_cameras
from splatting import Gaussians, render
from splatting.gaussians import SH_C0

DEPTH = 2.0
FOCAL = 16.0  # pixels, both axes, so Gaussians that are round in the world are round on screen


def _views(v, h, w, origins):
    """Context views looking down +z from `origins` [V, 3] (identity rotations), pixel focal FOCAL."""
    c2w = torch.eye(4).repeat(v, 1, 1)
    c2w[:, :3, 3] = torch.tensor(origins, dtype=torch.float32)
    k = torch.tensor([[FOCAL / w, 0, 0.5], [0, FOCAL / h, 0.5], [0, 0, 1]])
    return dict(image=torch.zeros(1, v, 3, h, w), intrinsics=k.expand(1, v, 3, 3).clone(),
                extrinsics=c2w[None], near=torch.ones(1, v), far=torch.full((1, v), 10.0))


def _pixel_gaussians(context, opaque_every=4, seed=0):
    """One Gaussian per context pixel at depth DEPTH on its pixel centre (encoder layout); only the pixels of a
    sparse grid (every `opaque_every`-th row and column) are opaque, the others nearly transparent."""
    _, v, _, h, w = context["image"].shape
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    cam = torch.stack([(xs - w / 2) / FOCAL * DEPTH, (ys - h / 2) / FOCAL * DEPTH, torch.full_like(xs, DEPTH)], -1)
    means = (cam.reshape(1, -1, 3) + context["extrinsics"][0, :, None, :3, 3]).reshape(1, v * h * w, 3)
    sparse = ((torch.arange(h)[:, None] % opaque_every == 1) & (torch.arange(w)[None] % opaque_every == 1))
    opaque = sparse.flatten().repeat(v)
    colors = 0.2 + 0.7 * torch.rand(1, v * h * w, 3, generator=gen)
    return Gaussians(means=means, log_scales=torch.full((1, v * h * w, 3), math.log(0.3 * DEPTH / FOCAL)),
                     quats=torch.tensor([1.0, 0, 0, 0]).expand(1, v * h * w, 4).clone(),
                     opacity_logits=torch.where(opaque, 4.0, -12.0)[None],
                     sh=((colors - 0.5) / SH_C0)[:, :, None, :]), opaque


def _pixel_index(view, y, x, h, w):
    return view * h * w + y * w + x


def _shift(gaussians, index, dx_pixels=0.0, dy_pixels=0.0):
    means = gaussians.means.clone()
    means[0, index, 0] += dx_pixels * DEPTH / FOCAL
    means[0, index, 1] += dy_pixels * DEPTH / FOCAL
    return Gaussians(means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits, gaussians.sh)


def _context_images_from(gaussians, context):
    with torch.no_grad():
        context["image"] = render(gaussians, to_cameras(context)).color.clamp(0, 1)
    return context


def test_misplaced_gaussians_are_selected_and_well_placed_ones_score_zero():
    h = w = 32
    context = _views(2, h, w, [[0.0, 0, 0], [100.0, 0, 0]])  # each view sees only its own Gaussians
    truth, opaque = _pixel_gaussians(context)
    context = _context_images_from(truth, context)
    moved = [_pixel_index(0, 1, 5, h, w), _pixel_index(0, 17, 25, h, w), _pixel_index(0, 29, 9, h, w),
             _pixel_index(1, 5, 5, h, w), _pixel_index(1, 1, 29, h, w), _pixel_index(1, 25, 17, h, w)]
    coarse = truth
    for i, index in enumerate(moved):
        coarse = _shift(coarse, index, dx_pixels=0.5 if i % 2 else -0.4, dy_pixels=0.3 if i % 3 else 0.45)
    selection = select_gaussians(coarse, context, k_num=3)
    assert selection.index.shape == (1, 2, 3) and selection.index.dtype == torch.int64
    assert selection.index[0, 0].tolist() == sorted(moved[:3])
    assert selection.index[0, 1].tolist() == sorted(moved[3:])
    # Opaque Gaussians whose footprints never meet a moved one's see no residual at all.
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], -1).repeat(2, 1)
    view = torch.arange(2).repeat_interleave(h * w)
    far = torch.ones(2 * h * w, dtype=torch.bool)
    for index in moved:
        near = (view == view[index]) & ((pos - pos[index]).abs().max(-1).values <= 4)
        far &= ~near
    assert int((far & opaque).sum()) >= 80
    assert float(selection.score[0, far & opaque].max()) < 1e-6 * float(selection.score[0, moved].min())
    # The coarse render that comes with the selection is the render of the coarse Gaussians.
    expected = render(coarse, to_cameras(context))
    torch.testing.assert_close(selection.coarse_render.color, expected.color)
    torch.testing.assert_close(selection.coarse_render.alpha, expected.alpha)
    assert not selection.coarse_render.color.requires_grad


def test_scores_are_in_ndc_units_on_a_non_square_image():
    h, w = 12, 24  # NDC scales x gradients by W/2 = 12, y gradients by H/2 = 6
    context = _views(1, h, w, [[0.0, 0, 0]])
    truth, _ = _pixel_gaussians(context, seed=1)
    context = _context_images_from(truth, context)
    along_x, along_y = _pixel_index(0, 5, 5, h, w), _pixel_index(0, 5, 17, h, w)
    coarse = _shift(_shift(truth, along_x, dx_pixels=0.2), along_y, dy_pixels=0.3)
    selection = select_gaussians(coarse, context, k_num=1)
    # In pixels the y-shifted Gaussian has the larger gradient; in NDC units the x-shifted one wins.
    g = coarse.map(lambda t: t.clone())
    g.means.requires_grad_(True)
    out = render(g, to_cameras(context), return_means2d=True)
    (out.color - context["image"]).square().mean(dim=(2, 3, 4)).sum().backward()
    pixel_norm = out.means2d.grad[0, 0].norm(dim=-1)
    assert float(pixel_norm[along_y]) > float(pixel_norm[along_x])
    assert selection.index[0, 0].tolist() == [along_x]
    expected = (out.means2d.grad * torch.tensor([w / 2, h / 2])).sum(1).norm(dim=-1)
    torch.testing.assert_close(selection.score, expected)


def test_score_is_the_norm_of_the_summed_view_gradients_and_leaves_parameter_grads_alone():
    h = w = 16
    context = _views(2, h, w, [[0.0, 0, 0], [0.15, 0.05, 0]])  # both views see every Gaussian
    truth, _ = _pixel_gaussians(context, opaque_every=3, seed=2)
    context = _context_images_from(truth, context)
    coarse = _shift(truth, torch.arange(0, 2 * h * w, 7), dx_pixels=0.3, dy_pixels=-0.2)
    means = coarse.means.clone().requires_grad_(True)  # a "model output" that must not receive gradients
    coarse = Gaussians(means, coarse.log_scales, coarse.quats, coarse.opacity_logits, coarse.sh)
    with torch.no_grad():
        selection = select_gaussians(coarse, context, k_num=40)
    assert means.grad is None
    g = coarse.map(lambda t: t.detach().clone())
    g.means.requires_grad_(True)
    out = render(g, to_cameras(context), return_means2d=True)
    (out.color - context["image"]).square().mean(dim=(2, 3, 4)).sum().backward()
    per_view = out.means2d.grad * torch.tensor([w / 2, h / 2])
    expected = per_view.sum(1).norm(dim=-1)
    torch.testing.assert_close(selection.score, expected)
    # The sum of vectors, not of norms: the two differ here.
    assert float((per_view.norm(dim=-1).sum(1) - expected).abs().max()) > 1e-3 * float(expected.max())
    for view in range(2):
        chosen = selection.index[0, view]
        assert bool(((chosen >= view * h * w) & (chosen < (view + 1) * h * w)).all())
        in_view = expected[0, view * h * w:(view + 1) * h * w]
        assert float(in_view[chosen - view * h * w].min()) >= float(in_view.sort(descending=True).values[39])


def test_bad_inputs_raise_one_line_errors():
    h = w = 8
    context = _views(2, h, w, [[0.0, 0, 0], [100.0, 0, 0]])
    coarse, _ = _pixel_gaussians(context)
    with pytest.raises(DensifyError, match=r"k_num=65 exceeds the H\*W=64 Gaussians of a context view"):
        select_gaussians(coarse, context, k_num=65)
    for bad in (0, -3, True, 2.5):
        with pytest.raises(DensifyError, match="k_num: expected a positive int"):
            select_gaussians(coarse, context, k_num=bad)
    with pytest.raises(DensifyError, match=r"gaussians: expected \[B, V\*H\*W\] = \[1, 128\]"):
        select_gaussians(coarse.select(slice(0, 100)), context, k_num=4)
    broken = dict(context)
    del broken["intrinsics"]
    with pytest.raises(DensifyError, match="context.intrinsics: expected shape"):
        select_gaussians(coarse, broken, k_num=4)
    with pytest.raises(DensifyError, match="context.image"):
        select_gaussians(coarse, {"image": torch.zeros(2, 3, 8, 8)}, k_num=4)
