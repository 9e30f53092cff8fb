"""CostVolumeEncoder: posed context views -> one pixel-aligned 3D Gaussian per pixel (MVSplat-style).

Pipeline per scene of V >= 2 views (trained with 2; more work at test time):
CNN features (1/4 res) -> multi-view transformer -> plane-sweep correlation volume over D inverse-depth
candidates -> cost U-Net -> softmax disparity + confidence -> full-resolution refinement U-Net over
[RGB, upsampled features, disparity, confidence] -> refined features, disparity residual, density ->
per-pixel Gaussian head over [refined, RGB, upsampled features] -> adapter (see gaussian_head.py).

SH colour is predicted up to degree 3, the most our rasterizer evaluates (the official model predicts degree 4,
whose extra coefficients its rasterizer never uses).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splatting import Gaussians

from ..geometry import inverse_depth_candidates
from .backbone import CNNBackbone
from .cost_volume import correlation_volume
from .depth import CostVolumeDepth, DepthRefiner
from .errors import EncoderError
from .gaussian_head import GaussianHead, adapt_gaussians
from .transformer import MultiViewTransformer


@dataclass
class EncoderOutput:
    """What the encoder hands to rendering, losses and the densifier.

    gaussians:       B scenes of V*H*W Gaussians, index v*H*W + y*W + x
    features:        [B, V, F, H, W] per-pixel vector concat[refined, RGB, upsampled features] (the densifier's input)
    depth:           [B, V, 1, H, W] z-depth of each pixel's Gaussian (before its sub-pixel offset)
    confidence:      [B, V, 1, h, w] max candidate probability at 1/4 resolution
    disparity_probs: [B, V, D, h, w] candidate probabilities (for logging)
    """

    gaussians: Gaussians
    features: Tensor
    depth: Tensor
    confidence: Tensor
    disparity_probs: Tensor | None = None


_REQUIRED = ("image", "intrinsics", "extrinsics", "near", "far")


class CostVolumeEncoder(nn.Module):
    """forward(context views dict) -> EncoderOutput; see the module docstring. Build through presets.build_encoder."""

    def __init__(self, num_candidates: int = 128, backbone_channels=(64, 96, 128), feature_channels: int = 128,
                 backbone_blocks: int = 2, transformer_layers: int = 6, transformer_heads: int = 1,
                 attn_splits: int = 2, ffn_expansion: int = 4, cost_unet_channels: int = 128,
                 cost_unet_mults=(1, 1, 1), cost_unet_blocks: int = 2, cost_unet_heads: int = 4,
                 cost_unet_cross_view: bool = True, refine_channels: int = 32, refine_unet_mults=(1, 1, 2, 2, 4, 4),
                 refine_unet_blocks: int = 2, refine_unet_heads: int = 4, refine_unet_cross_view: bool = False,
                 head_hidden_channels: int | None = None, sh_degree: int = 3,
                 color_skip: bool = False, initial_opacity: float = 0.7):
        self_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in locals().items()
                       if k not in ("self", "__class__")}
        super().__init__()
        self.init_kwargs = self_kwargs
        if sh_degree not in (0, 1, 2, 3):
            raise EncoderError(f"sh_degree: expected 0, 1, 2 or 3 (the rasterizer's range), got {sh_degree!r}")
        if num_candidates < 2:
            raise EncoderError(f"num_candidates: expected at least 2 depth candidates, got {num_candidates!r}")
        if attn_splits < 1:
            raise EncoderError(f"attn_splits: expected a positive int, got {attn_splits!r}")
        if not 0 < initial_opacity < 1:
            raise EncoderError(f"initial_opacity: expected a value in (0, 1), got {initial_opacity!r}")
        self.num_candidates, self.attn_splits, self.sh_degree = num_candidates, attn_splits, sh_degree
        self.color_skip = color_skip
        self.backbone = CNNBackbone(tuple(backbone_channels), feature_channels, backbone_blocks)
        self.transformer = MultiViewTransformer(feature_channels, transformer_layers, transformer_heads,
                                                attn_splits, ffn_expansion)
        self.cost_depth = CostVolumeDepth(num_candidates, feature_channels, cost_unet_channels,
                                          tuple(cost_unet_mults), cost_unet_blocks, cost_unet_heads,
                                          cost_unet_cross_view)
        # CNN and transformer features fused into the per-pixel feature that is upsampled to full resolution.
        self.fuse = nn.Conv2d(2 * feature_channels, feature_channels, 1)
        self.refiner = DepthRefiner(feature_channels, refine_channels, tuple(refine_unet_mults), refine_unet_blocks,
                                    refine_unet_heads, refine_unet_cross_view, initial_opacity)
        self.feature_dim = refine_channels + 3 + feature_channels
        self.head = GaussianHead(self.feature_dim, sh_degree, head_hidden_channels)

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (backbone stride x transformer window splits)."""
        return CNNBackbone.stride * self.attn_splits

    @staticmethod
    def gaussians_per_scene(num_views: int, height: int, width: int) -> int:
        """One Gaussian per context pixel."""
        return num_views * height * width

    # ----------------------------------------------------------------------------------------------
    def _check_context(self, context) -> tuple[int, int, int, int]:
        if not isinstance(context, dict):
            raise EncoderError(f"context: expected a dict of batched views, got {type(context).__name__}")
        missing = [key for key in _REQUIRED if key not in context]
        if missing:
            raise EncoderError(f"context: missing field(s) {', '.join(missing)}; expected {', '.join(_REQUIRED)}")
        image = context["image"]
        if not isinstance(image, Tensor) or image.ndim != 5 or image.shape[2] != 3:
            shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise EncoderError(f"context.image: expected shape [B, V, 3, H, W], got {shape}")
        b, v, _, h, w = image.shape
        if v < 2:
            raise EncoderError(f"context.image: the cost volume needs at least 2 views, got V={v}")
        expected = {"intrinsics": (b, v, 3, 3), "extrinsics": (b, v, 4, 4), "near": (b, v), "far": (b, v)}
        for key, shape in expected.items():
            value = context[key]
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise EncoderError(f"context.{key}: expected shape {list(shape)}, got {got}")
        m = self.size_multiple
        if h % m or w % m:
            raise EncoderError(f"context.image: height and width must be multiples of {m} (backbone stride "
                               f"{CNNBackbone.stride} x attn_splits {self.attn_splits}), got {h}x{w}")
        near, far = context["near"], context["far"]
        if not bool(((near > 0) & (far > near)).all()):
            raise EncoderError("context.near/far: expected 0 < near < far for every view")
        return b, v, h, w

    def forward(self, context: dict) -> EncoderOutput:
        b, v, h, w = self._check_context(context)
        images = context["image"].float()
        intrinsics, extrinsics = context["intrinsics"].float(), context["extrinsics"].float()
        near, far = context["near"].float(), context["far"].float()
        flat_images = images.reshape(b * v, 3, h, w)

        cnn = self.backbone(flat_images)                                        # [BV, C, h/4, w/4]
        c, hq, wq = cnn.shape[1:]
        mixed = self.transformer(cnn.reshape(b, v, c, hq, wq))                  # [B, V, C, h/4, w/4]
        candidates = inverse_depth_candidates(near, far, self.num_candidates)   # [B, V, D] disparities
        correlation = correlation_volume(mixed, intrinsics, extrinsics, 1.0 / candidates)
        mixed = mixed.reshape(b * v, c, hq, wq)
        coarse = self.cost_depth(correlation.reshape(b * v, -1, hq, wq), mixed,
                                 candidates.reshape(b * v, -1), v)

        upsampled = F.interpolate(self.fuse(torch.cat([cnn, mixed], dim=1)), size=(h, w), mode="bilinear",
                                  align_corners=False)
        disparity_range = torch.stack([1.0 / far, 1.0 / near], dim=-1).reshape(b * v, 2)
        refined, disparity, density_logit = self.refiner(flat_images, upsampled, coarse.disparity,
                                                         coarse.confidence, disparity_range, v)
        features = torch.cat([refined, flat_images, upsampled], dim=1)          # [BV, F, H, W]
        raw = self.head(features)
        depth = (1.0 / disparity).reshape(b, v, 1, h, w)
        gaussians = adapt_gaussians(raw.reshape(b, v, -1, h, w), depth, density_logit.reshape(b, v, 1, h, w),
                                    intrinsics, extrinsics, self.sh_degree, images if self.color_skip else None)
        return EncoderOutput(gaussians=gaussians, features=features.reshape(b, v, -1, h, w), depth=depth,
                             confidence=coarse.confidence.reshape(b, v, 1, hq, wq),
                             disparity_probs=coarse.probs.reshape(b, v, -1, hq, wq))
