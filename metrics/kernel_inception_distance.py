"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3.

As in the reference, the estimate is averaged over `num_subsets` random subsets of m = min(n_real, n_gen,
max_subset_size) real and generated features each (drawn without replacement).
"""
from __future__ import annotations

import numpy as np

from metrics import metric_utils


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[n, m] matrix of (x_i . y_j / D + 1)^3."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples [m, D]: within-sample kernel means exclude the diagonal."""
    m = x.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def subset_indices(n_real: int, n_gen: int, num_subsets: int, max_subset_size: int, seed: int = 0):
    """[(gen_idx [m], real_idx [m])] per subset, drawn without replacement from a seeded generator."""
    m = min(n_real, n_gen, max_subset_size)
    rng = np.random.default_rng(seed)
    return [(rng.choice(n_gen, m, replace=False), rng.choice(n_real, m, replace=False)) for _ in range(num_subsets)]


def kid_from_features(real: np.ndarray, gen: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
                      seed: int = 0) -> float:
    """Mean unbiased MMD^2 over random subsets of real [n_r, D] and generated [n_g, D] features."""
    real, gen = np.asarray(real, np.float64), np.asarray(gen, np.float64)
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise ValueError(f"KID: expected features [n, D] with equal D, got {list(real.shape)} and {list(gen.shape)}")
    if min(real.shape[0], gen.shape[0], max_subset_size) < 2:
        raise ValueError("KID: needs at least 2 real and 2 generated features")
    subsets = subset_indices(real.shape[0], gen.shape[0], num_subsets, max_subset_size, seed)
    return float(np.mean([mmd2_unbiased(gen[g], real[r]) for g, r in subsets]))


def compute_kid(opts: metric_utils.MetricOptions, max_real: int, num_gen: int, num_subsets: int,
                max_subset_size: int) -> float:
    """KID of opts.G against the dataset; every rank returns the same value."""
    real = metric_utils.compute_feature_stats_for_dataset(opts, max_items=max_real, capture_all=True).get_all()
    gen = metric_utils.compute_feature_stats_for_generator(opts, max_items=num_gen, capture_all=True).get_all()
    return kid_from_features(real, gen, num_subsets, max_subset_size, seed=opts.seed)
