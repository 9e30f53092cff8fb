"""2D building blocks of the discriminator: equalized-lr convolutions with FIR down-sampling, bias + activation
with clamping, and the minibatch standard-deviation layer.

Equalized learning rate: weights are stored as N(0, 1) and scaled by 1/sqrt(fan_in) at run time, so Adam sees every
layer at the same scale. Clamping (conv_clamp) bounds activations so that float16 layers cannot overflow.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONV_ACTIVATIONS = ("linear", "lrelu")
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def blur_filter_2d(taps=(1.0, 3.0, 3.0, 1.0)) -> Tensor:
    """Separable low-pass filter (outer product of the 1D taps), normalized to unit DC gain: [len, len]."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f2 = torch.outer(f, f)
    return f2 / f2.sum()


def fir_filter2d(x: Tensor, f: Tensor, pad: int, down: int = 1) -> Tensor:
    """Pad x [B,C,H,W] with `pad` zeros on every side, filter each channel with f [k,k], keep every `down`-th pixel.

    The filter is applied as a true convolution (flipped); for the symmetric blur filter this makes no difference.
    """
    channels = x.shape[1]
    weight = f.flip([0, 1]).to(dtype=x.dtype, device=x.device)[None, None].repeat(channels, 1, 1, 1)
    x = F.pad(x, [pad, pad, pad, pad])
    return F.conv2d(x, weight, stride=down, groups=channels)


def bias_act(x: Tensor, bias: Optional[Tensor], activation: str = "linear", gain: float = 1.0,
             clamp: Optional[float] = None) -> Tensor:
    """x + bias (per channel), activation with its gain (lrelu: slope 0.2, gain sqrt 2), times `gain`, then clamp
    to [-clamp, clamp] (clamp given in the units of the output, i.e. already multiplied by `gain` by the caller)."""
    if bias is not None:
        x = x + bias.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
        gain = gain * LRELU_GAIN
    elif activation != "linear":
        raise ValueError(f"training/conv_layers.py: activation must be one of {CONV_ACTIVATIONS}, got {activation!r}")
    if gain != 1.0:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class EqConv2d(nn.Module):
    """k x k convolution with equalized learning rate, optional 2x down-sampling through the [1,3,3,1] FIR filter,
    bias, activation and clamp. `forward(x, gain)` multiplies the output (and the clamp) by `gain`.

    Down-sampling keeps the output size exactly H/2 x W/2 (H, W even):
      k > 1: zero-pad by k//2 + 1, blur (size H+1), then a stride-2 valid convolution.
      k = 1: zero-pad by 1, blur with stride 2, then the 1x1 convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: Optional[float] = None):
        super().__init__()
        if activation not in CONV_ACTIVATIONS:
            raise ValueError(f"training/conv_layers.py: activation must be one of {CONV_ACTIVATIONS}, "
                             f"got {activation!r}")
        if down not in (1, 2):
            raise ValueError(f"training/conv_layers.py: down must be 1 or 2, got {down}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"training/conv_layers.py: kernel_size must be odd and >= 1, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        if down > 1:
            self.register_buffer("resample_filter", blur_filter_2d(), persistent=False)
        else:
            self.resample_filter = None

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        pad = self.kernel_size // 2
        if self.down == 1:
            x = F.conv2d(x, w, padding=pad)
        elif self.kernel_size == 1:
            x = fir_filter2d(x, self.resample_filter, pad=1, down=2)
            x = F.conv2d(x, w)
        else:
            x = fir_filter2d(x, self.resample_filter, pad=pad + 1, down=1)
            x = F.conv2d(x, w, stride=2)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, act={self.activation}, "
                f"down={self.down}, clamp={self.conv_clamp}")


class MinibatchStd(nn.Module):
    """Appends `num_channels` feature maps holding the standard deviation of the features across a group of samples.

    Group g holds samples g, g + B/G, g + 2B/G, ... (strided), G = min(group_size, B) (the whole batch when
    group_size is None); G must divide B. For each group and each of the `num_channels` channel slices the std over
    the group is averaged over channels and pixels, then broadcast to every sample of the group.
    """

    def __init__(self, group_size: Optional[int] = 4, num_channels: int = 1):
        super().__init__()
        if group_size is not None and group_size < 1:
            raise ValueError(f"training/conv_layers.py: mbstd group_size must be >= 1 or None, got {group_size}")
        if num_channels < 1:
            raise ValueError(f"training/conv_layers.py: mbstd num_channels must be >= 1, got {num_channels}")
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g != 0:
            raise ValueError(f"training/conv_layers.py: minibatch-std group size {g} must divide the batch size {n}")
        f = self.num_channels
        if c % f != 0:
            raise ValueError(f"training/conv_layers.py: mbstd num_channels {f} must divide the channel count {c}")
        y = x.float().reshape(g, n // g, f, c // f, h, w)
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()       # [n/g, f, c/f, h, w]
        y = y.mean(dim=[2, 3, 4])                          # [n/g, f]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)      # [n, f, h, w]; sample i gets group i % (n/g)
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
