"""Improved precision and recall (Kynkaanniemi et al. 2019) on detector features.

Each set's manifold is the union of balls around its points with radius = distance to the k-th nearest neighbour
(k = nhood_size, the point itself excluded). Precision: fraction of generated points inside the real manifold;
recall: fraction of real points inside the generated manifold. Column blocks of the distance matrix are split
across ranks; partial results are merged exactly (k smallest candidates, logical OR).
Note: the reference uses VGG16 features for pr50k3; gsgan uses the configured detector (Inception by default), so
values are not comparable with published PR numbers unless --detector points at a VGG16 TorchScript.
"""
from __future__ import annotations

import torch

from metrics import metric_utils


def _my_column_blocks(n: int, col_batch: int, num_gpus: int, rank: int) -> list[tuple[int, int]]:
    blocks = [(s, min(s + col_batch, n)) for s in range(0, n, col_batch)]
    return blocks[rank::num_gpus]


def _max_blocks_per_rank(n: int, col_batch: int, num_gpus: int) -> int:
    num_blocks = (n + col_batch - 1) // col_batch
    return (num_blocks + num_gpus - 1) // num_gpus


def manifold_radii(feats: torch.Tensor, nhood_size: int, row_batch: int = 10000, col_batch: int = 10000,
                   num_gpus: int = 1, rank: int = 0) -> torch.Tensor:
    """[n] distance of each point to its nhood_size-th nearest neighbour within feats [n, D]."""
    n, k1 = feats.shape[0], nhood_size + 1
    if n < k1:
        raise ValueError(f"precision/recall: needs more than nhood_size={nhood_size} points, got {n}")
    blocks = _my_column_blocks(n, col_batch, num_gpus, rank)
    width = _max_blocks_per_rank(n, col_batch, num_gpus) * k1
    radii = []
    for r0 in range(0, n, row_batch):
        rows = feats[r0:r0 + row_batch]
        cand = torch.full((rows.shape[0], width), float("inf"), device=feats.device)
        for b, (c0, c1) in enumerate(blocks):
            d = torch.cdist(rows, feats[c0:c1])
            smallest = d.topk(min(k1, d.shape[1]), dim=1, largest=False).values
            cand[:, b * k1:b * k1 + smallest.shape[1]] = smallest
        if num_gpus > 1:
            parts = [torch.empty_like(cand) for _ in range(num_gpus)]
            torch.distributed.all_gather(parts, cand)
            cand = torch.cat(parts, dim=1)
        radii.append(cand.kthvalue(k1, dim=1).values)
    return torch.cat(radii)


def inside_manifold(probe: torch.Tensor, ref: torch.Tensor, ref_radii: torch.Tensor, row_batch: int = 10000,
                    col_batch: int = 10000, num_gpus: int = 1, rank: int = 0) -> torch.Tensor:
    """bool [p]: probe point i lies within ref_radii[j] of some ref point j."""
    blocks = _my_column_blocks(ref.shape[0], col_batch, num_gpus, rank)
    inside = []
    for r0 in range(0, probe.shape[0], row_batch):
        rows = probe[r0:r0 + row_batch]
        hit = torch.zeros(rows.shape[0], dtype=torch.int32, device=probe.device)
        for c0, c1 in blocks:
            hit |= (torch.cdist(rows, ref[c0:c1]) <= ref_radii[c0:c1][None]).any(dim=1).to(torch.int32)
        if num_gpus > 1:
            torch.distributed.all_reduce(hit, op=torch.distributed.ReduceOp.MAX)
        inside.append(hit.bool())
    return torch.cat(inside)


def precision_recall(real: torch.Tensor, gen: torch.Tensor, nhood_size: int = 3, row_batch: int = 10000,
                     col_batch: int = 10000, num_gpus: int = 1, rank: int = 0) -> tuple[float, float]:
    """(precision, recall) of generated features gen [n_g, D] against real features real [n_r, D]."""
    kw = dict(row_batch=row_batch, col_batch=col_batch, num_gpus=num_gpus, rank=rank)
    real_radii = manifold_radii(real, nhood_size, **kw)
    gen_radii = manifold_radii(gen, nhood_size, **kw)
    precision = inside_manifold(gen, real, real_radii, **kw).float().mean().item()
    recall = inside_manifold(real, gen, gen_radii, **kw).float().mean().item()
    return precision, recall


def compute_pr(opts: metric_utils.MetricOptions, max_real: int, num_gen: int, nhood_size: int,
               row_batch: int = 10000, col_batch: int = 10000) -> tuple[float, float]:
    real = metric_utils.compute_feature_stats_for_dataset(opts, max_items=max_real, capture_all=True).get_all()
    gen = metric_utils.compute_feature_stats_for_generator(opts, max_items=num_gen, capture_all=True).get_all()
    real = torch.from_numpy(real).to(opts.device)
    gen = torch.from_numpy(gen).to(opts.device)
    return precision_recall(real, gen, nhood_size, row_batch, col_batch, opts.num_gpus, opts.rank)
