"""Serialized patch attention: the padding rule, equality with brute-force per-patch attention, permutation
equivariance, small and several clouds, bad inputs."""
import math

import pytest
import torch

from reconstruction.densify.patch_attention import SerializedAttention, patch_partition
from reconstruction.densify.segment import DensifyError
from reconstruction.densify.serialization import serialize


def _bruteforce(attn, feats, order, batch):
    """Per cloud, patches of K consecutive sorted points; a short last patch is the cloud's last K points."""
    c, heads = attn.channels, attn.num_heads
    d = c // heads
    sorted_batch = batch[order]
    clouds = sorted_batch.unique_consecutive()
    k = min(attn.patch_size, min(int((sorted_batch == b).sum()) for b in clouds))
    qkv = attn.qkv(feats).reshape(-1, 3, heads, d)
    out = torch.zeros_like(feats)
    for b in clouds.tolist():
        members = order[sorted_batch == b].tolist()
        for start in range(0, len(members), k):
            patch = members[start:start + k]
            if len(patch) < k:
                patch = members[-k:]
            idx = torch.tensor(patch)
            q, key, v = qkv[idx, 0], qkv[idx, 1], qkv[idx, 2]  # [K, heads, d]
            weights = torch.softmax(torch.einsum("ihd,jhd->hij", q, key) / math.sqrt(d), dim=-1)
            result = torch.einsum("hij,jhd->ihd", weights, v).reshape(len(patch), c)
            fresh = members[start:start + k]  # each point keeps the output of its own (first) patch
            out[torch.tensor(fresh)] = result[[patch.index(p) for p in fresh]]
    return attn.proj(out)


def _clouds(sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coord = torch.rand(sum(sizes), 3, generator=gen)
    batch = torch.cat([torch.full((n,), b) for b, n in enumerate(sizes)])
    perm = torch.randperm(coord.shape[0], generator=gen)
    return coord[perm], batch[perm]


def test_partition_pads_with_the_tail_of_the_preceding_patch():
    batch_sorted = torch.tensor([0] * 10 + [1] * 4)
    part = patch_partition(batch_sorted, 4)
    assert part.patch_size == 4
    assert part.pad_index.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 7, 10, 11, 12, 13]
    assert part.unpad_index.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15]
    # K shrinks to the smallest cloud; exact multiples get no padding.
    part = patch_partition(torch.tensor([3] * 6 + [5] * 3), 48)
    assert part.patch_size == 3 and part.pad_index.tolist() == list(range(9))


@pytest.mark.parametrize("sizes, patch_size", [([150], 48), ([100, 61, 130], 48), ([20, 7], 48), ([5], 48),
                                               ([33, 40], 8)])
def test_equals_bruteforce_patch_attention(sizes, patch_size):
    coord, batch = _clouds(sizes)
    ser = serialize(coord, batch, 0.02)
    attn = SerializedAttention(16, 4, patch_size).double()
    feats = torch.randn(coord.shape[0], 16, dtype=torch.float64)
    for o in range(4):
        out = attn(feats, ser.order[o], ser.inverse[o], batch)
        torch.testing.assert_close(out, _bruteforce(attn, feats, ser.order[o], batch))


def test_permutation_equivariance():
    coord, batch = _clouds([70, 90], seed=1)
    ser = serialize(coord, batch, 0.05)
    attn = SerializedAttention(8, 2, 16).double()
    feats = torch.randn(coord.shape[0], 8, dtype=torch.float64)
    out = attn(feats, ser.order[2], ser.inverse[2], batch)
    perm = torch.randperm(coord.shape[0])
    perm_inv = torch.argsort(perm)
    moved = attn(feats[perm], perm_inv[ser.order[2]], ser.inverse[2][perm], batch[perm])
    torch.testing.assert_close(moved, out[perm])


def test_gradients_reach_every_point_and_reused_partition_matches():
    coord, batch = _clouds([30, 45], seed=2)
    ser = serialize(coord, batch, 0.05)
    attn = SerializedAttention(8, 2, 12)
    feats = torch.randn(coord.shape[0], 8, requires_grad=True)
    part = patch_partition(batch[ser.order[0]], 12)
    out = attn(feats, ser.order[0], ser.inverse[0], batch, part)
    torch.testing.assert_close(out, attn(feats, ser.order[0], ser.inverse[0], batch))
    out.square().sum().backward()
    assert bool((feats.grad.abs().sum(1) > 0).all())


def test_empty_input():
    attn = SerializedAttention(8, 2)
    empty = torch.zeros(0, dtype=torch.int64)
    assert attn(torch.zeros(0, 8), empty, empty, empty).shape == (0, 8)


@pytest.mark.parametrize("field, value, match", [
    ("feats", torch.zeros(4, 6), r"\(N, 8\)"),
    ("order", torch.arange(4, dtype=torch.int32), "order must be"),
    ("inverse", torch.arange(3), "inverse must be"),
    ("batch", torch.tensor([0, 1, 0, 1]), "non-decreasing"),
    ("batch", torch.tensor([0, 0, -1, -1]), ">= 0"),
])
def test_forward_rejects_bad_inputs(field, value, match):
    args = {"feats": torch.zeros(4, 8), "order": torch.arange(4), "inverse": torch.arange(4),
            "batch": torch.zeros(4, dtype=torch.int64)}
    args[field] = value
    with pytest.raises(DensifyError, match=match):
        SerializedAttention(8, 2)(**args)


def test_constructor_and_partition_reject_bad_arguments():
    with pytest.raises(DensifyError, match="divisible"):
        SerializedAttention(10, 3)
    with pytest.raises(DensifyError, match="patch_size"):
        patch_partition(torch.zeros(4, dtype=torch.int64), 0)
    with pytest.raises(DensifyError, match="1-D"):
        patch_partition(torch.zeros(2, 2, dtype=torch.int64), 4)
    other = patch_partition(torch.zeros(3, dtype=torch.int64), 4)
    with pytest.raises(DensifyError, match="partition covers"):
        SerializedAttention(8, 2)(torch.zeros(4, 8), torch.arange(4), torch.arange(4),
                                  torch.zeros(4, dtype=torch.int64), other)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    coord, batch = _clouds([120, 77])
    ser = serialize(coord, batch, 0.02)
    attn = SerializedAttention(32, 4)
    feats = torch.randn(coord.shape[0], 32)
    expected = attn(feats, ser.order[1], ser.inverse[1], batch)
    out = attn.cuda()(feats.cuda(), ser.order[1].cuda(), ser.inverse[1].cuda(), batch.cuda())
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-3, atol=1e-4)
