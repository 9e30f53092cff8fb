"""Up-sampling of a decoder stage: every point becomes r children inside a small box around it.

Child j of a point with feature f sits at x + dx_j, dx_j = c * g * tanh(MLP(f))_j (g: the stage's grid size,
c = 0.1), so it stays within the axis-aligned box of half-size c * g around its parent. The child's feature is
Linear(f) + DropPath(MLP([PE(dx_j), f])): the shared parent feature plus what the offset tells, where PE is
sin/cos of dx_j (world units, as the official code uses it) at frequencies 2^0 .. 2^(n-1), laid out
[sin(f_0 dx), sin(f_1 dx), ..., cos(f_0 dx), ...] with the three axes innermost. The Linear and the MLP map to the
next stage's width; LayerNorms without affine parameters sit before (input), inside (MLP input) and after
(output), as in the official decoder. Children of point i are rows i*r .. i*r + r - 1, so clouds stay contiguous.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .segment import DensifyError


def drop_path(x: Tensor, rate: float, training: bool, generator: torch.Generator | None = None) -> Tensor:
    """Stochastic depth per point (row): a row is zeroed with probability `rate`, survivors scaled by
    1 / (1 - rate); identity outside training. The draw uses `generator` (on its own device, then moved), so
    seeded training runs reproduce."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    if generator is not None:
        draw = torch.rand(x.shape[0], 1, generator=generator, device=generator.device, dtype=x.dtype)
        draw = draw.to(x.device)
    else:
        draw = torch.rand(x.shape[0], 1, device=x.device, dtype=x.dtype)
    return x * ((draw < keep).to(x.dtype) / keep)


def offset_encoding(offsets: Tensor, frequencies: Tensor) -> Tensor:
    """[N, 3] -> [N, 6 n]: sin then cos of frequencies[k] * offsets, frequency-major, axes innermost."""
    angles = (frequencies[None, :, None] * offsets[:, None, :]).flatten(1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class ChildUpsampler(nn.Module):
    """coords [N, 3], feats [N, C_in] -> r children per point: coords [N r, 3], feats [N r, C_out]."""

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2, n_frequencies: int = 15,
                 offset_scale: float = 0.1, drop_path_rate: float = 0.0):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise DensifyError(f"upscale: expected positive ints (children per point), got {factor!r}")
        if not offset_scale > 0:
            raise DensifyError(f"offset_scale: expected a positive number, got {offset_scale!r}")
        self.factor, self.offset_scale, self.drop_path_rate = factor, float(offset_scale), float(drop_path_rate)
        self.in_norm = nn.LayerNorm(in_channels, elementwise_affine=False)
        self.offset = nn.Sequential(nn.Linear(in_channels, in_channels), nn.GELU(),
                                    nn.Linear(in_channels, 3 * factor))
        self.skip = nn.Linear(in_channels, out_channels)
        pe_dim = 6 * n_frequencies
        self.delta = nn.Sequential(nn.LayerNorm(pe_dim + in_channels, elementwise_affine=False),
                                   nn.Linear(pe_dim + in_channels, in_channels), nn.GELU(),
                                   nn.Linear(in_channels, out_channels))
        self.out_norm = nn.LayerNorm(out_channels, elementwise_affine=False)
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies, dtype=torch.float32),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, offset_scale={self.offset_scale}, drop_path={self.drop_path_rate}"

    def forward(self, coords: Tensor, feats: Tensor, grid_size: float,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(child coords [N r, 3], child feats [N r, C_out], offsets [N r, 3]) for the stage's grid size."""
        r = self.factor
        feats = self.in_norm(feats)
        offsets = self.offset_scale * grid_size * torch.tanh(self.offset(feats).reshape(-1, 3))
        parent_feats = feats.repeat_interleave(r, dim=0)
        encoded = offset_encoding(offsets, self.frequencies.to(offsets.dtype))
        delta = self.delta(torch.cat([encoded, parent_feats], dim=-1))
        child_feats = self.skip(parent_feats) + drop_path(delta, self.drop_path_rate, self.training, generator)
        return coords.repeat_interleave(r, dim=0) + offsets, self.out_norm(child_feats), offsets
