"""Image metrics of novel-view renders against ground truth: PSNR, SSIM and LPIPS, as feed-forward reconstruction
papers (pixelSplat, MVSplat, generative densification) report them, so our numbers are comparable with theirs.

Images are float [B, 3, H, W] with values in [0, 1]. Every metric returns one value per image, [B]; averaging over
images and scenes is the caller's business. PSNR clips the render to [0, 1] first; SSIM and LPIPS take it raw.
All three are differentiable (ImageMetrics, for evaluation, is not).
SSIM is computed exactly like `skimage.metrics.structural_similarity(gt, pred, win_size=11, gaussian_weights=True,
sigma=1.5, use_sample_covariance=True, data_range=1.0, channel_axis=0)`, but batched in torch on any device.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11     # taps of the Gaussian window (radius 5 = int(3.5 * sigma + 0.5), as scipy truncates)
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
LPIPS_NETS = ("vgg", "alex")


class ImageMetricError(ValueError):
    """Images or options given to a metric are not what it accepts."""


def __getattr__(name: str):
    """`reconstruction.metrics.LPIPS` (and its weight error) resolve to reconstruction.lpips on first access, so
    that importing the metrics stays cheap and the two modules need not import each other at load time."""
    if name in ("LPIPS", "LPIPSWeightsError"):
        from reconstruction import lpips
        return getattr(lpips, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_image_pair(pred: Tensor, gt: Tensor, metric: str, min_size: int = 1) -> None:
    """Raise ImageMetricError unless pred and gt are floating tensors of one shape [B, 3, H, W] with H, W >=
    min_size, on one device."""
    for name, image in (("pred", pred), ("gt", gt)):
        if not isinstance(image, Tensor):
            raise ImageMetricError(f"{metric}: {name} must be a torch.Tensor [B, 3, H, W], got {type(image).__name__}")
        if image.ndim != 4 or image.shape[1] != 3:
            raise ImageMetricError(f"{metric}: {name} must have shape [B, 3, H, W], got {list(image.shape)}")
        if not image.is_floating_point():
            raise ImageMetricError(f"{metric}: {name} must be a floating tensor with values in [0, 1], "
                                   f"got dtype {image.dtype}")
    if pred.shape != gt.shape:
        raise ImageMetricError(f"{metric}: pred and gt must have the same shape, got {list(pred.shape)} and "
                               f"{list(gt.shape)}")
    if pred.device != gt.device:
        raise ImageMetricError(f"{metric}: pred and gt must be on the same device, got {pred.device} and {gt.device}")
    height, width = pred.shape[-2:]
    if min(height, width) < min_size:
        raise ImageMetricError(f"{metric}: images must be at least {min_size}x{min_size} pixels, got {height}x{width}")


def psnr(pred: Tensor, gt: Tensor) -> Tensor:
    """[B] peak signal-to-noise ratio in dB for peak 1: -10 log10(mean squared error over C, H, W), with pred
    clipped to [0, 1] (a render's overshoot is not real signal). Identical images give +inf."""
    check_image_pair(pred, gt, "psnr")
    error = pred.to(torch.float64).clamp(0.0, 1.0) - gt.to(torch.float64)
    mse = error.square().mean(dim=(1, 2, 3))
    return (-10.0 * torch.log10(mse)).to(pred.dtype)


@functools.lru_cache(maxsize=None)
def _gaussian_taps() -> tuple[float, ...]:
    """The normalized 11-tap Gaussian (sigma 1.5) that scipy.ndimage.gaussian_filter uses for SSIM."""
    radius = SSIM_WINDOW // 2
    weights = [math.exp(-0.5 * (x / SSIM_SIGMA) ** 2) for x in range(-radius, radius + 1)]
    total = sum(weights)
    return tuple(w / total for w in weights)


def _gaussian_blur_valid(maps: Tensor) -> Tensor:
    """[B, K, H, W] -> [B, K, H-10, W-10]: separable Gaussian per channel, only where the window fits. skimage
    filters with reflected borders and then crops those 5 pixels away, which leaves exactly these values."""
    channels = maps.shape[1]
    taps = torch.tensor(_gaussian_taps(), dtype=maps.dtype, device=maps.device)
    rows = F.conv2d(maps, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(rows, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def ssim(pred: Tensor, gt: Tensor) -> Tensor:
    """[B] structural similarity (Gaussian window 11 / sigma 1.5, sample covariance, data range 1), the mean of the
    SSIM map over each channel's valid region, then over the channels; computed in float64 like skimage's mean.
    Images must be at least 11x11."""
    check_image_pair(pred, gt, "ssim", min_size=SSIM_WINDOW)
    x = pred.to(torch.float64)
    y = gt.to(torch.float64)
    channels = x.shape[1]
    blurred = _gaussian_blur_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mu_x, mu_y, mean_xx, mean_yy, mean_xy = blurred.split(channels, dim=1)
    taps = SSIM_WINDOW * SSIM_WINDOW
    sample = taps / (taps - 1)   # skimage's use_sample_covariance factor N / (N - 1), N = window pixels
    var_x = sample * (mean_xx - mu_x * mu_x)
    var_y = sample * (mean_yy - mu_y * mu_y)
    cov_xy = sample * (mean_xy - mu_x * mu_y)
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(2, 3)).mean(dim=1).to(pred.dtype)


class ImageMetrics:
    """All evaluation metrics of a batch at once: `metrics(pred, gt)` -> {"psnr", "ssim", "lpips" (VGG, when "vgg"
    is in lpips_nets), "lpips_alex" (when "alex" is)}: detached [B] float32 tensors on the CPU.

    The LPIPS networks are built once here (weights are loaded and checked at construction, so a missing weight
    package fails before any evaluation work) and run on `device` (default: the device of the images)."""

    def __init__(self, lpips_nets=("vgg",), device=None):
        if isinstance(lpips_nets, str):
            lpips_nets = (lpips_nets,)
        nets = tuple(lpips_nets)
        for net in nets:
            if net not in LPIPS_NETS:
                raise ImageMetricError(f"ImageMetrics: lpips_nets entries must be one of {list(LPIPS_NETS)}, "
                                       f"got {net!r}")
        if len(set(nets)) != len(nets):
            raise ImageMetricError(f"ImageMetrics: lpips_nets lists a network twice: {list(nets)}")
        from reconstruction.lpips import LPIPS  # here, so importing the metrics alone stays cheap

        self.device = None if device is None else torch.device(device)
        self.lpips = {net: LPIPS(net).to(self.device if self.device is not None else "cpu").eval() for net in nets}

    def __call__(self, pred: Tensor, gt: Tensor) -> dict[str, Tensor]:
        check_image_pair(pred, gt, "ImageMetrics")
        if self.device is not None:
            pred, gt = pred.to(self.device), gt.to(self.device)
        with torch.no_grad():
            results = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
            for net, model in self.lpips.items():
                model.to(pred.device)
                results["lpips" if net == "vgg" else f"lpips_{net}"] = model(pred, gt)
        return {name: value.detach().to("cpu", torch.float32) for name, value in results.items()}
