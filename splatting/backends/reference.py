"""Reference rasterizer: the compositing rules of docs/interfaces.md written as dense PyTorch tensor ops.

This is the oracle the compiled backends are tested against, so it favours obviously-right over fast:
every (image, pixel, Gaussian) triple is evaluated densely, the rules are applied as masks, and autograd
provides the backward pass. Pixels are processed in chunks under torch.utils.checkpoint so memory stays
bounded in the backward pass too. Good for small images and a few thousand Gaussians; runs on any device.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

TILE_SIZE = 16
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
CHUNK_ELEMENTS = 1 << 20  # (image, pixel, Gaussian) triples evaluated at once


def availability() -> str | None:
    """Always usable: needs nothing but PyTorch."""
    return None


def tile_rects(means2d: Tensor, radii: Tensor, width: int, height: int) -> Tensor:
    """[I, N, 4] int64 (tx_min, tx_max, ty_min, ty_max): the half-open tile range each Gaussian touches.

    Computed in float32 exactly as in the contract, so every backend bins identically.
    """
    tiles_x = (width + TILE_SIZE - 1) // TILE_SIZE
    tiles_y = (height + TILE_SIZE - 1) // TILE_SIZE
    m = means2d.detach().float()
    r = radii.float()
    rects = torch.stack([
        torch.floor((m[..., 0] - r) / TILE_SIZE).clamp(0, tiles_x),
        torch.ceil((m[..., 0] + r) / TILE_SIZE).clamp(0, tiles_x),
        torch.floor((m[..., 1] - r) / TILE_SIZE).clamp(0, tiles_y),
        torch.ceil((m[..., 1] + r) / TILE_SIZE).clamp(0, tiles_y),
    ], dim=-1)
    rects = torch.nan_to_num(rects).long()
    return torch.where((radii > 0)[..., None], rects, torch.zeros_like(rects))  # culled: empty range


def _composite(pixels: Tensor, pixel_tiles: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor,
               feats: Tensor, rects: Tensor) -> tuple[Tensor, Tensor]:
    """Composite depth-sorted Gaussians over a chunk of P pixels: ([I, P, D], [I, P]).

    pixels [P, 2] pixel centres, pixel_tiles [P, 2] their tile coordinates; the rest are sorted per image.
    """
    tx, ty = pixel_tiles[:, 0, None], pixel_tiles[:, 1, None]  # [P, 1]
    r = rects[:, None]  # [I, 1, N, 4]
    member = (r[..., 0] <= tx) & (tx < r[..., 1]) & (r[..., 2] <= ty) & (ty < r[..., 3])  # [I, P, N]

    d = means2d[:, None] - pixels[None, :, None]  # [I, P, N, 2]
    dx, dy = d[..., 0], d[..., 1]
    a, b, c = conics[:, None].unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacities[:, None] * torch.exp(-torch.clamp_min(sigma, 0.0)), ALPHA_MAX)
    alpha = torch.where(member & (sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))

    ones = alpha.new_ones(*alpha.shape[:-1], 1)
    with torch.no_grad():
        # Early stop: a Gaussian whose T_next would fall below the threshold, and everything behind it, is
        # dropped. T only decreases, so the survivors are a prefix and a cumulative product finds them.
        t_next = torch.cumprod(torch.cat([ones, 1 - alpha], dim=-1), dim=-1)[..., 1:]
        survives = t_next >= TRANSMITTANCE_MIN
    alpha = torch.where(survives, alpha, torch.zeros_like(alpha))

    trans = torch.cumprod(torch.cat([ones, 1 - alpha], dim=-1), dim=-1)  # [I, P, N+1]: T before each, T_final
    weights = alpha * trans[..., :-1]
    out = torch.einsum("ipn,ind->ipd", weights, feats)
    return out, 1 - trans[..., -1]


def rasterize(means2d: Tensor, conics: Tensor, feats: Tensor, opacities: Tensor, depths: Tensor, radii: Tensor,
              width: int, height: int) -> tuple[Tensor, Tensor]:
    """Alpha-composite I images of N 2D Gaussians: (out [I, H, W, D], alpha [I, H, W, 1]).

    means2d [I, N, 2], conics [I, N, 3], feats [I, N, D], opacities [I, N], depths [I, N], radii [I, N] int32.
    Differentiable (autograd) w.r.t. means2d, conics, feats and opacities.
    """
    num_images, n = opacities.shape
    order = torch.sort(depths.detach(), dim=-1, stable=True).indices  # ties: ascending index

    def by_depth(t: Tensor) -> Tensor:
        index = order.reshape(*order.shape, *([1] * (t.ndim - 2))).expand(*order.shape, *t.shape[2:])
        return torch.gather(t, 1, index)

    radii = by_depth(radii)
    valid = radii > 0
    # Culled Gaussians contribute nothing whatever their values; zeroing them keeps NaN/inf out of the graph.
    means2d = torch.where(valid[..., None], by_depth(means2d), torch.zeros_like(means2d))
    conics = torch.where(valid[..., None], by_depth(conics), torch.zeros_like(conics))
    opacities = torch.where(valid, by_depth(opacities), torch.zeros_like(opacities))
    feats = torch.where(valid[..., None], by_depth(feats), torch.zeros_like(feats))
    rects = tile_rects(means2d, radii, width, height)

    ys, xs = torch.meshgrid(torch.arange(height, device=means2d.device), torch.arange(width, device=means2d.device),
                            indexing="ij")
    pixel_index = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # [H*W, 2] (x, y), row-major
    pixels = pixel_index.to(means2d.dtype) + 0.5
    pixel_tiles = pixel_index // TILE_SIZE

    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (means2d, conics, opacities, feats))
    chunk = max(1, CHUNK_ELEMENTS // max(1, num_images * n))
    outs, alphas = [], []
    for start in range(0, height * width, chunk):
        args = (pixels[start:start + chunk], pixel_tiles[start:start + chunk], means2d, conics, opacities, feats,
                rects)
        out, alpha = checkpoint(_composite, *args, use_reentrant=False) if needs_grad else _composite(*args)
        outs.append(out)
        alphas.append(alpha)
    out = torch.cat(outs, dim=1).reshape(num_images, height, width, feats.shape[-1])
    alpha = torch.cat(alphas, dim=1).reshape(num_images, height, width, 1)
    return out, alpha
