"""Cost per view of rendering one generated scene for many cameras (the video path), before and after a change.

    python bench/rerender.py [--config ffhq-512] [--frames 8] [--rounds 2] [--threads 2] [--before DIR]

Per checkout, in fresh worker processes (alternating current / before `--rounds` times), for one seed of the
config's generator (seed-0 weights):
  video     training.video_utils._frame_outputs over --frames frames of the ffhq trajectory with one keyframe:
            everything gen_videos does per frame except encoding (generation included), divided by the frames;
  render    splatting.render of the generated Gaussians, one camera per call (the plain re-render of a cached
            scene, the floor of what a video frame can cost without a faster rasterizer), per view;
  batched   the same --frames cameras in one render() call (cameras [1, C]: one projection and one rasterizer
            call for all of them), per view;
  split     where one view's time goes: splatting.projection.project alone and the backend's rasterize alone
            (binning, depth sort and compositing) on the projected Gaussians, one camera per call, per view;
            with the Gaussians that survive culling and the (tile, Gaussian) pairs the cpu backend composites.
Reported: median wall and CPU time per view (time.process_time, all threads), peak memory above the weights,
the before/current ratios, and the machine's load average at the start and the end. Results go to
bench/results/rerender-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "small-64": dict(img_resolution=64, num_points=64, res_end=32, channel_max=128),
    "ffhq-256": dict(img_resolution=256),
    "ffhq-512": dict(img_resolution=512, res_end=256),
}


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def worker(config: str, frames: int) -> dict:
    import torch

    from splatting import Cameras, render
    from training import video_utils as vu
    from training.generator import GSGenerator

    torch.manual_seed(0)
    G = GSGenerator(**CONFIGS[config]).eval()
    preset = vu.CAMERA_PRESETS["ffhq"]
    keyframes = vu.cell_keyframes(vu.compute_ws(G, [0], preset), 1, 1)
    labels = vu.trajectory_labels("ffhq", frames, preset)
    res = G.neural_rendering_resolution
    with torch.no_grad():
        gaussians = G.synthesis(keyframes[:, 0], labels[:1])["gaussians"]  # also warms up the rasterizer
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def video():
        for _ in vu._frame_outputs(G, keyframes, labels, None, None):
            pass

    def render_each():
        with torch.no_grad():
            for t in range(frames):
                render(gaussians, Cameras.from_eg3d_labels(labels[t:t + 1], res, res, near=G.near_plane),
                       backend=G.backend)

    def render_batched():
        with torch.no_grad():
            render(gaussians, Cameras.from_eg3d_labels(labels[None], res, res, near=G.near_plane), backend=G.backend)

    video_wall, video_cpu = _timed(video)
    render_wall, render_cpu = _timed(render_each)
    batched_wall, batched_cpu = _timed(render_batched)
    per_view = lambda seconds: 1e3 * seconds / frames  # noqa: E731
    return dict(config=config, frames=frames, resolution=res, threads=torch.get_num_threads(),
                num_gaussians=gaussians.num_gaussians,
                video_wall_ms=per_view(video_wall), video_cpu_ms=per_view(video_cpu),
                render_wall_ms=per_view(render_wall), render_cpu_ms=per_view(render_cpu),
                batched_wall_ms=per_view(batched_wall), batched_cpu_ms=per_view(batched_cpu),
                **_split(gaussians, labels, res, G.near_plane, G.backend),
                peak_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024,
                package=os.path.dirname(sys.modules["training"].__file__))


def _split(gaussians, labels, res: int, near: float, backend: str) -> dict:
    """Per view: projection alone, the backend's rasterize alone, visible Gaussians, composited pairs."""
    import torch

    from splatting import Cameras
    from splatting.backends import get_backend
    from splatting.projection import project

    module = get_backend(backend, gaussians.device)
    frames = labels.shape[0]
    cameras = [Cameras.from_eg3d_labels(labels[t:t + 1], res, res, near=near) for t in range(frames)]
    with torch.no_grad():
        project_wall, project_cpu = _timed(lambda: [project(gaussians, cam) for cam in cameras])
        inputs = []
        for cam in cameras:
            p = project(gaussians, cam)
            feats = torch.cat([p.colors, p.depths[..., None]], dim=-1).contiguous()
            inputs.append((p.means2d.contiguous(), p.conics.contiguous(), feats, p.opacities.contiguous(),
                           p.depths.contiguous(), p.radii.contiguous()))
        raster_wall, raster_cpu = _timed(lambda: [module.rasterize(*x, res, res) for x in inputs])
        visible = sum(int((x[5] > 0).sum()) for x in inputs) / frames
        pairs = None
        if hasattr(module, "load"):  # the cpu backend's extension returns its (tile, Gaussian) list
            try:
                pairs = sum(int(module.load().forward(*x, res, res, 1)[5].numel()) for x in inputs) / frames
            except (AttributeError, RuntimeError, TypeError, IndexError):
                pairs = None
    return dict(project_wall_ms=1e3 * project_wall / frames, project_cpu_ms=1e3 * project_cpu / frames,
                rasterize_wall_ms=1e3 * raster_wall / frames, rasterize_cpu_ms=1e3 * raster_cpu / frames,
                visible_gaussians=visible, tile_pairs=pairs)


def _run_worker(args, code: str | None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--config", args.config,
               "--frames", str(args.frames)]
    if code is not None:
        command += ["--code", code]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    label = "current" if code is None else "before"
    if proc.returncode != 0:
        return dict(code=label, error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), code=label)


KEYS = ("video_wall_ms", "video_cpu_ms", "render_wall_ms", "render_cpu_ms", "batched_wall_ms", "batched_cpu_ms",
        "project_cpu_ms", "rasterize_cpu_ms", "peak_mb")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ffhq-512", choices=sorted(CONFIGS))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--before", default=None, metavar="DIR", help="another gsgan checkout, measured alongside")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench", "results"), help="results directory")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--code", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.code) if args.code is not None else REPO_ROOT)
    if args.worker:
        print(json.dumps(worker(args.config, args.frames)))
        return
    if min(args.frames, args.rounds, args.threads) < 1:
        parser.error("--frames, --rounds and --threads must be >= 1")
    if args.before is not None and not os.path.isfile(os.path.join(args.before, "training", "video_utils.py")):
        parser.error(f"--before: {args.before!r} is not a gsgan checkout (no training/video_utils.py in it)")
    sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
    from _results import git_commit, write_results

    codes = [None] if args.before is None else [None, os.path.abspath(args.before)]
    load_start = list(os.getloadavg())
    runs = {code: [] for code in codes}
    for round_index in range(args.rounds):
        for code in codes:
            print(f"{'current' if code is None else 'before'} round {round_index + 1}/{args.rounds}...",
                  file=sys.stderr, flush=True)
            runs[code].append(_run_worker(args, code))
    load_end = list(os.getloadavg())
    rows = []
    for code in codes:
        ok = [r for r in runs[code] if "error" not in r]
        if not ok:
            rows.append(runs[code][0])
            continue
        rows.append(dict(ok[0], **{k: statistics.median(r[k] for r in ok) for k in KEYS}, rounds=len(ok)))
    print(f"{args.config}, {args.frames} frames, {args.threads} threads; ms per view (median of rounds)")
    print(f"{'code':<8} | {'video wall':>10} {'video cpu':>10} | {'render wall':>11} {'render cpu':>10} | "
          f"{'batched wall':>12} {'batched cpu':>11} | {'project cpu':>11} {'raster cpu':>10} | peak MB")
    for r in rows:
        if "error" in r:
            print(f"{r['code']:<8} | error: {r['error'][:80]}")
            continue
        print(f"{r['code']:<8} | {r['video_wall_ms']:10.1f} {r['video_cpu_ms']:10.1f} | {r['render_wall_ms']:11.1f} "
              f"{r['render_cpu_ms']:10.1f} | {r['batched_wall_ms']:12.1f} {r['batched_cpu_ms']:11.1f} | "
              f"{r['project_cpu_ms']:11.1f} {r['rasterize_cpu_ms']:10.1f} | {r['peak_mb']:7.0f}")
    for r in rows:
        if "error" not in r:
            pairs = "n/a" if r["tile_pairs"] is None else f"{r['tile_pairs']:,.0f}"
            print(f"{r['code']:<8} per view: {r['visible_gaussians']:,.0f} of {r['num_gaussians']:,} Gaussians "
                  f"visible, {pairs} (tile, Gaussian) pairs, {r['resolution']}^2 px; rasterize "
                  f"{1e6 * r['rasterize_cpu_ms'] / r['visible_gaussians']:.0f} ns CPU per visible Gaussian")
    ratios = {}
    if len(rows) == 2 and all("error" not in r for r in rows):
        now, before = rows
        ratios = {k: now[k] / before[k] for k in KEYS}
        print("current / before: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
        print(f"current video per view / before plain re-render per view (cpu): "
              f"{now['video_cpu_ms'] / before['render_cpu_ms']:.2f}")
    print(f"load average at start {load_start}, at end {load_end}")
    import torch

    payload = dict(benchmark="rerender", git_commit=git_commit(), torch_version=torch.__version__,
                   python=platform.python_version(), cpu_count=os.cpu_count(), config=args.config,
                   frames=args.frames, threads=args.threads, rounds=args.rounds, before=args.before,
                   load_average_start=load_start, load_average_end=load_end, results=rows,
                   current_over_before=ratios)
    print(f"wrote {write_results('rerender', payload, args.out)}")


if __name__ == "__main__":
    main()
