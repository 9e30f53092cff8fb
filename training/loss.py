"""GSGAN losses, regularizers and training schedules (docs/official-release.md).

Pure functions on tensors; the phase functions that combine them with G and D live in training/steps.py.
Schedules are functions of the image count n so that resuming from a saved count continues them exactly;
`official_resume=True` reproduces the official resume behaviour (fades off, background on) for compat mode.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_utils import distributed


# ----------------------------------------------------------------------------------------------- schedules
def blur_sigma(cur_nimg: int, fade_kimg: float, init_sigma: float = 10.0, official_resume: bool = False) -> float:
    """sigma(n) = init_sigma * max(1 - n / (fade_kimg * 1000), 0); 0 after an official (compat) resume."""
    if official_resume or fade_kimg <= 0:
        return 0.0
    return float(init_sigma) * max(1.0 - cur_nimg / (fade_kimg * 1e3), 0.0)


def gpc_swap_prob(cur_nimg: int, reg_prob: float, fade_kimg: float, official_resume: bool = False) -> float:
    """p_swap(n) = (1 - a) + a * reg_prob with a = min(n / (fade_kimg * 1000), 1); reg_prob after an official resume."""
    if official_resume or fade_kimg <= 0:
        return float(reg_prob)
    alpha = min(cur_nimg / (fade_kimg * 1e3), 1.0)
    return (1.0 - alpha) + alpha * float(reg_prob)


def background_enabled(cur_nimg: int, start_kimg: float, official_resume: bool = False) -> bool:
    """Background Gaussians are off for the first start_kimg thousand images (always on after an official resume)."""
    return official_resume or cur_nimg >= start_kimg * 1e3


def ema_beta(cur_nimg: int, batch_size: int, ema_kimg: float, rampup: float | None) -> float:
    """beta = 0.5 ** (batch / ema_nimg), ema_nimg = min(ema_kimg * 1000, rampup * n) (no ramp-up when rampup is None)."""
    ema_nimg = ema_kimg * 1e3
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


# ----------------------------------------------------------------------------------------------- blur
def blur_taps(sigma: float) -> Tensor | None:
    """Normalised taps 2^(-(x/sigma)^2), x in [-floor(3 sigma), floor(3 sigma)]; None when that range is empty."""
    size = math.floor(3 * sigma)
    if sigma <= 0 or size <= 0:
        return None
    x = torch.arange(-size, size + 1, dtype=torch.float64)
    taps = torch.exp2(-(x / sigma).square())
    return (taps / taps.sum()).to(torch.float32)


def blur_images(images: Tensor, sigma: float) -> Tensor:
    """Separable blur of [B, C, H, W] with blur_taps(sigma), zero padding, same size; identity when sigma is small."""
    taps = blur_taps(sigma)
    if taps is None:
        return images
    channels, size = images.shape[1], taps.numel() // 2
    taps = taps.to(device=images.device, dtype=images.dtype, non_blocking=True)  # no wait for the device
    out = F.conv2d(images, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), padding=(0, size), groups=channels)
    return F.conv2d(out, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), padding=(size, 0), groups=channels)


# ----------------------------------------------------------------------------------------------- pose conditioning
def swap_pose_conditioning(c: Tensor, prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Per sample, with probability prob, use the next sample's label (a roll by one along the batch): generator pose conditioning swap."""
    if prob <= 0 or c.shape[0] == 0:
        return c
    draw = torch.rand(c.shape[0], 1, generator=generator, device=generator.device if generator else "cpu")
    swapped = torch.roll(c, shifts=1, dims=0)
    return torch.where(draw.to(c.device, non_blocking=True) < prob, swapped, c)


# ----------------------------------------------------------------------------------------------- adversarial
def generator_adv_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating loss per sample: softplus(-D(fake))."""
    return F.softplus(-fake_logits)


def discriminator_fake_loss(fake_logits: Tensor) -> Tensor:
    return F.softplus(fake_logits)


def discriminator_real_loss(real_logits: Tensor) -> Tensor:
    return F.softplus(-real_logits)


def r1_penalty(real_images: Tensor, real_logits: Tensor) -> Tensor:
    """Per-sample squared gradient norm of sum(D(real)) w.r.t. real_images [B, ...] (double-backward graph kept)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True, only_inputs=True)
    return grad.square().flatten(1).sum(1)


# ----------------------------------------------------------------------------------------------- pose contrastive
def pose_contrastive_loss(feat_pose: Tensor, cam_emb: Tensor, temperature: float = 0.1,
                          sum_grads: bool = True) -> Tensor:
    """Cross-entropy of S = normalize(feat) normalize(cam)^T / temperature against the diagonal, over the batch
    gathered from all ranks. sum_grads=True gives the exact gradient of that global loss on every rank (the
    weight does not depend on the number of processes); False reproduces the official 1/num_ranks weighting."""
    dtype = torch.promote_types(feat_pose.dtype, torch.float32)  # at least fp32 (softmax precision)
    feat = distributed.all_gather_with_grad(F.normalize(feat_pose.to(dtype), dim=1), sum_grads=sum_grads)
    cam = distributed.all_gather_with_grad(F.normalize(cam_emb.to(dtype), dim=1), sum_grads=sum_grads)
    logits = feat @ cam.t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target)


# ----------------------------------------------------------------------------------------------- geometry
def knn_regularizer(points: Tensor, k: int = 64) -> Tensor:
    """Mean over batch, points and their k nearest other points of the squared distance / 3 (points [B, P, 3]).

    k is capped at P - 1 (small test models). The nearest entry (the point itself) is dropped.
    """
    num_points = points.shape[1]
    k = min(int(k), num_points - 1)
    if k < 1:
        return points.sum() * 0.0
    sq = (points[:, :, None, :] - points[:, None, :, :]).square().mean(-1)  # [B, P, P]
    nearest = sq.topk(k + 1, dim=-1, largest=False, sorted=True).values[..., 1:]
    return nearest.mean()


def center_regularizer(points: Tensor) -> Tensor:
    """Mean over batch and coordinates of (mean anchor position)^2 (points [B, P, 3])."""
    return points.mean(dim=1).square().mean()


# ----------------------------------------------------------------------------------------------- gradients
def clip_grad_norm_(module: torch.nn.Module, max_norm: float) -> Tensor | None:
    """Clip the total gradient norm of module's parameters (per process, before the all-reduce)."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not params or max_norm <= 0:
        return None
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
