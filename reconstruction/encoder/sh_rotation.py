"""Rotating real spherical-harmonic colour coefficients (degrees 0-3, the basis of `splatting.sh`).

The encoder predicts colour coefficients in each camera's frame (so the network sees the same problem whatever the
pose) and the rasterizer evaluates them in the world frame. A rotation maps each degree-l block onto itself, so
per degree we solve the (2l+1)x(2l+1) matrix from basis values at fixed sample directions: with
Y_l(R d) = M_l(R) Y_l(d) for all d, the coefficients c' = M_l(R) c satisfy Y_l(R d) . c' = Y_l(d) . c (the basis
is orthonormal, so M_l is orthogonal and M_l^-T = M_l). Differentiable in R.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from splatting.sh import sh_basis

_NUM_SAMPLES = 64  # sample directions; far more than the 7 unknowns per row of degree 3, well conditioned
_CACHE: dict = {}


def _sample_directions(count: int) -> Tensor:
    """[count, 3] unit directions spread evenly over the sphere (a Fibonacci lattice), float64."""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1 - 2 * index / count
    radius = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * index
    return torch.stack([radius * torch.cos(phi), radius * torch.sin(phi), z], dim=-1)


def _solver(degree: int, device, dtype) -> tuple[Tensor, Tensor]:
    """(sample directions [S, 3], pseudo-inverse of their degree-l basis values [2l+1, S]), cached per
    degree/device/dtype."""
    key = (degree, str(device), dtype)
    if key not in _CACHE:
        dirs = _sample_directions(_NUM_SAMPLES)
        basis = sh_basis(degree, dirs)[:, degree ** 2:(degree + 1) ** 2]  # [S, 2l+1]
        _CACHE[key] = (dirs.to(device=device, dtype=dtype), torch.linalg.pinv(basis).to(device=device, dtype=dtype))
    return _CACHE[key]


def sh_rotation_matrices(rot: Tensor, max_degree: int) -> list[Tensor]:
    """[M_0, ..., M_max_degree], M_l [..., 2l+1, 2l+1] with Y_l(R d) = M_l Y_l(d), for rotations rot [..., 3, 3]."""
    mats = [torch.ones(*rot.shape[:-2], 1, 1, device=rot.device, dtype=rot.dtype)]
    for degree in range(1, max_degree + 1):
        dirs, pinv = _solver(degree, rot.device, rot.dtype)
        rotated = dirs @ rot.transpose(-1, -2)                              # [..., S, 3] = (R d_s)^T
        values = sh_basis(degree, rotated)[..., degree ** 2:(degree + 1) ** 2]  # [..., S, 2l+1] = Y(R d_s)^T
        mats.append((pinv @ values).transpose(-1, -2))                     # M = (pinv(Y(D)) Y(R D))^T
    return mats


def rotate_sh(sh: Tensor, rot: Tensor) -> Tensor:
    """Coefficients sh [..., K, 3] (K = 1, 4, 9 or 16) expressed in a frame rotated by rot [..., 3, 3].

    rot's batch dimensions broadcast against sh's (e.g. sh [B, V, N, K, 3] with rot [B, V, 1, 3, 3]). The result
    seen along R d has the colour the input had along d."""
    k = sh.shape[-2]
    degree = {1: 0, 4: 1, 9: 2, 16: 3}.get(k)
    if degree is None or sh.shape[-1] != 3:
        raise ValueError(f"rotate_sh: sh must have shape [..., K, 3] with K = 1, 4, 9 or 16, got {list(sh.shape)}")
    if rot.ndim < 2 or tuple(rot.shape[-2:]) != (3, 3):
        raise ValueError(f"rotate_sh: rot must have shape [..., 3, 3], got {list(rot.shape)}")
    if degree == 0:
        return sh
    blocks = [sh[..., :1, :]]
    for l, mat in enumerate(sh_rotation_matrices(rot.to(sh.dtype), degree)[1:], start=1):
        blocks.append(mat @ sh[..., l * l:(l + 1) ** 2, :])
    return torch.cat(blocks, dim=-2)
