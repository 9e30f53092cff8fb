"""Per-view CNN features at 1/4 resolution (a UniMatch-like residual encoder, trained from scratch).

Instance normalization (no batch statistics) keeps each view's features independent of the batch, so a model
trained with batch 4 behaves the same on one scene at test time.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN, plus the input (1x1-projected when stride or width change), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(out_channels)
        self.norm2 = nn.InstanceNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride),
                                          nn.InstanceNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(skip + y)


class CNNBackbone(nn.Module):
    """images [N, 3, H, W] in [0, 1] -> features [N, C, H/4, W/4].

    7x7 stride-2 stem (width channels[0]), then three stages of `blocks_per_stage` residual blocks of widths
    channels[0..2] (the second stage halves the resolution again), then a 1x1 projection to `out_channels`."""

    stride = 4

    def __init__(self, channels: tuple[int, int, int] = (64, 96, 128), out_channels: int = 128,
                 blocks_per_stage: int = 2):
        super().__init__()
        c0, c1, c2 = channels
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 7, stride=2, padding=3), nn.InstanceNorm2d(c0), nn.ReLU())
        stages = []
        for in_ch, out_ch, stride in ((c0, c0, 1), (c0, c1, 2), (c1, c2, 1)):
            blocks = [ResidualBlock(in_ch, out_ch, stride)]
            blocks += [ResidualBlock(out_ch, out_ch) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.project = nn.Conv2d(c2, out_channels, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        # Centre the [0, 1] input so the stem starts without a large constant offset.
        return self.project(self.stages(self.stem(images * 2 - 1)))
