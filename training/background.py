"""Background generator: two levels of Gaussians on a sphere around the scene.

Every layer is modulated by one w (the generator's last). Level 0 places one Gaussian per learnable point on
the sphere; level 1 splits each into `up_ratio` children with the foreground's child rule, re-projected onto
the sphere.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splatting.gaussians import Gaussians
from training.layers import LFF, ModFC, ModSubpixelUpsample
from training.point_generator import HEAD_DIMS, make_children, repeat_children, softmin, with_identity_quat

BG_HEAD_WEIGHT_INIT = {"xyz": 1.0, "scale": 0.01, "rotation": 0.01, "color": 1.0, "opacity": 1.0}


class ModHeads(nn.Module):
    """Modulated, non-demodulated linear heads; `skip` names heads that would be dead (not created)."""

    def __init__(self, in_features: int, w_dim: int, skip: tuple[str, ...] = ()):
        super().__init__()
        self.names = [n for n in HEAD_DIMS if n not in skip]
        for name in self.names:
            self.add_module(name, ModFC(in_features, HEAD_DIMS[name], w_dim, demodulate=False,
                                        weight_init=BG_HEAD_WEIGHT_INIT[name]))

    def forward(self, x: Tensor, w: Tensor) -> dict[str, Tensor]:
        return {name: getattr(self, name)(x, w) for name in self.names}


class ModTrunk(nn.Module):
    """`depth` residual demodulated lrelu ModFCs."""

    def __init__(self, channels: int, w_dim: int, depth: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(ModFC(channels, channels, w_dim, activation="lrelu", residual=True)
                                    for _ in range(depth))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, w)
        return x


class BackgroundGenerator(nn.Module):
    """w [B, w_dim] -> (num_points + up_ratio * num_points) raw Gaussians on the sphere of radius `radius`."""

    def __init__(self, w_dim: int = 512, num_points: int = 2000, radius: float = 3.0, channels: int = 128,
                 up_ratio: int = 4, scale_init: float = -2.0, opacity_init: float = 0.1,
                 percent_dense: float = 0.05, split_ratio: float = 2.0 ** (2.0 / 3.0),
                 scale_clamp_min: float = -10.0, trunk_depth: int = 2):
        super().__init__()
        self.num_points, self.radius, self.up_ratio, self.w_dim = num_points, radius, up_ratio, w_dim
        self.scale_init = scale_init
        self.opacity_logit_init = math.log(opacity_init / (1.0 - opacity_init))
        self.percent_dense, self.split_ratio, self.scale_clamp_min = percent_dense, split_ratio, scale_clamp_min
        # N(0, I) with z = -|z| (the hemisphere behind the subject), divided by the per-point RMS: radius sqrt 3.
        xyz = torch.randn(num_points, 3)
        xyz[:, 2] = -xyz[:, 2].abs()
        self._xyz_bg = nn.Parameter(xyz / xyz.square().mean(dim=1, keepdim=True).sqrt())
        self.lff = LFF(3, channels)
        self.trunk0 = ModTrunk(channels, w_dim, trunk_depth)
        self.heads0 = ModHeads(channels, w_dim, skip=("xyz",))  # level-0 positions come from the points themselves
        self.up = ModSubpixelUpsample(channels, w_dim, up_ratio)
        self.trunk1 = ModTrunk(channels, w_dim, trunk_depth)
        self.heads1 = ModHeads(channels, w_dim)

    @property
    def num_gaussians(self) -> int:
        return self.num_points * (1 + self.up_ratio)

    def _on_sphere(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.radius

    def forward(self, w: Tensor) -> Gaussians:
        if w.ndim != 2 or w.shape[1] != self.w_dim:
            raise ValueError(f"BackgroundGenerator: w must be [B, {self.w_dim}], got {list(w.shape)}")
        b = w.shape[0]
        x = self.lff(self._xyz_bg).unsqueeze(0).expand(b, -1, -1)
        x = self.trunk0(x, w)
        d = self.heads0(x, w)
        s0 = self.scale_init
        level0 = Gaussians(means=self._on_sphere(self._xyz_bg).unsqueeze(0).expand(b, -1, -1),
                           log_scales=softmin(s0 + d["scale"], s0), quats=with_identity_quat(d["rotation"]),
                           opacity_logits=self.opacity_logit_init + d["opacity"].squeeze(-1),
                           sh=d["color"].unsqueeze(2))
        x = self.trunk1(self.up(x, w), w)
        level1 = make_children(repeat_children(level0, self.up_ratio), self.heads1(x, w),
                               percent_dense=self.percent_dense, split_ratio=self.split_ratio,
                               scale_clamp_min=self.scale_clamp_min)
        out = Gaussians.cat([level0, level1])
        return Gaussians(means=self._on_sphere(out.means), log_scales=out.log_scales, quats=out.quats,
                         opacity_logits=out.opacity_logits, sh=out.sh)
