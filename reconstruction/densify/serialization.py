"""Space-filling-curve serialization of batched point clouds (the ordering PTv3-style patch attention relies on).

Each point's grid cell is coded along a curve ("z": Morton, "hilbert": 3-D Hilbert; "-trans": the same curve with
x and y swapped) and the cloud's rank is put in the bits above the curve code, so sorting the codes groups points
by cloud and orders each cloud along the curve. Clouds are serialized independently: grid coordinates start at
each cloud's own minimum, and each cloud uses its own curve depth (bit length of its largest grid coordinate),
so a cloud's order is the same whether it is serialized alone or in a batch.

Codes are int64 with up to 21 bits per axis (2^21 cells a side, against the 16 of the reference implementation)
so wide scenes serialize at fine grid sizes. Cloud ranks take the remaining bits; when 3 * depth + cloud bits
exceeds 63 a DensifyError says so (no silent wrap-around or lossy compression).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .segment import DensifyError, bit_length, check_batch

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 21  # bits per axis: 3 * 21 = 63, the sign-free width of an int64 code
_CODE_BITS = 63


@dataclass(frozen=True)
class Serialization:
    """Codes and orderings of one batch, one row per order (`names[o]` is row o's curve).

    order[o] lists point indices along the curve (argsort of code[o], ties to the lower index); inverse[o] is its
    inverse permutation (inverse[o, order[o, j]] == j). `depth` is the number of bits per axis of the code layout
    (the largest per-cloud depth); cloud ranks sit above bit 3 * depth."""
    code: Tensor
    order: Tensor
    inverse: Tensor
    grid_coord: Tensor
    depth: int
    names: tuple[str, ...]


def _spread_bits(v: Tensor) -> Tensor:
    """Move bit i of each 21-bit value to bit 3 i (the classic "part 1 by 2" with 64-bit masks)."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def _interleave(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Morton code with `a` the most significant axis of every bit triple: bit i of a, b, c -> 3i+2, 3i+1, 3i."""
    return (_spread_bits(a) << 2) | (_spread_bits(b) << 1) | _spread_bits(c)


def _hilbert(grid_coord: Tensor, depth: Tensor, max_depth: int) -> Tensor:
    """3-D Hilbert index of every point (Skilling's axes-to-transpose transform, then bit interleaving).

    `depth` [N] is each point's curve depth (its cube has 2^depth cells a side); levels at or above a point's depth
    are skipped for it, which is exactly the transform run with that depth, so one pass serves mixed depths."""
    x = [grid_coord[:, axis].clone() for axis in range(3)]
    limit = torch.ones_like(depth) << depth
    for level in range(max_depth - 1, 0, -1):
        q = 1 << level
        low = q - 1
        active = limit > q
        for axis in range(3):
            has_bit = (x[axis] & q) != 0
            # Where this axis has the bit: invert the low bits of axis 0.
            x[0] = x[0] ^ (has_bit & active) * low
            if axis == 0:
                continue
            # Elsewhere: exchange the low bits of axis 0 and this axis.
            swap = ((x[0] ^ x[axis]) & low) * (~has_bit & active)
            x[0] = x[0] ^ swap
            x[axis] = x[axis] ^ swap
    # Gray decode of the interleaved bit string, done in transposed form.
    x[1] = x[1] ^ x[0]
    x[2] = x[2] ^ x[1]
    flip = torch.zeros_like(x[0])
    for level in range(max_depth - 1, 0, -1):
        q = 1 << level
        flip = flip ^ ((x[2] & q) != 0) * (q - 1)
    return _interleave(x[0] ^ flip, x[1] ^ flip, x[2] ^ flip)


def encode(grid_coord: Tensor, depth: int | Tensor, order: str = "z") -> Tensor:
    """Curve code [N] int64 of integer grid coordinates [N, 3] in [0, 2^depth) along `order`.

    `depth` (bits per axis, 0..21) is one int or an int64 [N] per-point tensor. Morton codes do not depend on it;
    Hilbert codes do (the curve's orientation at the top level)."""
    if order not in ORDERS:
        raise DensifyError(f"encode: order must be one of {', '.join(ORDERS)}, got {order!r}")
    if not isinstance(grid_coord, Tensor) or grid_coord.dtype != torch.int64 or grid_coord.dim() != 2 \
            or grid_coord.shape[1] != 3:
        raise DensifyError("encode: grid_coord must be an int64 tensor of shape (N, 3)")
    n = grid_coord.shape[0]
    if isinstance(depth, Tensor):
        if depth.dtype != torch.int64 or depth.shape != (n,):
            raise DensifyError(f"encode: a depth tensor must be int64 of shape ({n},)")
        depth_t = depth
    else:
        depth_t = torch.full((n,), int(depth), dtype=torch.int64, device=grid_coord.device)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=grid_coord.device)
    max_depth = int(depth_t.max())
    if int(depth_t.min()) < 0 or max_depth > MAX_DEPTH:
        raise DensifyError(f"encode: depth must be in 0..{MAX_DEPTH} bits per axis, got {int(depth_t.min())}.."
                           f"{max_depth}")
    if int(grid_coord.min()) < 0 or bool((grid_coord >= (torch.ones_like(depth_t) << depth_t)[:, None]).any()):
        raise DensifyError("encode: grid_coord must lie in [0, 2^depth) on every axis")
    if order.endswith("-trans"):
        grid_coord = grid_coord[:, [1, 0, 2]]
    if order.startswith("z"):
        return _interleave(grid_coord[:, 0], grid_coord[:, 1], grid_coord[:, 2])
    return _hilbert(grid_coord, depth_t, max_depth)


def grid_coordinates(coord: Tensor, batch: Tensor, grid_size: float) -> Tensor:
    """floor((coord - the cloud's minimum) / grid_size) as int64 [N, 3], per cloud (any non-negative ids)."""
    if coord.shape[0] == 0:
        return torch.zeros(0, 3, dtype=torch.int64, device=coord.device)
    cloud_ids, cloud_rank = torch.unique(batch, return_inverse=True)
    low = coord.new_full((cloud_ids.numel(), 3), float("inf"))
    low = low.scatter_reduce(0, cloud_rank[:, None].expand(-1, 3), coord, "amin", include_self=True)
    return torch.floor((coord - low[cloud_rank]) / grid_size).to(torch.int64)


def _check_inputs(coord: Tensor, batch: Tensor, grid_size: float, orders) -> tuple[str, ...]:
    if not isinstance(coord, Tensor) or not coord.is_floating_point() or coord.dim() != 2 or coord.shape[1] != 3:
        raise DensifyError("serialize: coord must be a floating-point tensor of shape (N, 3)")
    check_batch(batch, coord.shape[0], "serialize")
    if batch.device != coord.device:
        raise DensifyError(f"serialize: batch is on {batch.device}, coord on {coord.device}")
    if not isinstance(grid_size, (int, float)) or not grid_size > 0 or grid_size == float("inf"):
        raise DensifyError(f"serialize: grid_size must be a positive finite number, got {grid_size!r}")
    orders = (orders,) if isinstance(orders, str) else tuple(orders)
    if not orders or any(name not in ORDERS for name in orders):
        raise DensifyError(f"serialize: orders must be a non-empty list of {', '.join(ORDERS)}, got {orders!r}")
    if coord.shape[0] and not bool(torch.isfinite(coord).all()):
        raise DensifyError("serialize: coord contains NaN or infinite values")
    return orders


def serialize(coord: Tensor, batch: Tensor, grid_size: float, orders=ORDERS, shuffle: bool = False,
              generator: torch.Generator | None = None) -> Serialization:
    """Serialize points `coord` [N, 3] of clouds `batch` [N] along each of `orders`.

    shuffle=True permutes the list of orders with `generator` (a CPU torch.Generator; training draws it from a
    seeded generator so runs reproduce); shuffle=False (evaluation) keeps the given order list."""
    orders = _check_inputs(coord, batch, grid_size, orders)
    if shuffle:
        perm = torch.randperm(len(orders), generator=generator).tolist()
        orders = tuple(orders[i] for i in perm)
    n, device = coord.shape[0], coord.device
    if n == 0:
        empty = torch.zeros(len(orders), 0, dtype=torch.int64, device=device)
        return Serialization(empty, empty, empty, torch.zeros(0, 3, dtype=torch.int64, device=device), 0, orders)
    grid = grid_coordinates(coord, batch, grid_size)
    # Dense cloud ranks (ids may skip values) and each cloud's own depth.
    cloud_ids, cloud_rank = torch.unique(batch, return_inverse=True)
    cloud_max = torch.zeros(cloud_ids.numel(), dtype=torch.int64, device=device)
    cloud_max = cloud_max.scatter_reduce(0, cloud_rank, grid.max(1).values, "amax", include_self=True)
    cloud_depth = bit_length(cloud_max)
    depth = int(cloud_depth.max())
    cloud_bits = int(cloud_ids.numel() - 1).bit_length()
    if depth > MAX_DEPTH:
        raise DensifyError(f"serialize: a cloud spans {int(cloud_max.max()) + 1} grid cells at grid_size "
                           f"{grid_size} (more than 2^{MAX_DEPTH} per axis); use a larger grid_size")
    if 3 * depth + cloud_bits > _CODE_BITS:
        raise DensifyError(f"serialize: {cloud_ids.numel()} clouds need {cloud_bits} bits above 3 x {depth} "
                           f"bits of curve code: more than {_CODE_BITS}; pass fewer clouds per call or use a "
                           f"larger grid_size")
    point_depth = cloud_depth[cloud_rank]
    high = cloud_rank << (3 * depth)
    code = torch.stack([high | encode(grid, point_depth, name) for name in orders])
    order = torch.sort(code, dim=1, stable=True).indices
    positions = torch.arange(n, device=device).expand(len(orders), n)
    inverse = torch.empty_like(order).scatter_(1, order, positions)
    return Serialization(code, order, inverse, grid, depth, orders)
