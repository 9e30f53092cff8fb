"""StyleGAN2-style mapping network with camera-label (pose) conditioning."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from training.layers import EqLinear


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z [B, z_dim], c [B, c_dim] -> ws [B, num_ws, w_dim].

    c is scaled by c_scale (or zeroed when pose_cond is off), embedded by EqLinear(c_dim -> w_dim), and both z and
    the embedding are 2nd-moment normalized and concatenated before `num_layers` lrelu layers (lr multiplier 0.01).
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 2,
                 lr_multiplier: float = 0.01, c_scale: float = 1.0, w_avg_beta: float = 0.998,
                 pose_cond: bool = True):
        super().__init__()
        if z_dim <= 0 and c_dim <= 0:
            raise ValueError("training/mapping.py: MappingNetwork needs z_dim > 0 or c_dim > 0")
        if num_layers < 1:
            raise ValueError(f"training/mapping.py: num_layers must be >= 1, got {num_layers}")
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.c_scale = c_scale
        self.w_avg_beta = w_avg_beta
        self.pose_cond = pose_cond
        self.embed = EqLinear(c_dim, w_dim) if c_dim > 0 else None
        features = (z_dim > 0) * z_dim + (c_dim > 0) * w_dim
        layers = []
        for _ in range(num_layers):
            layers.append(EqLinear(features, w_dim, activation="lrelu", lr_multiplier=lr_multiplier))
            features = w_dim
        self.layers = nn.ModuleList(layers)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor, c: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool = False) -> Tensor:
        parts = []
        if self.z_dim > 0:
            if z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"MappingNetwork: z must be [B, {self.z_dim}], got {list(z.shape)}")
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim > 0:
            if c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"MappingNetwork: c must be [B, {self.c_dim}], got {list(c.shape)}")
            c = c.float() * self.c_scale if self.pose_cond else torch.zeros_like(c, dtype=torch.float32)
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, dim=1)
        for layer in self.layers:
            x = layer(x)
        if update_emas:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws
