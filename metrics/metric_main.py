"""Metric registry, `calc_metric` (used by calc_metrics.py and the training loop) and `report_metric`.

All metrics follow EG3D's `_full` rule: every real image of the dataset (x-flip off, no max_size), generated images
from z ~ N(0, I) with psi = 1 and camera labels drawn uniformly from the dataset labels, used both to condition and to
render (no swap, no pose augmentation).

Names: the registered ones (`list_valid_metrics()`), plus any count through the patterns
  fid<N>[k]_full   FID with N (or N*1000) generated images, e.g. fid1k_full, fid500_full
  kid<N>[k]_full   KID with N (or N*1000) generated images (100 subsets of at most 1000)
  pr<N>k<K>_full   precision/recall with N*1000 generated images and K nearest neighbours, e.g. pr50k3_full
Minimum real images (below it: an error, or a note with allow_small): FID min(N, D + 1) where D is the detector's
feature size (below D + 1 the real covariance is singular); KID min(N, 1000) (the subset size); PR min(N, 200000).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time

import torch

from metrics import frechet_inception_distance, kernel_inception_distance, metric_utils, precision_recall
from metrics.metric_utils import MetricError, MetricOptions

KID_MAX_REAL = 1_000_000
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_MAX_REAL = 200_000

REGISTERED = ("fid50k_full", "fid10k_full", "fid2k_full", "fid1k_full", "fid500_full", "kid50k_full", "kid2k_full",
              "pr50k3_full")
PATTERNS = ("fid<N>[k]_full", "kid<N>[k]_full", "pr<N>k<K>_full")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str            # "fid" | "kid" | "pr"
    num_gen: int
    max_real: int | None
    nhood_size: int = 0

    def min_real(self, feature_dim: int) -> int:
        if self.kind == "fid":
            return min(self.num_gen, feature_dim + 1)
        if self.kind == "kid":
            return min(self.num_gen, KID_SUBSET_SIZE)
        return min(self.num_gen, self.max_real)

    def run(self, opts: MetricOptions) -> dict:
        if self.kind == "fid":
            return {self.name: frechet_inception_distance.compute_fid(opts, self.max_real, self.num_gen)}
        if self.kind == "kid":
            return {self.name: kernel_inception_distance.compute_kid(opts, self.max_real, self.num_gen, KID_SUBSETS,
                                                                     KID_SUBSET_SIZE)}
        precision, recall = precision_recall.compute_pr(opts, self.max_real, self.num_gen, self.nhood_size)
        return {f"{self.name}_precision": precision, f"{self.name}_recall": recall}


def list_valid_metrics() -> list[str]:
    return list(REGISTERED)


def valid_metrics_message() -> str:
    return f"valid metrics: {', '.join(REGISTERED)} (or any count through {', '.join(PATTERNS)})"


def parse_metric(name: str) -> MetricSpec:
    """MetricSpec of a metric name, or MetricError listing the valid names."""
    m = re.fullmatch(r"(fid|kid)([1-9][0-9]*)(k?)_full", name)
    if m:
        num_gen = int(m.group(2)) * (1000 if m.group(3) else 1)
        max_real = None if m.group(1) == "fid" else KID_MAX_REAL
        return MetricSpec(name, m.group(1), num_gen, max_real)
    m = re.fullmatch(r"pr([1-9][0-9]*)k([1-9][0-9]*)_full", name)
    if m:
        return MetricSpec(name, "pr", int(m.group(1)) * 1000, PR_MAX_REAL, nhood_size=int(m.group(2)))
    raise MetricError(f"unknown metric '{name}'; {valid_metrics_message()}")


def is_valid_metric(name: str) -> bool:
    try:
        parse_metric(name)
        return True
    except MetricError:
        return False


def full_dataset_kwargs(dataset_kwargs: dict) -> dict:
    """The `_full` rule: all images, no x-flip, with labels (they are the cameras)."""
    return dict(dataset_kwargs, max_size=None, xflip=False, use_labels=True)


def check_inputs(spec: MetricSpec, opts: MetricOptions) -> int:
    """Fail early (before any feature extraction) on mismatched inputs; returns the number of real images used."""
    dataset = metric_utils.open_dataset(opts)
    G = opts.G
    if G is not None and getattr(G, "img_resolution", dataset.resolution) != dataset.resolution:
        raise MetricError(f"resolution mismatch: the generator renders {G.img_resolution}x{G.img_resolution} but "
                          f"dataset {opts.dataset_kwargs.get('path')} is {dataset.resolution}x{dataset.resolution}")
    if G is not None and getattr(G, "c_dim", dataset.label_dim) != dataset.label_dim:
        raise MetricError(f"dataset {opts.dataset_kwargs.get('path')}: labels have {dataset.label_dim} values but "
                          f"the generator expects c_dim={G.c_dim}")
    available = len(dataset) if spec.max_real is None else min(len(dataset), spec.max_real)
    feature_dim = metric_utils.get_detector(opts).feature_dim
    metric_utils.check_real_count(opts, available, spec.min_real(feature_dim), spec.name)
    return available


def calc_metric(metric: str, G=None, dataset_kwargs: dict | None = None, num_gpus: int = 1, rank: int = 0,
                device="cpu", cache: bool = True, progress: bool = True, detector: str | None = None,
                allow_small: bool = False, seed: int = 0, **options) -> dict:
    """Compute one metric of G; every rank must call it (same arguments) when num_gpus > 1.

    Returns dict(results={name: value, ...}, metric, total_time, total_time_str, num_gpus, num_real_images,
    num_gen_images, notes, inference_dtype): the last is G's feature-network precision ('fp32' / 'bf16'), so a
    metric line of a bf16 run is told from an fp32 one. Extra options go to MetricOptions (cache_dir, batch_size, batch_gen, num_workers).
    """
    spec = parse_metric(metric)
    if not dataset_kwargs or "path" not in dataset_kwargs:
        raise MetricError(f"{metric}: dataset_kwargs must name the dataset path, got {dataset_kwargs!r}")
    if num_gpus > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise MetricError(f"{metric}: num_gpus={num_gpus} needs an initialized torch.distributed process group")
    opts = MetricOptions(G=G, dataset_kwargs=full_dataset_kwargs(dataset_kwargs), num_gpus=num_gpus, rank=rank,
                         device=device, cache=cache, progress=progress, detector=detector, allow_small=allow_small,
                         seed=seed, **options)
    start = time.time()
    num_real = check_inputs(spec, opts)
    results = spec.run(opts)
    total_time = time.time() - start
    return dict(results={k: float(v) for k, v in results.items()}, metric=metric, total_time=total_time,
                total_time_str=format_time(total_time), num_gpus=num_gpus, num_real_images=num_real,
                num_gen_images=spec.num_gen, notes=list(opts.notes),
                inference_dtype=getattr(G, "inference_dtype", "fp32"))


def format_time(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s"


def report_metric(result_dict: dict, run_dir: str | None, snapshot_pkl: str | None = None) -> str | None:
    """Append one JSON line to <run_dir>/metric-<name>.jsonl; returns the line (None when run_dir is None).

    The line goes out in a single O_APPEND write, so concurrent writers (training loop, calc_metrics) never
    interleave or truncate each other's lines.
    """
    metric = result_dict.get("metric")
    if not metric:
        raise ValueError("report_metric: result_dict has no 'metric'")
    record = dict(result_dict, snapshot_pkl=None if snapshot_pkl is None else os.path.basename(snapshot_pkl),
                  timestamp=time.time())
    line = json.dumps(record, sort_keys=False)
    if run_dir is None:
        return line
    path = os.path.join(run_dir, f"metric-{metric}.jsonl")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return line


__all__ = ["calc_metric", "report_metric", "parse_metric", "is_valid_metric", "list_valid_metrics",
           "valid_metrics_message", "MetricSpec", "MetricError", "REGISTERED", "PATTERNS"]
