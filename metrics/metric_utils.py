"""Feature statistics of real and generated images: batched, split across ranks, real statistics cached on disk.

Ranks take interleaved shares (rank r gets items r, r + G, r + 2G, ...) and all_gather after every batch, so every
rank ends with the same statistics, in the same item order as a single process. Real-image statistics are cached in
`<cache>/gan-metrics/` under a key made of the dataset's content fingerprint, the dataset options, the detector's
SHA-256, the item count and the statistics options; rank 0 decides whether the cache exists and broadcasts it.
Generated samples are deterministic per (seed, sample index), so the result does not depend on the number of ranks.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dnnlib import atomic_file

from metrics import detector as detector_lib

log = logging.getLogger("gsgan.metrics")
CACHE_VERSION = 1


class MetricError(ValueError):
    """A metric cannot run on the given inputs; the one-line message names the option/file and what is expected."""


@dataclasses.dataclass
class MetricOptions:
    """Everything a metric needs. `notes` collects user-facing remarks (e.g. a small dataset accepted)."""

    G: Any = None                        # generator (e.g. G_ema) on `device`, or None for real-only work
    dataset_kwargs: dict = dataclasses.field(default_factory=dict)  # ImageFolderDataset(**dataset_kwargs)
    num_gpus: int = 1                    # ranks in the (already initialized) process group
    rank: int = 0
    device: Any = "cpu"
    detector: str | None = None          # None = verified default; else a path or URL (see metrics/detector.py)
    cache: bool = True                   # reuse / write cached real-image statistics
    cache_dir: str | None = None         # default: $GSGAN_CACHE_DIR or ~/.cache/gsgan
    progress: bool = True                # tqdm bars on rank 0
    seed: int = 0                        # generated samples: z and camera of sample i depend on (seed, i) only
    allow_small: bool = False            # accept fewer real images than a metric needs (noted in the result)
    batch_size: int = 32                 # images per detector call, per rank
    batch_gen: int = 4                   # images per generator call
    num_workers: int = 0                 # DataLoader workers for real images
    log_notes: bool = True               # also log notes as warnings (rank 0)
    notes: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.device = torch.device(self.device)
        if not 0 <= self.rank < self.num_gpus:
            raise MetricError(f"rank {self.rank} out of range for num_gpus={self.num_gpus}")

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            if self.rank == 0 and self.log_notes:
                log.warning(message)


def get_detector(opts: MetricOptions) -> detector_lib.FeatureDetector:
    return detector_lib.load_detector(opts.detector, device=opts.device, cache_dir=opts.cache_dir)


def open_dataset(opts: MetricOptions):
    from training.dataset import ImageFolderDataset  # deferred: the math parts work without the data stack
    return ImageFolderDataset(**opts.dataset_kwargs)


# ----------------------------------------------------------------------------------------------------------
# Feature statistics


class FeatureStats:
    """Running statistics of features [n, D]: all rows (capture_all) and/or sum and sum of outer products."""

    def __init__(self, capture_all: bool = False, capture_mean_cov: bool = False, max_items: int | None = None):
        self.capture_all = capture_all
        self.capture_mean_cov = capture_mean_cov
        self.max_items = max_items
        self.num_items = 0
        self.num_features = None
        self.all_features = []
        self.raw_mean = None
        self.raw_cov = None

    def is_full(self) -> bool:
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, x) -> None:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"features: expected [n, D], got {list(x.shape)}")
        if self.num_features is None:
            self.num_features = x.shape[1]
            if self.capture_mean_cov:
                self.raw_mean = np.zeros(self.num_features, np.float64)
                self.raw_cov = np.zeros((self.num_features, self.num_features), np.float64)
        elif x.shape[1] != self.num_features:
            raise ValueError(f"features: expected {self.num_features} per item, got {x.shape[1]}")
        if self.max_items is not None:
            x = x[:max(self.max_items - self.num_items, 0)]
        if x.shape[0] == 0:
            return
        self.num_items += x.shape[0]
        if self.capture_all:
            self.all_features.append(x)
        if self.capture_mean_cov:
            x64 = x.astype(np.float64)
            self.raw_mean += x64.sum(axis=0)
            self.raw_cov += x64.T @ x64

    def append_torch(self, x: torch.Tensor, num_gpus: int = 1, rank: int = 0) -> None:
        """Append this rank's rows after gathering all ranks' rows in interleaved order (row j of rank r -> jG+r)."""
        if num_gpus > 1:
            parts = [torch.empty_like(x) for _ in range(num_gpus)]
            torch.distributed.all_gather(parts, x.contiguous())
            x = torch.stack(parts, dim=1).flatten(0, 1)
        self.append(x.detach().cpu().numpy())

    def get_all(self) -> np.ndarray:
        if not self.capture_all:
            raise ValueError("FeatureStats: features were not captured (capture_all=False)")
        if not self.all_features:
            return np.zeros((0, self.num_features or 0), np.float32)
        return np.concatenate(self.all_features)

    def get_mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean [D], covariance [D, D]) in float64, covariance normalized by n as in the reference FID."""
        if not self.capture_mean_cov:
            raise ValueError("FeatureStats: mean/cov were not captured (capture_mean_cov=False)")
        if self.num_items == 0:
            raise ValueError("FeatureStats: no items")
        mean = self.raw_mean / self.num_items
        cov = self.raw_cov / self.num_items - np.outer(mean, mean)
        return mean, cov

    def save(self, path: str) -> None:
        """All-or-nothing .npz write (a concurrent reader never sees a partial cache file)."""
        arrays = dict(num_items=np.int64(self.num_items), num_features=np.int64(self.num_features or 0),
                      capture_all=self.capture_all, capture_mean_cov=self.capture_mean_cov,
                      max_items=np.int64(-1 if self.max_items is None else self.max_items))
        if self.capture_all:
            arrays["all_features"] = self.get_all()
        if self.capture_mean_cov:
            arrays["raw_mean"], arrays["raw_cov"] = self.raw_mean, self.raw_cov
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with atomic_file(path) as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: str) -> "FeatureStats":
        with np.load(path, allow_pickle=False) as data:
            max_items = int(data["max_items"])
            stats = cls(capture_all=bool(data["capture_all"]), capture_mean_cov=bool(data["capture_mean_cov"]),
                        max_items=None if max_items < 0 else max_items)
            stats.num_items = int(data["num_items"])
            stats.num_features = int(data["num_features"]) or None
            if stats.capture_all:
                stats.all_features = [data["all_features"]]
            if stats.capture_mean_cov:
                stats.raw_mean, stats.raw_cov = data["raw_mean"], data["raw_cov"]
        return stats


# ----------------------------------------------------------------------------------------------------------
# Distributed helpers


def broadcast_flag(flag: bool, opts: MetricOptions) -> bool:
    """Rank 0's value of flag, on every rank."""
    if opts.num_gpus == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64, device=opts.device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def rank_share(num_items: int, opts: MetricOptions) -> list[int]:
    """This rank's interleaved items; every rank gets ceil(n / G) items (wrapping), extras are cut after gathering."""
    per_rank = (num_items + opts.num_gpus - 1) // opts.num_gpus
    return [(i * opts.num_gpus + opts.rank) % num_items for i in range(per_rank)]


def progress_bar(opts: MetricOptions, total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="img", disable=not (opts.progress and opts.rank == 0),
                dynamic_ncols=True, leave=False)


def check_real_count(opts: MetricOptions, available: int, required: int, metric: str) -> None:
    """Refuse (or, with allow_small, note) fewer real images than a metric needs."""
    if available >= required:
        return
    message = (f"{metric}: the dataset {opts.dataset_kwargs.get('path')} has {available} images but the metric "
               f"needs at least {required}")
    if not opts.allow_small:
        raise MetricError(f"{message}; use a larger dataset or --allow-small to use all {available} available")
    opts.note(f"{message}; using all {available} (--allow-small): not comparable to published numbers")


# ----------------------------------------------------------------------------------------------------------
# Real images


def dataset_cache_path(opts: MetricOptions, dataset, detector, num_items: int, stats_kwargs: dict) -> str:
    kwargs = {k: v for k, v in sorted(opts.dataset_kwargs.items()) if k != "path"}
    key = dict(version=CACHE_VERSION, fingerprint=dataset.fingerprint(),
               resolution=dataset.resolution,
               dataset_kwargs=kwargs, detector_sha256=detector.sha256, detector_kind=detector.kind,
               num_items=num_items, stats=stats_kwargs)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    cache_dir = opts.cache_dir or detector_lib.default_cache_dir()
    return os.path.join(cache_dir, "gan-metrics", f"{dataset.name}-{digest}.npz")


def compute_feature_stats_for_dataset(opts: MetricOptions, max_items: int | None = None,
                                      **stats_kwargs) -> FeatureStats:
    """Features of the first max_items (None = all) dataset images, cached on disk when opts.cache."""
    dataset = open_dataset(opts)
    detector = get_detector(opts)
    num_items = len(dataset) if max_items is None else min(max_items, len(dataset))
    cache_file = dataset_cache_path(opts, dataset, detector, num_items, stats_kwargs) if opts.cache else None
    if cache_file is not None and broadcast_flag(opts.rank == 0 and os.path.isfile(cache_file), opts):
        return FeatureStats.load(cache_file)

    stats = FeatureStats(max_items=num_items, **stats_kwargs)
    loader = torch.utils.data.DataLoader(dataset, sampler=rank_share(num_items, opts), batch_size=opts.batch_size,
                                         num_workers=opts.num_workers)
    with progress_bar(opts, num_items, "real features") as bar:
        for images, _labels in loader:
            stats.append_torch(detector(images.to(opts.device)), opts.num_gpus, opts.rank)
            bar.update(min(images.shape[0] * opts.num_gpus, num_items - bar.n))
    if cache_file is not None and opts.rank == 0:
        stats.save(cache_file)
    return stats


# ----------------------------------------------------------------------------------------------------------
# Generated images


def sample_inputs(seed: int, indices, z_dim: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z [n, z_dim], c [n, 25]) of samples `indices`: z ~ N(0, I), c a uniformly drawn dataset label."""
    zs, cs = [], []
    for i in indices:
        rng = np.random.default_rng([seed, int(i)])
        zs.append(rng.standard_normal(z_dim))
        cs.append(labels[rng.integers(len(labels))])
    return np.stack(zs).astype(np.float32), np.stack(cs).astype(np.float32)


def dataset_labels(dataset) -> np.ndarray:
    """All labels [n, C] of the dataset items (mirrored ones included when xflip is on)."""
    return np.stack([dataset.get_label(i) for i in range(len(dataset))])


@torch.no_grad()
def generate_images(G, z: torch.Tensor, c: torch.Tensor, batch_gen: int) -> torch.Tensor:
    """uint8 [n,3,H,W] from G(z, c, psi=1): c conditions and renders (no swap, no pose augmentation)."""
    out = []
    for zb, cb in zip(z.split(batch_gen), c.split(batch_gen)):
        images = G(zb, cb, truncation_psi=1)["image"]
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        out.append(detector_lib.to_uint8(images))
    return torch.cat(out)


def compute_feature_stats_for_generator(opts: MetricOptions, max_items: int, **stats_kwargs) -> FeatureStats:
    """Features of max_items generated images (z ~ N(0, I), psi = 1, camera labels drawn from the dataset)."""
    if opts.G is None:
        raise MetricError("metric needs a generator (opts.G is None)")
    detector = get_detector(opts)
    G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    labels = dataset_labels(open_dataset(opts))
    if labels.shape[1] != G.c_dim:
        raise MetricError(f"dataset {opts.dataset_kwargs.get('path')}: labels have {labels.shape[1]} values but "
                          f"the generator expects c_dim={G.c_dim}")
    stats = FeatureStats(max_items=max_items, **stats_kwargs)
    per_rank = (max_items + opts.num_gpus - 1) // opts.num_gpus
    share = [j * opts.num_gpus + opts.rank for j in range(per_rank)]  # samples past max_items are cut when gathered
    with progress_bar(opts, max_items, "generated features") as bar:
        for start in range(0, len(share), opts.batch_size):
            z, c = sample_inputs(opts.seed, share[start:start + opts.batch_size], G.z_dim, labels)
            z, c = torch.from_numpy(z).to(opts.device), torch.from_numpy(c).to(opts.device)
            images = generate_images(G, z, c, opts.batch_gen)
            stats.append_torch(detector(images), opts.num_gpus, opts.rank)
            bar.update(min(images.shape[0] * opts.num_gpus, max_items - bar.n))
    return stats
