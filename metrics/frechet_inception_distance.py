"""Frechet Inception Distance (Heusel et al. 2017) between real and generated Inception features.

FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)), with the StyleGAN/EG3D conventions: covariances
normalized by n (not n - 1), all real images for `_full` metrics, features in float64.
"""
from __future__ import annotations

import numpy as np

from metrics import metric_utils


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2.

    S1 S2 is similar to the symmetric PSD matrix M = S1^(1/2) S2 S1^(1/2), so its square root's trace is the sum
    of sqrt(eigenvalues of M). Symmetric eigensolvers keep this real and stable where a general sqrtm of the
    (non-symmetric) product can return complex round-off.
    """
    w, v = np.linalg.eigh(sigma1)
    sqrt1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt1 @ sigma2 @ sqrt1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """FID between two Gaussians given as (mean [D], covariance [D, D])."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"FID: mismatched statistics shapes {mu1.shape} {sigma1.shape} vs {mu2.shape} "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    traces = np.trace(sigma1) + np.trace(sigma2)
    value = float(diff @ diff + traces - 2 * trace_sqrt_product(sigma1, sigma2))
    round_off = 1e-9 * max(traces, 1e-30)  # identical statistics give a tiny negative value from eigensolvers
    return 0.0 if -round_off < value < 0 else value


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID of two feature sets [n, D] (covariances normalized by n, as the reference)."""
    s1 = metric_utils.FeatureStats(capture_mean_cov=True)
    s1.append(feats1)
    s2 = metric_utils.FeatureStats(capture_mean_cov=True)
    s2.append(feats2)
    return fid_from_stats(*s1.get_mean_cov(), *s2.get_mean_cov())


def compute_fid(opts: metric_utils.MetricOptions, max_real: int | None, num_gen: int) -> float:
    """FID of opts.G against opts.dataset_kwargs; every rank holds all statistics and returns the same value."""
    mu_real, sigma_real = metric_utils.compute_feature_stats_for_dataset(
        opts, max_items=max_real, capture_mean_cov=True).get_mean_cov()
    mu_gen, sigma_gen = metric_utils.compute_feature_stats_for_generator(
        opts, max_items=num_gen, capture_mean_cov=True).get_mean_cov()
    return fid_from_stats(mu_gen, sigma_gen, mu_real, sigma_real)
