"""What bf16 feature networks (G.inference_dtype = 'bf16', --dtype bf16) change: Gaussians, speed and FID.

    python bench/precision.py [--config ffhq-256] [--seeds 2] [--fid-config small-64] [--fid-samples 500]
                              [--threads 1]

In one process, with the config's generator at seed-0 weights (bench/generator.py's configs):
  deviation  generate_scene in fp32 and in bf16 for --seeds seeds (same ws): max / mean |bf16 - fp32| of the
             foreground Gaussians' means (world units), scales (relative), opacities and RGB colours (degree-0
             colour, 0..1), and of the frontal images rendered from both; the background and the mapping are fp32
             in both, so they are left out;
  speed      generate_scene per sample in fp32 and bf16, median CPU and wall time of --repeats calls;
  FID        FID between --fid-samples fp32 and bf16 images of --fid-config (same z, ffhq trajectory cameras),
             next to the FID between two fp32 sets of other seeds (the sampling noise at that size); 0 skips it.
bf16 is forced (GSGAN_FORCE_BF16=1) where the CPU has no native bf16, which is recorded: such machines measure
the deviation, not the speed bf16 would have. Results go to bench/results/precision-<time>.json with the load.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

from _results import REPO_ROOT, git_commit, write_results  # noqa: E402  (bench/ is the script's directory)
from generator import CONFIGS, frontal_labels  # noqa: E402

DTYPES = ("fp32", "bf16")


def _stats(a, b) -> dict:
    difference = (a - b).abs().flatten()
    return dict(max=float(difference.max()), mean=float(difference.mean()))


def gaussian_deviation(fp32, bf16, foreground: int) -> dict:
    """Max / mean |bf16 - fp32| of the first `foreground` Gaussians (the point generator's), in the units a user
    sees: means in world units, scales relative to fp32, opacity, RGB colour of the degree-0 term."""
    from splatting.gaussians import SH_C0

    a, b = (g.map(lambda t: t[:, :foreground]) for g in (bf16, fp32))
    return dict(means=_stats(a.means, b.means),
                scales_relative=_stats(a.scales() / b.scales(), 1.0),
                opacity=_stats(a.opacities(), b.opacities()),
                color_rgb=_stats(SH_C0 * a.sh[:, :, 0], SH_C0 * b.sh[:, :, 0]))


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), out


def measure_deviation_and_speed(config: str, seeds: int, repeats: int) -> dict:
    import torch

    from training import video_utils as vu
    from training.generator import GSGenerator

    torch.manual_seed(0)
    G = GSGenerator(**CONFIGS[config]["G"]).eval().requires_grad_(False)
    ws = vu.compute_ws(G, list(range(seeds)), vu.CAMERA_PRESETS["ffhq"])
    labels = frontal_labels(seeds, "cpu")
    scenes, rows = {}, {}
    with torch.no_grad():
        for dtype in DTYPES:
            wall, cpu, scenes[dtype] = _timed(lambda: G.generate_scene(ws, dtype=dtype), repeats)
            rows[dtype] = dict(wall_ms_per_sample=1e3 * wall / seeds, cpu_ms_per_sample=1e3 * cpu / seeds)
        images = {dtype: G.render_scene(scenes[dtype], labels)["image"] * 0.5 + 0.5 for dtype in DTYPES}
    foreground = G.gaussian_counts()["foreground"]
    return dict(config=config, seeds=seeds, foreground_gaussians=foreground, speed=rows,
                bf16_over_fp32_cpu=rows["bf16"]["cpu_ms_per_sample"] / rows["fp32"]["cpu_ms_per_sample"],
                deviation=dict(gaussian_deviation(scenes["fp32"].gaussians, scenes["bf16"].gaussians, foreground),
                               image_frontal=_stats(images["bf16"], images["fp32"])))


def measure_fid(config: str, samples: int, batch: int = 16) -> dict:
    """FID(fp32, bf16) of the same z and cameras, and FID(fp32, fp32 of the next `samples` seeds)."""
    import torch

    from metrics.detector import load_detector, to_uint8
    from metrics.frechet_inception_distance import fid_from_features
    from training import video_utils as vu
    from training.generator import GSGenerator

    torch.manual_seed(0)
    G = GSGenerator(**CONFIGS[config]["G"]).eval().requires_grad_(False)
    detector = load_detector()
    labels = vu.trajectory_labels("ffhq", samples, vu.CAMERA_PRESETS["ffhq"])
    z = torch.randn(2 * samples, G.z_dim, generator=torch.Generator().manual_seed(0))
    c = torch.cat([labels, labels])

    def features(dtype: str, part: slice):
        out = []
        with torch.no_grad():
            for zb, cb in zip(z[part].split(batch), c[part].split(batch)):
                out.append(detector(to_uint8(G(zb, cb, dtype=dtype)["image"])))
        return torch.cat(out).numpy().astype("float64")

    first, second = slice(0, samples), slice(samples, 2 * samples)
    start = time.perf_counter()
    fp32_a, bf16_a, fp32_b = features("fp32", first), features("bf16", first), features("fp32", second)
    return dict(config=config, samples=samples, fid_fp32_vs_bf16=fid_from_features(fp32_a, bf16_a),
                fid_fp32_vs_other_fp32_seeds=fid_from_features(fp32_a, fp32_b),
                seconds=time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ffhq-256", choices=sorted(CONFIGS), help="deviation and speed")
    parser.add_argument("--seeds", type=int, default=2, help="samples of the deviation / speed measurement")
    parser.add_argument("--repeats", type=int, default=2, help="timed generate_scene calls per dtype")
    parser.add_argument("--fid-config", default="small-64", choices=sorted(CONFIGS))
    parser.add_argument("--fid-samples", type=int, default=500, help="images per set (0: no FID)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench", "results"), help="results directory")
    args = parser.parse_args(argv)
    if min(args.seeds, args.repeats, args.threads) < 1 or args.fid_samples < 0 or 0 < args.fid_samples < 2:
        parser.error("--seeds, --repeats and --threads must be >= 1, --fid-samples 0 or >= 2")
    import torch

    from training import precision

    torch.set_num_threads(args.threads)
    native = precision.native_bf16("cpu")
    if not native:
        os.environ[precision.FORCE_ENV] = "1"
        print("note: this CPU has no native bf16: bf16 is emulated (forced), so its speed here is not what it "
              "would be on a CPU with AVX-512 BF16 / AMX", file=sys.stderr)
    load_start = list(os.getloadavg())
    result = measure_deviation_and_speed(args.config, args.seeds, args.repeats)
    speed = result["speed"]
    print(f"{args.config}, {args.seeds} seed(s), {result['foreground_gaussians']:,} foreground Gaussians, "
          f"{args.threads} thread(s):")
    for dtype in DTYPES:
        print(f"  {dtype}: generate_scene {speed[dtype]['cpu_ms_per_sample']:.0f} ms CPU, "
              f"{speed[dtype]['wall_ms_per_sample']:.0f} ms wall per sample")
    print(f"  bf16 / fp32 CPU time {result['bf16_over_fp32_cpu']:.2f}")
    for name, value in result["deviation"].items():
        print(f"  |bf16 - fp32| {name:<16} max {value['max']:.2e}  mean {value['mean']:.2e}")
    fid = None
    if args.fid_samples:
        fid = measure_fid(args.fid_config, args.fid_samples)
        print(f"{args.fid_config}: FID(fp32, bf16) {fid['fid_fp32_vs_bf16']:.3f} vs FID(fp32, fp32 other seeds) "
              f"{fid['fid_fp32_vs_other_fp32_seeds']:.3f} at {args.fid_samples} images ({fid['seconds']:.0f} s)")
    load_end = list(os.getloadavg())
    print(f"load average at start {load_start}, at end {load_end}")
    payload = dict(benchmark="precision", git_commit=git_commit(), torch_version=torch.__version__,
                   python=platform.python_version(), cpu_count=os.cpu_count(), threads=args.threads,
                   native_bf16=native, bf16_forced=not native, load_average_start=load_start,
                   load_average_end=load_end, deviation_and_speed=result, fid=fid)
    print(f"wrote {write_results('precision', payload, args.out)}")


if __name__ == "__main__":
    main()
