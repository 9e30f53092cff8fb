"""Which coarse Gaussians to densify: the ones with the largest view-space positional gradient.

The coarse Gaussians of a scene are rendered into its own context views (black background) and compared with the
context images: loss = sum over views of the per-view mean squared error. The gradient of that loss with respect
to each Gaussian's screen-space mean is taken in every render and the V 2-D gradient vectors are summed (the
official code passes one shared screen-space tensor to all V renders, so its gradient is this vector sum); the
score is the norm of the sum. A Gaussian that sits where the images disagree with the coarse render, and whose
move would reduce the error, scores high.

Units: the official rasterizer differentiates with respect to NDC coordinates (x_ndc = 2 u / W - 1), so its
gradient is ours (pixels) times (W / 2, H / 2). Our pixel gradients are converted to NDC units before the norm,
so on non-square images the ranking is exactly the official one.

Selection is per context view: among the H*W Gaussians that came from view v (indices v*H*W .. (v+1)*H*W - 1,
the encoder's layout) the k_num highest scores are kept (ties to the lower index). The gradient is computed on
detached copies under torch.enable_grad(), so selection works under torch.no_grad() and never touches a model's
parameter gradients.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from splatting import Gaussians, render

from ..views import to_cameras
from .segment import DensifyError


@dataclass
class CoarseRender:
    """The coarse Gaussians rendered into the context views (detached): color [B, V, 3, H, W], alpha and
    depth [B, V, 1, H, W] (expected view-space depth, 0 where alpha == 0)."""

    color: Tensor
    alpha: Tensor
    depth: Tensor


@dataclass
class Selection:
    """index [B, V, K] int64: the selected Gaussians of each context view (ascending, into the V*H*W Gaussians
    of the scene); score [B, V*H*W]: every Gaussian's gradient norm (NDC units); coarse_render: see CoarseRender."""

    index: Tensor
    score: Tensor
    coarse_render: CoarseRender


def check_k_num(k_num, height: int, width: int) -> int:
    """k_num as an int in 1 .. H*W, else DensifyError."""
    if isinstance(k_num, bool) or not isinstance(k_num, numbers.Integral) or k_num < 1:
        raise DensifyError(f"k_num: expected a positive int (Gaussians to densify per context view), got {k_num!r}")
    if k_num > height * width:
        raise DensifyError(f"k_num={int(k_num)} exceeds the H*W={height * width} Gaussians of a context view "
                           f"({height}x{width})")
    return int(k_num)


def _check_inputs(gaussians: Gaussians, context: dict) -> tuple[int, int, int, int]:
    if not isinstance(gaussians, Gaussians):
        raise DensifyError(f"gaussians: expected a splatting.Gaussians, got {type(gaussians).__name__}")
    if not isinstance(context, dict) or not isinstance(context.get("image"), Tensor) \
            or context["image"].ndim != 5 or context["image"].shape[2] != 3:
        raise DensifyError("context.image: expected a tensor of shape [B, V, 3, H, W]")
    b, v, _, h, w = context["image"].shape
    for key, shape in (("intrinsics", (b, v, 3, 3)), ("extrinsics", (b, v, 4, 4))):
        value = context.get(key)
        if not isinstance(value, Tensor) or tuple(value.shape) != shape:
            got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise DensifyError(f"context.{key}: expected shape {list(shape)}, got {got}")
    if gaussians.batch_size != b or gaussians.num_gaussians != v * h * w:
        raise DensifyError(f"gaussians: expected [B, V*H*W] = [{b}, {v * h * w}] (one per context pixel), got "
                           f"[{gaussians.batch_size}, {gaussians.num_gaussians}]")
    return b, v, h, w


def positional_gradient_scores(gaussians: Gaussians, context: dict, backend: str = "auto"
                               ) -> tuple[Tensor, CoarseRender]:
    """(score [B, N], coarse render) of Gaussians [B, N] against the context views (any N here).

    score = || sum_v dL/d(means2d_v) * (W/2, H/2) ||, L = sum_v mean((render_v - image_v)^2)."""
    images = context["image"]
    height, width = images.shape[-2:]
    cameras = to_cameras(context)
    with torch.enable_grad():
        detached = gaussians.map(lambda t: t.detach())
        detached.means.requires_grad_(True)  # so the screen-space means are part of a graph
        out = render(detached, cameras, background=None, backend=backend, return_means2d=True)
        loss = (out.color - images.to(out.color.dtype)).square().mean(dim=(2, 3, 4)).sum()
        (grad_pixels,) = torch.autograd.grad(loss, out.means2d)                 # [B, V, N, 2]
    to_ndc = grad_pixels.new_tensor([width / 2.0, height / 2.0])
    score = (grad_pixels * to_ndc).sum(dim=1).norm(dim=-1)
    coarse = CoarseRender(color=out.color.detach(), alpha=out.alpha.detach(), depth=out.depth.detach())
    return score, coarse


def select_gaussians(gaussians: Gaussians, context: dict, k_num: int, backend: str = "auto") -> Selection:
    """The k_num highest-scoring Gaussians of each context view (see the module docstring).

    gaussians: [B, V*H*W] in the encoder's layout (index v*H*W + y*W + x); context: batched views with image
    [B, V, 3, H, W], intrinsics, extrinsics; backend: the rasterizer (splatting.render)."""
    b, v, h, w = _check_inputs(gaussians, context)
    k = check_k_num(k_num, h, w)
    score, coarse = positional_gradient_scores(gaussians, context, backend)
    per_view = score.detach().reshape(b, v, h * w)
    ranked = torch.sort(per_view, dim=-1, descending=True, stable=True).indices[..., :k]
    index = torch.sort(ranked, dim=-1).values + (torch.arange(v, device=score.device) * (h * w))[None, :, None]
    return Selection(index=index, score=score.detach(), coarse_render=coarse)
