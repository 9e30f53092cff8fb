"""Batched 3D Gaussians in raw (pre-activation) parameters.

Networks produce raw values and `.ply` files store raw values, so the container stores raw values too and
the activations live here, in one place, used by every renderer backend.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic, 1 / (2 sqrt(pi))


def _check(name: str, t: Tensor, expected: str, ndim: int, last: int | None) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"Gaussians.{name}: expected a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.ndim != ndim or (last is not None and t.shape[-1] != last):
        raise ValueError(f"Gaussians.{name}: expected shape {expected}, got {list(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"Gaussians.{name}: expected a floating-point tensor, got {t.dtype}")


@dataclass
class Gaussians:
    """B scenes of N Gaussians each (dimension letters: B batch, N Gaussians, K SH coefficients).

    means:          [B, N, 3] world positions
    log_scales:     [B, N, 3] log of the per-axis standard deviations
    quats:          [B, N, 4] rotation quaternions (w, x, y, z), not necessarily normalized
    opacity_logits: [B, N]    logit of the opacity
    sh:             [B, N, K, 3] spherical-harmonic colour coefficients, K = (degree + 1) ** 2
    """

    means: Tensor
    log_scales: Tensor
    quats: Tensor
    opacity_logits: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        _check("means", self.means, "[B, N, 3]", 3, 3)
        _check("log_scales", self.log_scales, "[B, N, 3]", 3, 3)
        _check("quats", self.quats, "[B, N, 4]", 3, 4)
        _check("opacity_logits", self.opacity_logits, "[B, N]", 2, None)
        _check("sh", self.sh, "[B, N, K, 3]", 4, 3)
        b, n = self.means.shape[:2]
        for f in fields(self):
            t = getattr(self, f.name)
            if tuple(t.shape[:2]) != (b, n):
                raise ValueError(
                    f"Gaussians.{f.name}: expected leading dimensions [B, N] = [{b}, {n}] (from means), "
                    f"got {list(t.shape[:2])}")
            if t.device != self.means.device:
                raise ValueError(f"Gaussians.{f.name}: on {t.device}, but means is on {self.means.device}")
        k = self.sh.shape[2]
        degree = math.isqrt(k) - 1
        if (degree + 1) ** 2 != k or degree > 3:
            raise ValueError(f"Gaussians.sh: K must be 1, 4, 9 or 16 (SH degree 0-3), got K={k}")

    # ----------------------------------------------------------------------------------------------
    # Shape helpers.
    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.sh.shape[2]) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    # ----------------------------------------------------------------------------------------------
    # The activations: the only place where raw parameters become physical quantities.
    def scales(self) -> Tensor:
        """[B, N, 3] standard deviations."""
        return torch.exp(self.log_scales)

    def rotations(self) -> Tensor:
        """[B, N, 4] unit quaternions (w, x, y, z)."""
        return torch.nn.functional.normalize(self.quats, dim=-1)

    def opacities(self) -> Tensor:
        """[B, N] opacities in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    # ----------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError for non-finite values or zero-norm quaternions (checked at the render boundary)."""
        for f in fields(self):
            t = getattr(self, f.name)
            if not torch.isfinite(t).all():
                bad = (~torch.isfinite(t)).sum().item()
                raise ValueError(f"Gaussians.{f.name}: {bad} non-finite value(s) (NaN or inf)")
        norms = self.quats.detach().norm(dim=-1)
        if (norms <= 1e-12).any():
            bad = (norms <= 1e-12).sum().item()
            raise ValueError(f"Gaussians.quats: {bad} quaternion(s) of zero norm; a rotation needs a non-zero quaternion")

    def map(self, fn) -> "Gaussians":
        """Apply `fn` to every field tensor (e.g. slicing along N, .to(device), .detach())."""
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def select(self, index) -> "Gaussians":
        """Keep the Gaussians `index` (a slice, index tensor or boolean mask over N) of every scene."""
        return self.map(lambda t: t[:, index])

    @staticmethod
    def cat(parts: "list[Gaussians]") -> "Gaussians":
        """Concatenate along N (e.g. foreground + background)."""
        if not parts:
            raise ValueError("Gaussians.cat: needs at least one Gaussians")
        return Gaussians(**{f.name: torch.cat([getattr(p, f.name) for p in parts], dim=1) for f in fields(Gaussians)})
