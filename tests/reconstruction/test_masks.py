"""Top-ratio masks and the per-cloud helpers: exact counts, tie rule, straight-through gradients, bad inputs."""
import math
from fractions import Fraction

import pytest
import torch

from reconstruction.densify.masks import keep_counts, top_ratio_mask
from reconstruction.densify.segment import (DensifyError, bit_length, group_by_segment, segment_rank,
                                            segment_softmax)


def _clouds(sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = torch.cat([torch.full((n,), b) for b, n in enumerate(sizes)])
    batch = batch[torch.randperm(batch.numel(), generator=gen)]
    return torch.randn(batch.numel(), generator=gen, dtype=torch.float64), batch


@pytest.mark.parametrize("ratio", [0.0, 0.07, 0.1, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.99, 1.0])
def test_keeps_exactly_ceil_ratio_n_highest_per_cloud(ratio):
    sizes = [1, 2, 7, 10, 30, 64, 100]
    scores, batch = _clouds(sizes)
    mask = top_ratio_mask(scores, batch, ratio)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    exact = Fraction(str(ratio)) if ratio != 1 / 3 else Fraction(1, 3)
    for b, n in enumerate(sizes):
        member = batch == b
        kept = int(mask[member].sum())
        assert kept == math.ceil(exact * n)
        if 0 < kept < n:
            assert scores[member][mask[member] == 1].min() > scores[member][mask[member] == 0].max()


def test_ratio_one_keeps_all_and_cloud_ids_may_skip():
    scores, batch = _clouds([5, 9])
    assert bool((top_ratio_mask(scores, batch * 3, 1.0) == 1).all())


def test_ties_go_to_the_lower_index_and_repeat_exactly():
    scores = torch.tensor([1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 0.0])
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    mask = top_ratio_mask(scores, batch, 0.5)
    assert mask.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert torch.equal(top_ratio_mask(scores, batch, 0.5), mask)


@pytest.mark.parametrize("soft", ["softmax", "sigmoid"])
def test_gradient_is_the_soft_scores_gradient(soft):
    scores, batch = _clouds([6, 11, 3], seed=1)
    weights = torch.randn(scores.numel(), dtype=torch.float64)
    a = scores.clone().requires_grad_()
    (top_ratio_mask(a, batch, 0.4, soft) * weights).sum().backward()
    b = scores.clone().requires_grad_()
    if soft == "sigmoid":
        soft_value = torch.sigmoid(b)
    else:  # per-cloud softmax written out cloud by cloud
        soft_value = torch.zeros_like(b)
        for cloud in range(3):
            member = batch == cloud
            soft_value = soft_value.masked_scatter(member, torch.softmax(b[member], 0))
    (soft_value * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert bool((a.grad != 0).any())


def test_segment_softmax_matches_per_cloud_softmax_and_survives_large_scores():
    scores, batch = _clouds([4, 8, 1], seed=2)
    scores = scores * 300
    result = segment_softmax(scores, batch)
    for cloud in range(3):
        member = batch == cloud
        torch.testing.assert_close(result[member], torch.softmax(scores[member], 0))
    assert bool(torch.isfinite(result).all())


def test_segment_rank_and_grouping():
    values = torch.tensor([0.5, 3.0, 3.0, -1.0, 2.0, 2.0])
    segment = torch.tensor([1, 0, 1, 1, 0, 0])
    assert group_by_segment(values, segment).tolist() == [1, 4, 5, 2, 0, 3]
    assert segment_rank(values, segment).tolist() == [1, 0, 0, 2, 1, 2]
    assert segment_rank(values, segment, descending=False).tolist() == [1, 2, 2, 0, 0, 1]
    assert bit_length(torch.tensor([0, 1, 2, 3, 4, 2**40, 2**62])).tolist() == [0, 1, 2, 2, 3, 41, 63]


def test_keep_counts_of_decimal_ratios():
    counts = torch.tensor([10, 30, 100, 7, 0])
    assert keep_counts(counts, 0.1).tolist() == [1, 3, 10, 1, 0]
    assert keep_counts(counts, 0.3).tolist() == [3, 9, 30, 3, 0]
    assert 0.07 * 100 > 7  # stored a hair above 7/100: a plain ceil would keep 8
    assert keep_counts(counts, 0.07).tolist() == [1, 3, 7, 1, 0]


def test_empty_input():
    scores = torch.zeros(0, requires_grad=True)
    assert top_ratio_mask(scores, torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)


@pytest.mark.parametrize("scores, batch, ratio, soft, match", [
    (torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), 0.5, "softmax", "scores must be"),
    (torch.zeros(3, 1), torch.zeros(3, dtype=torch.int64), 0.5, "softmax", "scores must be"),
    (torch.zeros(3), torch.zeros(2, dtype=torch.int64), 0.5, "softmax", "batch must be"),
    (torch.zeros(3), torch.zeros(3, dtype=torch.int64), 1.5, "softmax", "ratio"),
    (torch.zeros(3), torch.zeros(3, dtype=torch.int64), float("nan"), "softmax", "ratio"),
    (torch.zeros(3), torch.zeros(3, dtype=torch.int64), "0.5", "softmax", "ratio"),
    (torch.zeros(3), torch.zeros(3, dtype=torch.int64), 0.5, "tanh", "soft must be"),
])
def test_rejects_bad_inputs(scores, batch, ratio, soft, match):
    with pytest.raises(DensifyError, match=match):
        top_ratio_mask(scores, batch, ratio, soft)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    scores, batch = _clouds([40, 13, 77], seed=3)
    scores[::5] = 0.25  # ties
    assert torch.equal(top_ratio_mask(scores.cuda(), batch.cuda(), 0.3).cpu(), top_ratio_mask(scores, batch, 0.3))
