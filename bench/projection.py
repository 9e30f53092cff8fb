"""CPU cost breakdown of render(): projection vs rasterize step vs the rest, forward and forward+backward.

    python bench/projection.py [--cases 64,64-11k,128,256] [--threads 1,2] [--repeats 5] [--profile]

Uses the GAN-like scenes of bench/rasterizer.py on the 'cpu' backend. Per case and thread count it reports
ms per image (median wall time) for: render() forward, render() forward+backward, project() forward and
forward+backward (loss on every projected output), and rasterize alone forward+backward (projected inputs as
leaves). --profile also prints the top torch.profiler ops of one render() forward+backward. Results go to
bench/results/projection-<time>.json together with the load average (the machine may be shared).

On a shared, oversubscribed machine run with OMP_WAIT_POLICY=PASSIVE (set before Python starts): with libgomp's
default spin-waiting, every one of the many small multi-threaded ops waits for descheduled workers, and 2-thread
render() timings come out 10-30x slower than 1-thread ones (measured on the 2-core dev box under load ~3.5).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from _results import git_commit, write_results  # noqa: E402  (bench/ is the script's directory)

from bench.rasterizer import gan_like_scene  # noqa: E402

# name -> (resolution, Gaussians, batch)
CASES = {
    "64": (64, 4096, 8),
    "64-11k": (64, 11008, 8),
    "128": (128, 21760, 8),
    "256": (256, 87296, 4),
}


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def measure(case: str, threads: int, repeats: int, profile: bool) -> dict:
    import torch

    from splatting import render
    from splatting.backends import get_backend
    from splatting.projection import project

    torch.set_num_threads(threads)
    resolution, n, batch = CASES[case]
    module = get_backend("cpu", "cpu")
    gaussians, cameras = gan_like_scene(resolution, n, batch, "cpu")
    params = [gaussians.means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits, gaussians.sh]
    for t in params:
        t.requires_grad_(True)
    with torch.no_grad():
        proj = project(gaussians, cameras)
    feats = torch.cat([proj.colors, proj.depths[..., None]], dim=-1).contiguous()
    leaves = [t.contiguous().clone().requires_grad_(True) for t in (proj.means2d, proj.conics, feats, proj.opacities)]
    fixed = [proj.depths.contiguous(), proj.radii.contiguous()]
    weights = torch.randn(batch, resolution, resolution, 4)

    def render_fwd():
        with torch.no_grad():
            render(gaussians, cameras, backend="cpu")

    def render_fwd_bwd():
        out = render(gaussians, cameras, backend="cpu")
        (out.color.square().mean() + out.alpha.mean() + out.depth.mean()).backward()

    def project_fwd():
        with torch.no_grad():
            project(gaussians, cameras)

    def project_fwd_bwd():
        p = project(gaussians, cameras)
        (p.means2d.sum() + p.conics.sum() + p.depths.sum() + p.opacities.sum() + p.colors.sum()).backward()

    def raster_fwd_bwd():
        out, alpha = module.rasterize(*leaves, *fixed, resolution, resolution)
        ((out * weights).sum() + alpha.sum()).backward()

    row = dict(case=case, resolution=resolution, gaussians=n, batch=batch, threads=threads)
    for key, fn in (("render_fwd", render_fwd), ("render_fwd_bwd", render_fwd_bwd), ("project_fwd", project_fwd),
                    ("project_fwd_bwd", project_fwd_bwd), ("raster_fwd_bwd", raster_fwd_bwd)):
        row[f"{key}_ms_per_image"] = _median_ms(fn, repeats) / batch
    row["render_over_raster_fwd_bwd"] = row["render_fwd_bwd_ms_per_image"] / row["raster_fwd_bwd_ms_per_image"]
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            render_fwd_bwd()
        print(f"== case {case}, {threads} thread(s): render() forward+backward", file=sys.stderr)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    return row


def _table(rows: list[dict]) -> str:
    head = (f"{'case':>7} {'thr':>3} | {'render fwd':>10} {'render f+b':>10} | {'proj fwd':>9} {'proj f+b':>9} | "
            f"{'rast f+b':>9} | render/rast f+b")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['case']:>7} {r['threads']:>3} | {r['render_fwd_ms_per_image']:10.2f} "
                     f"{r['render_fwd_bwd_ms_per_image']:10.2f} | {r['project_fwd_ms_per_image']:9.2f} "
                     f"{r['project_fwd_bwd_ms_per_image']:9.2f} | {r['raster_fwd_bwd_ms_per_image']:9.2f} | "
                     f"{r['render_over_raster_fwd_bwd']:.2f}x")
    lines.append("(ms per image, medians of wall time)")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="64,64-11k,128,256", help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables (stderr)")
    parser.add_argument("--label", default="", help="free-form note stored in the JSON (e.g. 'before')")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    for c in cases:
        if c not in CASES:
            parser.error(f"--cases: unknown case {c!r}; valid: {', '.join(CASES)}")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads: expected comma-separated positive ints, got {args.threads!r}")
    if any(t <= 0 for t in threads) or args.repeats <= 0:
        parser.error("--threads and --repeats must be positive")

    import torch

    load_before = os.getloadavg()
    rows = [measure(c, t, args.repeats, args.profile) for c in cases for t in threads]
    meta = dict(label=args.label, git_commit=git_commit(), torch=torch.__version__, python=platform.python_version(),
                cpu_count=os.cpu_count(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                load_average_before=load_before, load_average_after=os.getloadavg(),
                time=datetime.datetime.now().isoformat(timespec="seconds"))
    print(_table(rows))
    print(f"load average before {load_before}, after {meta['load_average_after']}; "
          f"OMP_WAIT_POLICY={meta['omp_wait_policy']}")
    path = write_results("projection", dict(meta=meta, results=rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
