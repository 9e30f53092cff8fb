"""Pose-aware discriminator of GSGAN: an unconditional StyleGAN2 ResNet trunk plus an auxiliary pose branch
whose features are matched against an embedding of the camera label by the pose-contrastive loss.

The label c never reaches the trunk, so the adversarial logits do not depend on it.

Mixed precision: on CPU everything runs in float32. On CUDA the blocks at the top `num_fp16_res` resolutions
(res >= max(2**(log2(img_resolution) + 1 - num_fp16_res), 8)) run in float16, with every convolution clamped to
+-conv_clamp; the epilogue, the pose heads and the camera encoder always run in float32. `forward(...,
force_fp32=True)` or num_fp16_res=0 gives float32 everywhere.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from training.conv_layers import EqConv2d, MinibatchStd
from training.layers import EqLinear

ARCHITECTURES = ("resnet", "orig")


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Feature channels of the trunk at resolution res: min(channel_base // res, channel_max)."""
    return min(channel_base // res, channel_max)


class DiscriminatorBlock(nn.Module):
    """One trunk block at resolution `resolution`: (fromRGB) -> conv0 3x3 -> conv1 3x3 down 2x, plus (resnet) a 1x1
    down-sampling skip without bias; output = (skip + conv1) * sqrt(0.5), at half the resolution."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", use_fp16: bool = False, conv_clamp: Optional[float] = None):
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.architecture = architecture
        self.use_fp16 = use_fp16
        if in_channels == 0:
            self.fromrgb = EqConv2d(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = EqConv2d(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqConv2d(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = EqConv2d(tmp_channels, out_channels, 1, bias=False, down=2, conv_clamp=conv_clamp)

    def forward(self, x: Optional[Tensor], img: Optional[Tensor], force_fp32: bool = False) -> Tensor:
        dev = (x if x is not None else img).device
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and dev.type == "cuda") else torch.float32
        if self.in_channels == 0:
            x = self.fromrgb(img.to(dtype))
        else:
            x = x.to(dtype)
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            return y + x
        return self.conv1(self.conv0(x))


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch std -> 3x3 conv lrelu -> flatten -> EqLinear lrelu -> EqLinear to one logit (float32)."""

    def __init__(self, channels: int, mbstd_group_size: Optional[int], mbstd_num_channels: int,
                 conv_clamp: Optional[float]):
        super().__init__()
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = EqConv2d(channels + mbstd_num_channels, channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = EqLinear(channels * 16, channels, activation="lrelu")
        self.out = EqLinear(channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        return self.out(self.fc(x.flatten(1)))


class Discriminator(nn.Module):
    """Unconditional StyleGAN2 ResNet discriminator with a pose branch and a camera encoder.

    forward(img [B, img_channels, R, R], c [B, c_dim]) -> (logits [B, 1], feat_pose [B, pose_feat_dim],
    cam_emb [B, pose_feat_dim]):
      logits    from the trunk b{R} ... b8 and the 4x4 epilogue (independent of c);
      feat_pose from `b8_pose`, a separately initialised copy of the res-8 block fed with the output of b16,
                flattened -> EqLinear(C*16 -> cam_hidden, lrelu) -> EqLinear(cam_hidden -> pose_feat_dim);
      cam_emb   from the raw label: EqLinear(c_dim -> cam_hidden, lrelu) -> EqLinear(cam_hidden -> pose_feat_dim).
    Parameter names follow StyleGAN2 (b256.conv0.weight, b4.fc.weight, ...) to ease checkpoint conversion.
    """

    def __init__(self, img_resolution: int, img_channels: int = 3, c_dim: int = 25, channel_base: int = 32768,
                 channel_max: int = 512, mbstd_group_size: Optional[int] = 4, mbstd_num_channels: int = 1,
                 conv_clamp: Optional[float] = 256, num_fp16_res: int = 4, pose_feat_dim: int = 64,
                 cam_hidden: int = 512, architecture: str = "resnet"):
        super().__init__()
        self.init_kwargs = dict(
            img_resolution=img_resolution, img_channels=img_channels, c_dim=c_dim, channel_base=channel_base,
            channel_max=channel_max, mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels,
            conv_clamp=conv_clamp, num_fp16_res=num_fp16_res, pose_feat_dim=pose_feat_dim, cam_hidden=cam_hidden,
            architecture=architecture)
        self._check_args()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.c_dim = c_dim
        self.pose_feat_dim = pose_feat_dim
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        ch = {res: channels_at(res, channel_base, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.fp16_resolution = fp16_resolution

        for res in self.block_resolutions:
            in_ch = ch[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_ch, ch[res], ch[res // 2], res, img_channels, architecture,
                                       use_fp16=(num_fp16_res > 0 and res >= fp16_resolution), conv_clamp=conv_clamp)
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(ch[4], mbstd_group_size, mbstd_num_channels, conv_clamp)

        # Pose branch: a copy of the res-8 block that takes b16's output (i.e. the same input as b8).
        self.b8_pose = DiscriminatorBlock(ch[8], ch[8], ch[4], 8, img_channels, architecture,
                                          use_fp16=(num_fp16_res > 0 and 8 >= fp16_resolution), conv_clamp=conv_clamp)
        self.pose_fc = EqLinear(ch[4] * 16, cam_hidden, activation="lrelu")
        self.pose_out = EqLinear(cam_hidden, pose_feat_dim)
        self.cam_fc = EqLinear(c_dim, cam_hidden, activation="lrelu")
        self.cam_out = EqLinear(cam_hidden, pose_feat_dim)

    def _check_args(self) -> None:
        kw = self.init_kwargs
        res = kw["img_resolution"]
        if not isinstance(res, int) or res < 16 or res & (res - 1):
            raise ValueError(f"training/discriminator.py: img_resolution must be a power of two >= 16, got {res!r}")
        if kw["architecture"] not in ARCHITECTURES:
            raise ValueError(f"training/discriminator.py: architecture must be one of {ARCHITECTURES}, "
                             f"got {kw['architecture']!r}")
        for name in ("img_channels", "c_dim", "channel_base", "channel_max", "pose_feat_dim", "cam_hidden"):
            if not isinstance(kw[name], int) or kw[name] < 1:
                raise ValueError(f"training/discriminator.py: {name} must be a positive int, got {kw[name]!r}")
        if kw["channel_base"] // res < 1:
            raise ValueError(f"training/discriminator.py: channel_base {kw['channel_base']} gives no channels at "
                             f"resolution {res}")
        if not isinstance(kw["num_fp16_res"], int) or kw["num_fp16_res"] < 0:
            raise ValueError(f"training/discriminator.py: num_fp16_res must be an int >= 0, "
                             f"got {kw['num_fp16_res']!r}")

    def forward(self, img: Tensor, c: Tensor, force_fp32: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        r = self.img_resolution
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.img_channels, r, r):
            raise ValueError(f"training/discriminator.py: img must be [B, {self.img_channels}, {r}, {r}], "
                             f"got {list(img.shape)}")
        if c.ndim != 2 or c.shape[0] != img.shape[0] or c.shape[1] != self.c_dim:
            raise ValueError(f"training/discriminator.py: c must be [B={img.shape[0]}, {self.c_dim}], "
                             f"got {list(c.shape)}")
        x = None
        x16 = None
        for res in self.block_resolutions:
            if res == 8:
                x16 = x
            x = getattr(self, f"b{res}")(x, img, force_fp32=force_fp32)
        logits = self.b4(x)

        pose = self.b8_pose(x16, None, force_fp32=force_fp32).float()
        feat_pose = self.pose_out(self.pose_fc(pose.flatten(1)))
        cam_emb = self.cam_out(self.cam_fc(c.to(torch.float32)))
        return logits, feat_pose, cam_emb

    def extra_repr(self) -> str:
        return f"img_resolution={self.img_resolution}, fp16_resolution>={self.fp16_resolution}"
