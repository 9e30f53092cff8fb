"""Learned top-ratio masks: which points of each cloud get densified.

The forward value is a hard 0/1 mask keeping exactly ceil(ratio * n_b) highest-scoring points of every cloud b
(ties to the lower index); the backward pass is the gradient of a soft score (per-cloud softmax of the scores, or
their sigmoid), the straight-through estimator, so the scorer learns although the selection is discrete.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .segment import DensifyError, check_batch, segment_counts, segment_softmax, segment_topk_mask

SOFT_SCORES = ("softmax", "sigmoid")


class _StraightThrough(torch.autograd.Function):
    """Value of `hard`, gradient routed to `soft` unchanged (exact 0/1 values: no hard + soft - soft rounding)."""

    @staticmethod
    def forward(ctx, hard: Tensor, soft: Tensor) -> Tensor:
        return hard.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, grad


def keep_counts(counts: Tensor, ratio: float) -> Tensor:
    """ceil(ratio * n) per cloud, int64, with a relative tolerance of 1e-12 so a ratio such as 0.1 (stored a hair
    above 1/10) does not keep one point more than its decimal value says."""
    product = counts.to(torch.float64) * ratio
    return torch.ceil(product - product * 1e-12).to(torch.int64).clamp_(min=0).minimum(counts)


def soft_scores(scores: Tensor, batch: Tensor, soft: str = "softmax") -> Tensor:
    """The differentiable surrogate of the mask: per-cloud softmax of the scores, or their sigmoid."""
    if soft == "softmax":
        return segment_softmax(scores, batch)
    if soft == "sigmoid":
        return torch.sigmoid(scores)
    raise DensifyError(f"top_ratio_mask: soft must be one of {', '.join(SOFT_SCORES)}, got {soft!r}")


def top_ratio_mask(scores: Tensor, batch: Tensor, ratio: float, soft: str = "softmax") -> Tensor:
    """Mask [N] (dtype of `scores`): 1 for the ceil(ratio * n_b) highest scores [N] of each cloud batch [N], else 0;
    gradients flow to `scores` through soft_scores(scores, batch, soft). ratio in [0, 1]; 1 keeps every point."""
    if not isinstance(scores, Tensor) or not scores.is_floating_point() or scores.dim() != 1:
        raise DensifyError("top_ratio_mask: scores must be a 1-D floating-point tensor")
    check_batch(batch, scores.shape[0], "top_ratio_mask")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio) or not 0 <= ratio <= 1:
        raise DensifyError(f"top_ratio_mask: ratio must be a number in [0, 1], got {ratio!r}")
    soft_value = soft_scores(scores, batch, soft)
    if scores.numel() == 0:
        return _StraightThrough.apply(scores.detach().clone(), soft_value)
    with torch.no_grad():
        keep = keep_counts(segment_counts(batch), float(ratio))
        hard = segment_topk_mask(scores.detach(), batch, keep).to(scores.dtype)
    return _StraightThrough.apply(hard, soft_value)
