"""Depth from the cost volume (1/4 resolution) and its refinement at full resolution.

Disparities (inverse depths) are predicted, not depths: the candidates are spaced linearly in disparity, and a
softmax expectation over them is then a smooth, bounded estimate. The full-resolution residual is predicted in
units of the view's disparity range, so the same weights serve scenes of any metric scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet import UNet


@dataclass
class CoarseDepth:
    """Per view (flattened B*V): probabilities [BV, D, h, w], disparity and confidence [BV, 1, h, w]."""

    probs: Tensor
    disparity: Tensor
    confidence: Tensor


class CostVolumeDepth(nn.Module):
    """concat[correlation (D), features (C)] -> U-Net -> D logits (plus the correlation itself) -> softmax."""

    def __init__(self, num_candidates: int, feature_channels: int, base_channels: int, channel_mults: tuple,
                 blocks_per_level: int = 1, num_heads: int = 1, cross_view_attention: bool = True):
        super().__init__()
        self.unet = UNet(num_candidates + feature_channels, num_candidates, base_channels, channel_mults,
                         blocks_per_level, num_heads, cross_view_attention)
        # The refinement starts as zero, so the first logits are the raw correlations: early depths follow
        # feature matching instead of a U-Net's random output.
        nn.init.zeros_(self.unet.out[-1].weight)
        nn.init.zeros_(self.unet.out[-1].bias)

    def forward(self, correlation: Tensor, features: Tensor, candidates: Tensor, num_views: int) -> CoarseDepth:
        """correlation [BV, D, h, w], features [BV, C, h, w], candidate disparities [BV, D]."""
        logits = correlation + self.unet(torch.cat([correlation, features], dim=1), num_views)
        probs = torch.softmax(logits, dim=1)
        disparity = (probs * candidates[:, :, None, None]).sum(dim=1, keepdim=True)
        confidence = probs.max(dim=1, keepdim=True).values
        return CoarseDepth(probs=probs, disparity=disparity, confidence=confidence)


class DepthRefiner(nn.Module):
    """concat[RGB, upsampled features, disparity (0..1 in the view's range), confidence] at full resolution
    -> U-Net -> refined features; a small head on them -> disparity residual and density (opacity) logit."""

    def __init__(self, feature_channels: int, refined_channels: int, channel_mults: tuple, blocks_per_level: int = 1,
                 num_heads: int = 1, cross_view_attention: bool = False, initial_opacity: float = 0.7):
        super().__init__()
        self.unet = UNet(3 + feature_channels + 2, refined_channels, refined_channels, channel_mults,
                         blocks_per_level, num_heads, cross_view_attention)
        self.head = nn.Sequential(nn.Conv2d(refined_channels, refined_channels, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(refined_channels, 2, 3, padding=1))
        # Start with no residual and a uniform opacity: the first renders show the cost-volume depth.
        last = self.head[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([0.0, float(torch.logit(torch.tensor(initial_opacity)))]))

    def forward(self, images: Tensor, features: Tensor, disparity: Tensor, confidence: Tensor,
                disparity_range: Tensor, num_views: int) -> tuple[Tensor, Tensor, Tensor]:
        """images [BV, 3, H, W], upsampled features [BV, C, H, W], coarse disparity/confidence [BV, 1, h, w],
        disparity_range [BV, 2] = (1/far, 1/near). Returns (refined features [BV, R, H, W], disparity
        [BV, 1, H, W] clamped to the range, density logit [BV, 1, H, W])."""
        size = images.shape[-2:]
        low, high = disparity_range[:, 0, None, None, None], disparity_range[:, 1, None, None, None]
        disparity = F.interpolate(disparity, size=size, mode="bilinear", align_corners=False)
        confidence = F.interpolate(confidence, size=size, mode="bilinear", align_corners=False)
        unit_disparity = (disparity - low) / (high - low)
        refined = self.unet(torch.cat([images, features, unit_disparity, confidence], dim=1), num_views)
        residual, density_logit = self.head(refined).split(1, dim=1)
        disparity = torch.minimum(torch.maximum(disparity + residual * (high - low), low), high)
        return refined, disparity, density_logit
