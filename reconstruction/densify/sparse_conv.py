"""Submanifold 3x3x3 sparse convolution in pure PyTorch (the conditional positional encoding of PTv3 blocks).

Semantics: F.conv3d cross-correlation (no kernel flip) with the weight [C_out, 3, 3, 3, C_in] (spconv's layout, so
reference checkpoints load unchanged) read along grid axes (0, 1, 2), evaluated only at occupied voxels. Offset
(d0, d1, d2) in {-1, 0, 1}^3 has flat index k = 9 (d0 + 1) + 3 (d1 + 1) + (d2 + 1); k = 13 is the centre.

Several points may share a voxel. Then the lowest-index point of a voxel is its representative, and:
  * every point i gets W[13] f_i (its own features at the centre tap);
  * for each offset k > 13, point i links to the representative r of the voxel at coord_i + offset_k, both ways:
    out[i] += W[k] f_r and out[r] += W[26 - k] f_i.
This is the rule spconv's CPU build follows for duplicates; without duplicates it is exactly the dense conv3d.

Neighbour lookup hashes (cloud, x, y, z) into one int64 key, sorts the keys once and binary-searches the 13
shifted keys, so no hash table, no CPU-only op and no loop over points. `neighbour_table` is computed once per
stage and reused by every convolution on the same points. It lays the links out as one [26, L] block per side
(tap t = NON_CENTRE[t], L its largest link count, shorter taps padded with a zero row), so `forward` is one
index_select, one bmm and one index_add: per-op overhead, not arithmetic, sets the cost at the small preset,
where a tap has only a few hundred links. Memory stays O(N * C + 26 * L * C), never O(27 * N * C).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .segment import DensifyError, check_batch

CENTRE = 13
FORWARD_OFFSETS = tuple(range(CENTRE + 1, 27))  # the 13 taps k > 13; their mirrors are 26 - k
NON_CENTRE = tuple(k for k in range(27) if k != CENTRE)  # the tap order of NeighbourTable's rows
_KEY_BITS = 63


def offset_of(k: int) -> tuple[int, int, int]:
    """Grid offset (d0, d1, d2) of flat kernel tap k."""
    return k // 9 - 1, (k // 3) % 3 - 1, k % 3 - 1


@dataclass(frozen=True)
class NeighbourTable:
    """Links of the duplicate-aware rule, tap by tap: out[target[t, m]] += W[NON_CENTRE[t]] f[source[t, m]].
    For a forward tap k the targets are query points and the sources the representatives they see; the mirrored
    tap 26 - k holds the same pairs the other way round. Padding entries hold num_points on both sides (a zero
    feature row in, a discarded output row out)."""
    num_points: int
    source: Tensor  # [26, L] int64
    target: Tensor  # [26, L] int64


def _check_coords(grid_coord: Tensor, batch: Tensor, where: str) -> None:
    if not isinstance(grid_coord, Tensor) or grid_coord.dtype != torch.int64 or grid_coord.dim() != 2 \
            or grid_coord.shape[1] != 3:
        raise DensifyError(f"{where}: grid_coord must be an int64 tensor of shape (N, 3)")
    check_batch(batch, grid_coord.shape[0], where)
    if batch.device != grid_coord.device:
        raise DensifyError(f"{where}: batch is on {batch.device}, grid_coord on {grid_coord.device}")


def neighbour_table(grid_coord: Tensor, batch: Tensor) -> NeighbourTable:
    """Representative links of points grid_coord [N, 3] int64 in clouds batch [N] int64 (any integer coordinates;
    only differences matter). Clouds never link to each other."""
    _check_coords(grid_coord, batch, "neighbour_table")
    n, device = grid_coord.shape[0], grid_coord.device
    if n == 0:
        empty = torch.zeros(len(NON_CENTRE), 0, dtype=torch.int64, device=device)
        return NeighbourTable(0, empty, empty)
    # Shift so every neighbour coordinate (-1 .. max + 1) is a non-negative field value: key + delta is then the
    # neighbour's key, with no carry or borrow between fields.
    shifted = grid_coord - grid_coord.min(0).values + 1
    axis_bits = (int(shifted.max()) + 1).bit_length()
    cloud_bits = int(batch.max()).bit_length()
    if 3 * axis_bits + cloud_bits > _KEY_BITS:
        raise DensifyError(f"neighbour_table: grid coordinates span {int(shifted.max()) - 1} cells and cloud ids "
                           f"reach {int(batch.max())}: more than {_KEY_BITS} bits of voxel key; use coarser grid "
                           f"coordinates or fewer clouds per call")
    key = (batch << (3 * axis_bits)) | (shifted[:, 0] << (2 * axis_bits)) | (shifted[:, 1] << axis_bits) \
        | shifted[:, 2]
    sorted_key, perm = torch.sort(key, stable=True)
    first = torch.ones(n, dtype=torch.bool, device=device)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    voxel_key = sorted_key[first]
    voxel_rep = perm[first]  # stable sort: the first point of a run has the lowest index
    links = {}  # tap -> (source, target)
    for k in FORWARD_OFFSETS:
        d0, d1, d2 = offset_of(k)
        wanted = key + ((d0 << (2 * axis_bits)) + (d1 << axis_bits) + d2)
        slot = torch.searchsorted(voxel_key, wanted).clamp_(max=voxel_key.numel() - 1)
        query = torch.nonzero(voxel_key[slot] == wanted).flatten()
        rep = voxel_rep[slot[query]]
        links[k] = (rep, query)
        links[26 - k] = (query, rep)
    counts = torch.tensor([links[k][0].numel() for k in NON_CENTRE], device=device)
    width = int(counts.max())
    # Flat position of every link in the padded [26, width] block: its tap's row, then its rank within the tap.
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(int(counts.sum()), device=device) - torch.repeat_interleave(starts, counts)
    position = torch.repeat_interleave(torch.arange(len(NON_CENTRE), device=device) * width, counts) + rank
    blocks = []
    for side in (0, 1):
        block = torch.full((len(NON_CENTRE) * width,), n, dtype=torch.int64, device=device)
        block[position] = torch.cat([links[k][side] for k in NON_CENTRE])
        blocks.append(block.view(len(NON_CENTRE), width))
    return NeighbourTable(n, *blocks)


def _spconv_module():
    """spconv.pytorch when importable, else None (checked lazily: the import is heavy and CUDA-only)."""
    try:
        import spconv.pytorch as spconv_pytorch
    except ImportError:
        return None
    return spconv_pytorch


class SubmanifoldConv3d(nn.Module):
    """3x3x3 submanifold convolution of per-point features; see the module docstring for the exact rule.

    backend="torch" (default) is this file's implementation on any device. backend="spconv" runs spconv's
    SubMConv3d with this module's weight instead (CUDA tensors and an installed spconv required); it matches the
    torch backend when no two points share a voxel (spconv's GPU build resolves duplicates its own way)."""

    def __init__(self, in_ch: int, out_ch: int, bias: bool = True, backend: str = "torch"):
        super().__init__()
        if backend not in ("torch", "spconv"):
            raise DensifyError(f"SubmanifoldConv3d: backend must be 'torch' or 'spconv', got {backend!r}")
        self.in_ch, self.out_ch, self.backend = int(in_ch), int(out_ch), backend
        self.weight = nn.Parameter(torch.empty(out_ch, 3, 3, 3, in_ch))
        self.bias = nn.Parameter(torch.empty(out_ch)) if bias else None
        self._spconv = {}  # lazily built spconv twin, kept out of the state dict
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(fan_in), fan_in = 27 C_in (nn.Linear's default rule, applied to the full kernel)."""
        bound = 1.0 / math.sqrt(27 * self.in_ch)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.in_ch}, {self.out_ch}, bias={self.bias is not None}, backend={self.backend!r}"

    def forward(self, feats: Tensor, grid_coord: Tensor, batch: Tensor,
                neighbours: NeighbourTable | None = None) -> Tensor:
        """feats [N, C_in] at grid_coord [N, 3] int64 of clouds batch [N] int64 -> [N, C_out].

        `neighbours` (from neighbour_table on the same grid_coord/batch) skips the lookup."""
        if not isinstance(feats, Tensor) or feats.dim() != 2 or feats.shape[1] != self.in_ch:
            got = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise DensifyError(f"SubmanifoldConv3d: feats must have shape (N, {self.in_ch}), got {got}")
        _check_coords(grid_coord, batch, "SubmanifoldConv3d")
        if grid_coord.shape[0] != feats.shape[0]:
            raise DensifyError(f"SubmanifoldConv3d: grid_coord has {grid_coord.shape[0]} rows, feats "
                               f"{feats.shape[0]}")
        if self.backend == "spconv":
            return self._forward_spconv(feats, grid_coord, batch)
        if neighbours is None:
            neighbours = neighbour_table(grid_coord, batch)
        elif not isinstance(neighbours, NeighbourTable) or neighbours.num_points != feats.shape[0]:
            raise DensifyError("SubmanifoldConv3d: neighbours must be the neighbour_table of these "
                               f"{feats.shape[0]} points")
        taps = self.weight.reshape(self.out_ch, 27, self.in_ch)
        if neighbours.source.shape[1] == 0:
            out = feats @ taps[:, CENTRE].t()
        else:
            # Row N of `padded` is zero (the padding links read it) and row N of `out` collects what they write.
            # index_select rather than fancy indexing: its backward is one index_add, not an accumulating
            # index_put. In place: `out` is a fresh matmul result that autograd does not save.
            padded = torch.cat([feats, feats.new_zeros(1, self.in_ch)])
            out = padded @ taps[:, CENTRE].t()
            gathered = padded.index_select(0, neighbours.source.flatten()).view(len(NON_CENTRE), -1, self.in_ch)
            products = torch.bmm(gathered, taps[:, NON_CENTRE].permute(1, 2, 0))
            out = out.index_add_(0, neighbours.target.flatten(), products.flatten(0, 1))[:-1]
        if self.bias is not None:
            out = out + self.bias
        return out

    def _forward_spconv(self, feats: Tensor, grid_coord: Tensor, batch: Tensor) -> Tensor:
        spconv_pytorch = _spconv_module()
        if spconv_pytorch is None or not feats.is_cuda:
            raise DensifyError("SubmanifoldConv3d: backend='spconv' needs spconv installed and CUDA tensors "
                               f"(spconv {'missing' if spconv_pytorch is None else 'found'}, feats on "
                               f"{feats.device}); use backend='torch'")
        if feats.shape[0] == 0:
            return feats.new_zeros(0, self.out_ch)
        if int(grid_coord.min()) < 0:
            raise DensifyError("SubmanifoldConv3d: backend='spconv' needs grid_coord >= 0")
        key = str(feats.device)
        if key not in self._spconv:
            twin = spconv_pytorch.SubMConv3d(self.in_ch, self.out_ch, kernel_size=3, padding=1, bias=False)
            self._spconv[key] = twin.to(feats.device)
        indices = torch.cat([batch[:, None], grid_coord], 1).to(torch.int32)
        shape = (grid_coord.max(0).values + 1).tolist()
        tensor = spconv_pytorch.SparseConvTensor(feats, indices, shape, int(batch.max()) + 1)
        out = torch.func.functional_call(self._spconv[key], {"weight": self.weight}, (tensor,)).features
        if self.bias is not None:
            out = out + self.bias
        return out
