"""Plane-sweep correlation volume: how well each view's features agree with every other view's at each depth."""
from __future__ import annotations

import math

from torch import Tensor

from ..geometry import warp_to_planes
from .transformer import other_view_index


def correlation_volume(features: Tensor, intrinsics: Tensor, extrinsics: Tensor, depths: Tensor) -> Tensor:
    """Correlation [B, V, D, h, w] of features [B, V, C, h, w] at depth planes depths [B, V, D] (z-depth in each
    reference view's camera).

    For reference view i and each other view j, j's features are warped into i at every plane and compared with
    dot(f_i, f_j) / sqrt(C); the V-1 correlations are averaged. Samples outside view j count as zero correlation.
    intrinsics [B, V, 3, 3] are normalized, extrinsics [B, V, 4, 4] camera-to-world."""
    b, v, c, h, w = features.shape
    d = depths.shape[-1]
    others = other_view_index(v, features.device)                  # [V, V-1]
    pairs = v - 1
    # Every (reference, other) pair in one batched warp: [B, V, V-1, ...] flattened to B*V*(V-1).
    ref_k = intrinsics[:, :, None].expand(b, v, pairs, 3, 3).reshape(-1, 3, 3)
    ref_c2w = extrinsics[:, :, None].expand(b, v, pairs, 4, 4).reshape(-1, 4, 4)
    src_k = intrinsics[:, others].reshape(-1, 3, 3)
    src_c2w = extrinsics[:, others].reshape(-1, 4, 4)
    src = features[:, others].reshape(-1, c, h, w)
    plane_depths = depths[:, :, None].expand(b, v, pairs, d).reshape(-1, d)
    warped, _ = warp_to_planes(src, ref_k, ref_c2w, src_k, src_c2w, plane_depths)   # [BVP, C, D, h, w]
    warped = warped.reshape(b, v, pairs, c, d, h, w)
    ref = features[:, :, None, :, None]                                             # [B, V, 1, C, 1, h, w]
    return (ref * warped).sum(dim=3).mean(dim=2) / math.sqrt(c)
