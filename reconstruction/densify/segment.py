"""Per-cloud ("segment") primitives shared by the densification operators and the decoder built on them.

A batch of point clouds is stored flat: one row per point plus an int64 cloud id per point (`batch`). These
helpers reduce, normalize and rank values within each cloud without Python loops over points or clouds, so they
run unchanged on CUDA. Per-cloud tables have (largest id + 1) rows, so ids should be small (0 .. B-1, gaps
allowed). Also home of the package's input error, since every operator validates through here.
"""
from __future__ import annotations

import torch
from torch import Tensor


class DensifyError(ValueError):
    """Bad input to a densification operator (one line naming the argument and what was expected)."""


def check_batch(batch: Tensor, num_points: int, where: str) -> None:
    """Raise DensifyError unless `batch` is an int64 [num_points] tensor of non-negative cloud ids."""
    if not isinstance(batch, Tensor) or batch.dtype != torch.int64 or batch.shape != (num_points,):
        got = f"{batch.dtype} {tuple(batch.shape)}" if isinstance(batch, Tensor) else type(batch).__name__
        raise DensifyError(f"{where}: batch must be an int64 tensor of shape ({num_points},), got {got}")
    if num_points and int(batch.min()) < 0:
        raise DensifyError(f"{where}: batch ids must be >= 0, got {int(batch.min())}")


def bit_length(values: Tensor) -> Tensor:
    """Elementwise int.bit_length of a non-negative int64 tensor (0 -> 0, 1 -> 1, 2..3 -> 2, ...), exact."""
    length = torch.zeros_like(values)
    for bit in range(63):
        length += (values >> bit) > 0
    return length


def segment_counts(segment: Tensor, num_segments: int | None = None) -> Tensor:
    """Points per cloud, int64 [num_segments] (default: max id + 1)."""
    return torch.bincount(segment, minlength=0 if num_segments is None else num_segments)


def segment_starts(counts: Tensor) -> Tensor:
    """Exclusive prefix sum of per-cloud counts: where each cloud begins once points are grouped by cloud."""
    return torch.cumsum(counts, 0) - counts


def segment_softmax(values: Tensor, segment: Tensor, num_segments: int | None = None) -> Tensor:
    """softmax of `values` [N] within each cloud (max-subtracted, so large scores do not overflow).

    The per-cloud max is a constant shift for the softmax, so it is taken without gradient; the gradient is that
    of the plain per-cloud softmax."""
    if values.numel() == 0:
        return values.clone()
    num = int(segment.max()) + 1 if num_segments is None else num_segments
    with torch.no_grad():
        peak = values.new_full((num,), float("-inf")).scatter_reduce(0, segment, values, "amax", include_self=False)
    shifted = torch.exp(values - peak[segment])
    total = values.new_zeros(num).index_add(0, segment, shifted)
    return shifted / total[segment]


def group_by_segment(values: Tensor, segment: Tensor, descending: bool = True) -> Tensor:
    """Permutation [N] that groups points by cloud (ascending id) and, within a cloud, sorts `values`
    (descending by default), ties broken by the lower point index first.

    A global stable sort by value followed by a stable sort by cloud id: two O(N log N) sorts instead of a loop
    over clouds."""
    by_value = torch.sort(values, descending=descending, stable=True).indices
    by_cloud = torch.sort(segment[by_value], stable=True).indices
    return by_value[by_cloud]


def segment_rank(values: Tensor, segment: Tensor, descending: bool = True) -> Tensor:
    """Rank [N] int64 of every point within its cloud: 0 for its highest value (lowest if not `descending`),
    ties broken by the lower point index."""
    if values.numel() == 0:
        return torch.zeros_like(segment)
    perm = group_by_segment(values, segment, descending)
    starts = segment_starts(segment_counts(segment))
    position = torch.arange(values.numel(), device=values.device)
    rank = torch.empty_like(perm)
    rank[perm] = position - starts[segment[perm]]
    return rank


def segment_topk_mask(values: Tensor, segment: Tensor, k: Tensor) -> Tensor:
    """bool [N]: True for the k[b] highest values of every cloud b (k int64 [num clouds]), ties to the lower index."""
    return segment_rank(values, segment) < k[segment]
