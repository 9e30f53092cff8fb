"""A 2D U-Net for per-view maps of a multi-view batch, with attention at its lowest resolution.

Used twice: to refine the cost volume at 1/4 resolution and to refine depth and features at full resolution.
Group-normalized residual blocks; stride-2 convolutions down and (after a channel-narrowing convolution)
nearest-neighbour upsampling back to each skip's exact size, so any map size works (odd sizes included). At the bottom, self-attention within each view and
(optionally) cross-attention to the other views of the same scene.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer import Attention, other_view_index


def _group_norm(channels: int) -> nn.GroupNorm:
    """Up to 32 groups of at least 4 channels each (fewer for narrow layers)."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if (channels % g == 0 and channels // g >= 4) or g == 1)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GN-SiLU-conv3x3-GN-SiLU-conv3x3 plus the (1x1-projected) input."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(_group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                  _group_norm(out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class BottleneckAttention(nn.Module):
    """Self-attention over each view's tokens, then (optionally) cross-attention to the other views' tokens."""

    def __init__(self, channels: int, num_heads: int, cross_view: bool):
        super().__init__()
        self.norm_self = nn.LayerNorm(channels)
        self.self_attention = Attention(channels, num_heads)
        self.cross = None
        if cross_view:
            self.norm_cross = nn.LayerNorm(channels)
            self.cross = Attention(channels, num_heads)

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                                   # [B*V, hw, C]
        y = self.norm_self(tokens)
        tokens = tokens + self.self_attention(y, y)
        if self.cross is not None and num_views > 1:
            y = self.norm_cross(tokens).reshape(n // num_views, num_views, h * w, c)
            others = other_view_index(num_views, x.device)
            context = y[:, others].reshape(n, (num_views - 1) * h * w, c)         # [B*V, (V-1)hw, C]
            tokens = tokens + self.cross(y.reshape(n, h * w, c), context)
        return tokens.transpose(1, 2).reshape(n, c, h, w)


class UNet(nn.Module):
    """[B*V, in, h, w] -> [B*V, out, h, w]; level i has width base * mults[i] and `blocks_per_level` residual
    blocks on each side, one stride-2 step between levels."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int, channel_mults: tuple[int, ...],
                 blocks_per_level: int = 1, num_heads: int = 1, cross_view_attention: bool = False):
        super().__init__()
        widths = [base_channels * m for m in channel_mults]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        for level, width in enumerate(widths):
            previous = widths[max(level - 1, 0)]
            blocks = [ResBlock(previous if i == 0 else width, width) for i in range(blocks_per_level)]
            self.down_blocks.append(nn.Sequential(*blocks))
            if level < len(widths) - 1:
                self.downsamples.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.mid_block1 = ResBlock(widths[-1], widths[-1])
        self.mid_attention = BottleneckAttention(widths[-1], num_heads, cross_view_attention)
        self.mid_block2 = ResBlock(widths[-1], widths[-1])
        self.up_blocks, self.up_convs = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths) - 1)):
            self.up_convs.append(nn.Conv2d(widths[level + 1], widths[level], 3, padding=1))
            blocks = [ResBlock(2 * widths[level] if i == 0 else widths[level], widths[level])
                      for i in range(blocks_per_level)]
            self.up_blocks.append(nn.Sequential(*blocks))
        self.out = nn.Sequential(_group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], out_channels, 3, padding=1))

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        x = self.stem(x)
        skips = []
        for level, blocks in enumerate(self.down_blocks):
            x = blocks(x)
            if level < len(self.downsamples):
                skips.append(x)
                x = self.downsamples[level](x)
        x = self.mid_block2(self.mid_attention(self.mid_block1(x), num_views))
        for up_conv, block in zip(self.up_convs, self.up_blocks):
            skip = skips.pop()
            # Narrow the channels at the low resolution, then upsample: 4x cheaper than the other order.
            x = F.interpolate(up_conv(x), size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)
