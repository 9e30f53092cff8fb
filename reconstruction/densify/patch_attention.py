"""Serialized patch attention (PTv3): self-attention inside patches of K consecutive points along a
space-filling-curve order, one set of patches per cloud.

K = min(patch_size, smallest cloud size), so every cloud holds at least one full patch. A cloud whose size n is
not a multiple of K gets a last patch completed with the tail points of its preceding patch (the reference
implementation's non-flash padding): the last patch is then the cloud's last K points, and the outputs of the
repeated copies are dropped. There is no positional term, so attention is exactly permutation-equivariant.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .segment import DensifyError, check_batch, segment_starts


class PatchPartition(NamedTuple):
    """pad_index [P * K]: the sorted position each padded slot reads; unpad_index [N]: the padded slot holding
    sorted position j's own output; patch_size: K."""
    pad_index: Tensor
    unpad_index: Tensor
    patch_size: int


def patch_partition(batch_sorted: Tensor, patch_size: int) -> PatchPartition:
    """Patches of points already sorted along a curve, `batch_sorted` [N] int64 the cloud id of each sorted point
    (clouds contiguous, ids non-decreasing, as a serialization order leaves them)."""
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1:
        raise DensifyError(f"patch_partition: patch_size must be a positive int, got {patch_size!r}")
    if not isinstance(batch_sorted, Tensor) or batch_sorted.dim() != 1:
        raise DensifyError("patch_partition: batch_sorted must be a 1-D int64 tensor of cloud ids")
    n = batch_sorted.shape[0]
    check_batch(batch_sorted, n, "patch_partition")
    device = batch_sorted.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return PatchPartition(empty, empty, 0)
    if bool((batch_sorted[1:] < batch_sorted[:-1]).any()):
        raise DensifyError("patch_partition: batch_sorted must be non-decreasing (points sorted by a "
                           "serialization order, clouds contiguous)")
    counts = torch.unique_consecutive(batch_sorted, return_counts=True)[1]
    k = min(patch_size, int(counts.min()))
    padded = (counts + k - 1) // k * k
    starts, padded_starts = segment_starts(counts), segment_starts(padded)
    total = int(padded.sum())
    clouds = torch.arange(counts.numel(), device=device)
    slot_cloud = torch.repeat_interleave(clouds, padded, output_size=total)
    local = torch.arange(total, device=device) - padded_starts[slot_cloud]
    local = torch.where(local < counts[slot_cloud], local, local - k)
    pad_index = starts[slot_cloud] + local
    point_cloud = torch.repeat_interleave(clouds, counts, output_size=n)
    unpad_index = torch.arange(n, device=device) + (padded_starts - starts)[point_cloud]
    return PatchPartition(pad_index, unpad_index, k)


class SerializedAttention(nn.Module):
    """Multi-head self-attention within serialized patches: qkv Linear(C, 3C) (channels laid out as [3, heads,
    head_dim], the reference layout), F.scaled_dot_product_attention per patch, proj Linear(C, C)."""

    def __init__(self, channels: int, num_heads: int, patch_size: int = 48, attn_dropout: float = 0.0):
        super().__init__()
        if channels % num_heads:
            raise DensifyError(f"SerializedAttention: channels ({channels}) must be divisible by num_heads "
                               f"({num_heads})")
        if patch_size < 1:
            raise DensifyError(f"SerializedAttention: patch_size must be >= 1, got {patch_size}")
        self.channels, self.num_heads, self.patch_size = int(channels), int(num_heads), int(patch_size)
        self.attn_dropout = float(attn_dropout)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, heads={self.num_heads}, patch_size={self.patch_size}"

    def forward(self, feats: Tensor, order: Tensor, inverse: Tensor, batch: Tensor,
                partition: PatchPartition | None = None) -> Tensor:
        """feats [N, C] -> [N, C], attending within patches of `order` [N] (inverse [N] its inverse
        permutation; batch [N] the cloud id of each point). `partition` (patch_partition(batch[order],
        patch_size)) may be passed to reuse it across blocks sharing an order."""
        if not isinstance(feats, Tensor) or feats.dim() != 2 or feats.shape[1] != self.channels:
            got = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise DensifyError(f"SerializedAttention: feats must have shape (N, {self.channels}), got {got}")
        n = feats.shape[0]
        for name, value in (("order", order), ("inverse", inverse)):
            if not isinstance(value, Tensor) or value.dtype != torch.int64 or value.shape != (n,):
                raise DensifyError(f"SerializedAttention: {name} must be an int64 tensor of shape ({n},)")
        check_batch(batch, n, "SerializedAttention")
        if n == 0:
            return self.proj(feats)
        if partition is None:
            partition = patch_partition(batch[order], self.patch_size)
        elif partition.unpad_index.shape != (n,):
            raise DensifyError(f"SerializedAttention: partition covers {partition.unpad_index.shape[0]} points, "
                               f"feats has {n}")
        k, heads = partition.patch_size, self.num_heads
        qkv = self.qkv(feats)[order[partition.pad_index]]
        q, key, value = qkv.reshape(-1, k, 3, heads, self.channels // heads).permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, key, value, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(-1, self.channels)
        return self.proj(out[partition.unpad_index[inverse]])
