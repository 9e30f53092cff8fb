"""Rasterizer benchmark: every available backend on GAN-like scenes, end to end (render) and rasterize alone.

    python bench/rasterizer.py [--cases 64,128,256,512] [--reference-all] [--repeats 3] [--before DIR]

Each (case, backend) runs in its own subprocess so that its peak memory is a clean ru_maxrss delta (CPU) or
torch.cuda.max_memory_allocated (CUDA). Reported per case and backend: forward, backward and forward+backward
ms/image for render() and for the rasterize step alone, the backward-to-forward ratio, Gaussian-pixel pairs per
second, peak memory, and the reference/backend speed ratio measured in the same run. With --before DIR (another
checkout of gsgan, e.g. `git worktree add /tmp/gsgan-before HEAD~1`), every measurement is repeated with DIR's
splatting package, in the same run, and the before/current speed-ups are printed. The machine's load average
is recorded at the start and the end. Results go to bench/results/rasterizer-<time>.json.

"pairs" is estimated from the contract's tile lists, identically for every backend: for each Gaussian with
radius > 0, the number of pixels in the tiles its tile rectangle covers (an upper bound: it ignores the early
stop and the 1/255 cut). pairs/s = pairs / rasterize forward time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from _results import git_commit, write_results  # noqa: E402  (bench/ is the script's directory)

# name -> (resolution, Gaussians, batch, device)
CASES = {
    "64": (64, 4096, 8, "cpu"),
    "128": (128, 21760, 8, "cpu"),
    "256": (256, 87296, 4, "cpu"),
    "512": (512, 359440, 2, "cpu"),
    "512-cuda": (512, 359440, 32, "cuda"),
}
FOCAL = 4.2647  # EG3D FFHQ normalized focal length
CAMERA_RADIUS = 2.7


def gan_like_scene(resolution: int, n: int, batch: int, device: str, seed: int = 0):
    """GSGAN-like Gaussians: levels of 256 * 4^l points in a ball of radius 0.5, log-scales shrinking by
    log 4 per level (about -3.46, -4.85, -6.23, ...), seen by the EG3D frontal camera."""
    import torch

    from splatting import Cameras, Gaussians
    from splatting.cameras import look_at

    g = torch.Generator().manual_seed(seed)
    level_of = []
    level, remaining = 0, n
    while remaining > 0:
        count = min(remaining, 256 * 4 ** level)
        level_of += [level] * count
        remaining -= count
        level += 1
    level_of = torch.tensor(level_of, dtype=torch.float32)
    direction = torch.nn.functional.normalize(torch.randn(batch, n, 3, generator=g), dim=-1)
    means = direction * 0.5 * torch.rand(batch, n, 1, generator=g) ** (1 / 3)
    log_scales = -3.46 - math.log(4) * level_of[None, :, None] + 0.3 * torch.randn(batch, n, 3, generator=g)
    gaussians = Gaussians(means=means, log_scales=log_scales, quats=torch.randn(batch, n, 4, generator=g),
                          opacity_logits=1.5 * torch.randn(batch, n, generator=g),
                          sh=torch.randn(batch, n, 1, 3, generator=g))
    cam2world = look_at(torch.tensor([0.0, 0.0, CAMERA_RADIUS]), torch.zeros(3)).expand(batch, 1, 4, 4)
    f = FOCAL * resolution
    K = torch.tensor([[f, 0, resolution / 2], [0, f, resolution / 2], [0, 0, 1]]).expand(batch, 1, 3, 3)
    cameras = Cameras(torch.linalg.inv(cam2world).contiguous(), K.contiguous(), resolution, resolution)
    if device != "cpu":
        gaussians = gaussians.map(lambda t: t.to(device))
        cameras = cameras.to(device)
    return gaussians, cameras


def contract_pairs(means2d, radii, width: int, height: int) -> int:
    """Pixels in the tiles of every Gaussian's tile rectangle, summed (see the module docstring)."""
    import torch

    tiles_x, tiles_y = (width + 15) // 16, (height + 15) // 16
    m, r = means2d.detach().float(), radii.float()
    x0 = torch.floor((m[..., 0] - r) / 16).clamp(0, tiles_x).long()
    x1 = torch.ceil((m[..., 0] + r) / 16).clamp(0, tiles_x).long()
    y0 = torch.floor((m[..., 1] - r) / 16).clamp(0, tiles_y).long()
    y1 = torch.ceil((m[..., 1] + r) / 16).clamp(0, tiles_y).long()
    # Pixels per tile column / row (the last ones may be partial), prefix-summed.
    col = torch.cumsum(torch.tensor([0] + [min(16, width - 16 * t) for t in range(tiles_x)]), 0).to(m.device)
    row = torch.cumsum(torch.tensor([0] + [min(16, height - 16 * t) for t in range(tiles_y)]), 0).to(m.device)
    pixels = (col[x1] - col[x0]).clamp(min=0) * (row[y1] - row[y0]).clamp(min=0)
    return int(torch.where(radii > 0, pixels, torch.zeros_like(pixels)).sum())


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def _timed(fn, sync, repeats: int, warmup: bool) -> list[tuple[float, float]]:
    """Per phase of fn, (wall, process CPU) seconds: medians over `repeats` runs, after one warm-up run if
    `warmup`. fn(mark) calls mark() between its phases (forward | backward); a phase-less fn has one phase.

    CPU time (all threads) is reported beside wall time because the machine may be shared."""
    if warmup:
        fn(sync)
        sync()
    runs = []
    for _ in range(repeats):
        stamps = [(time.perf_counter(), time.process_time())]

        def mark():
            sync()
            stamps.append((time.perf_counter(), time.process_time()))

        fn(mark)
        mark()
        runs.append([(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])])
    return [(_median(r[i][0] for r in runs), _median(r[i][1] for r in runs)) for i in range(len(runs[0]))]


def worker(case: str, backend: str, repeats: int) -> dict:
    """Measure one (case, backend) in this process; returns the result row."""
    import torch

    from splatting import render
    from splatting.backends import get_backend
    from splatting.projection import project

    resolution, n, batch, device = CASES[case]
    module = get_backend(backend, device)  # builds / loads a compiled backend before any measurement
    gaussians, cameras = gan_like_scene(resolution, n, batch, device)
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        proj = project(gaussians, cameras)
    feats = torch.cat([proj.colors, proj.depths[..., None]], dim=-1).contiguous()
    args = [proj.means2d, proj.conics, feats, proj.opacities, proj.depths, proj.radii]
    args = [t.contiguous() for t in args]
    leaves = [t.clone().requires_grad_(True) for t in args[:4]]
    weights = torch.randn(batch, resolution, resolution, 4, device=device)
    params = [gaussians.means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits, gaussians.sh]
    for t in params:
        t.requires_grad_(True)

    def raster_fwd(mark):
        with torch.no_grad():
            module.rasterize(*args, resolution, resolution)

    def raster_fwd_bwd(mark):  # forward with autograd recording | backward
        out, alpha = module.rasterize(*leaves, *args[4:], resolution, resolution)
        loss = (out * weights).sum() + alpha.sum()
        mark()
        loss.backward()

    def render_fwd(mark):
        with torch.no_grad():
            render(gaussians, cameras, backend=backend)

    def render_fwd_bwd(mark):
        out = render(gaussians, cameras, backend=backend)
        loss = out.color.square().mean() + out.alpha.mean() + out.depth.mean()
        mark()
        loss.backward()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    row = dict(case=case, backend=backend, device=device, resolution=resolution, gaussians=n, batch=batch)
    warmup = backend != "reference"  # the reference is too slow to run twice; it has nothing to warm up
    for key, fn in (("raster", raster_fwd), ("raster_fwd_bwd", raster_fwd_bwd), ("render", render_fwd),
                    ("render_fwd_bwd", render_fwd_bwd)):
        phases = _timed(fn, sync, repeats, warmup)
        if len(phases) == 1:  # no-grad forward
            names, phases = [f"{key}_fwd"], phases
        else:  # forward with autograd, backward, and their sum
            total = (phases[0][0] + phases[1][0], phases[0][1] + phases[1][1])
            base = key[: -len("_fwd_bwd")]
            names, phases = [f"{base}_grad_fwd", f"{base}_bwd", key], [*phases, total]
        for name, (wall, cpu_time) in zip(names, phases):
            row[f"{name}_ms_per_image"] = 1e3 * wall / batch
            row[f"{name}_cpu_ms_per_image"] = 1e3 * cpu_time / batch
    for base in ("raster", "render"):
        row[f"{base}_bwd_over_fwd"] = row[f"{base}_bwd_ms_per_image"] / row[f"{base}_fwd_ms_per_image"]
    pairs = contract_pairs(proj.means2d, proj.radii, resolution, resolution)
    row["contract_pairs_per_image"] = pairs / batch
    row["pairs_per_second"] = pairs / (row["raster_fwd_ms_per_image"] * batch / 1e3)
    if cuda:
        row["peak_memory_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        row["peak_memory_kind"] = "torch.cuda.max_memory_allocated delta"
    else:
        row["peak_memory_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
        row["peak_memory_kind"] = "ru_maxrss delta after scene set-up"
    row["threads"] = torch.get_num_threads()
    row["splatting_package"] = os.path.dirname(sys.modules["splatting"].__file__)  # which checkout was measured
    return row


def _run_worker(case: str, backend: str, repeats: int, code: str | None = None) -> dict:
    """One (case, backend) in a fresh process, with the splatting package of checkout `code` (default: this one)."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", case, backend, "--repeats", str(repeats)]
    if code is not None:
        command += ["--code", code]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    label = "current" if code is None else "before"
    if proc.returncode != 0:
        return dict(case=case, backend=backend, code=label,
                    error=proc.stderr.strip().splitlines()[-1:] or ["failed"])
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), code=label)


def _table(rows: list[dict]) -> str:
    head = (f"{'case':>5} {'backend':>9} {'code':>7} | {'rast fwd':>8} {'bwd':>8} {'f+b':>8} {'bwd/fwd':>7} | "
            f"{'rend fwd':>8} {'bwd':>8} {'f+b':>8} {'bwd/fwd':>7} | {'Mpairs/s':>8} {'peak MB':>7} | ref/this rast f+b")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:>5} {r['backend']:>9} {r['code']:>7} | error: {r['error'][0][:80]}")
            continue
        ratio = r.get("reference_ratio_fwd_bwd")
        ratio_text = "" if ratio is None else (f"{ratio:.0f}x (cpu time {r['reference_ratio_fwd_bwd_cpu_time']:.0f}x, "
                                               f"render {r['reference_ratio_render_fwd_bwd']:.0f}x)")
        cells = []
        for base in ("raster", "render"):
            cells.append(f"{r[f'{base}_fwd_ms_per_image']:8.2f} {r[f'{base}_bwd_ms_per_image']:8.2f} "
                         f"{r[f'{base}_fwd_bwd_ms_per_image']:8.2f} {r[f'{base}_bwd_over_fwd']:7.2f}")
        lines.append(f"{r['case']:>5} {r['backend']:>9} {r['code']:>7} | {cells[0]} | {cells[1]} | "
                     f"{r['pairs_per_second'] / 1e6:8.1f} {r['peak_memory_mb']:7.0f} | {ratio_text}")
    lines.append("(ms per image, medians of wall time; fwd = no-grad forward, bwd = backward alone, f+b = forward "
                 "with autograd + backward; 'rast' = rasterize step alone, 'rend' = render() end to end incl. "
                 "projection)")
    return "\n".join(lines)


def _speedups(rows: list[dict]) -> list[dict]:
    """before / current time ratios (> 1: the current code is faster) for every (case, backend) measured both ways."""
    found = {(r["case"], r["backend"], r["code"]): r for r in rows if "error" not in r}
    out = []
    for (case, backend, code), now in found.items():
        before = found.get((case, backend, "before"))
        if code != "current" or before is None:
            continue
        entry = dict(case=case, backend=backend)
        for base in ("raster", "render"):
            for phase in ("fwd", "bwd", "fwd_bwd"):
                key = f"{base}_{phase}_ms_per_image"
                entry[f"{base}_{phase}_speedup"] = before[key] / now[key]
            entry[f"{base}_peak_memory_ratio"] = now["peak_memory_mb"] / max(before["peak_memory_mb"], 1e-9)
        out.append(entry)
    return out


def _speedup_table(speedups: list[dict]) -> str:
    head = (f"{'case':>5} {'backend':>9} | {'rast fwd':>8} {'bwd':>6} {'f+b':>6} | {'rend fwd':>8} {'bwd':>6} "
            f"{'f+b':>6} | peak MB now/before")
    lines = ["speed-up, before / current time:", head, "-" * len(head)]
    for e in speedups:
        lines.append(f"{e['case']:>5} {e['backend']:>9} | {e['raster_fwd_speedup']:7.2f}x {e['raster_bwd_speedup']:5.2f}x "
                     f"{e['raster_fwd_bwd_speedup']:5.2f}x | {e['render_fwd_speedup']:7.2f}x "
                     f"{e['render_bwd_speedup']:5.2f}x {e['render_fwd_bwd_speedup']:5.2f}x | "
                     f"{e['raster_peak_memory_ratio']:.2f}")
    return "\n".join(lines)


def _load() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=None, help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument("--backends", default=None, help="comma-separated subset of the available backends")
    parser.add_argument("--reference-all", action="store_true", help="run the reference on every case, not only 64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default=None, metavar="DIR",
                        help="another gsgan checkout: measure its splatting package too, in the same run")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "BACKEND"), help=argparse.SUPPRESS)
    parser.add_argument("--code", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.code is not None:  # the other checkout's splatting package wins the import
            sys.path.insert(0, os.path.abspath(args.code))
        print(json.dumps(worker(*args.worker, args.repeats)))
        return
    if args.before is not None and not os.path.isfile(os.path.join(args.before, "splatting", "__init__.py")):
        parser.error(f"--before: {args.before!r} is not a gsgan checkout (no splatting/__init__.py in it)")
    if args.repeats < 1:
        parser.error(f"--repeats: must be >= 1, got {args.repeats}")

    import torch

    from splatting.backends import BACKENDS, unavailable_reason

    cases = args.cases.split(",") if args.cases else [c for c in CASES if CASES[c][3] == "cpu" or
                                                       torch.cuda.is_available()]
    for c in cases:
        if c not in CASES:
            parser.error(f"--cases: unknown case {c!r}; valid: {', '.join(CASES)}")
    names = args.backends.split(",") if args.backends else list(BACKENDS)
    for b in names:
        if b not in BACKENDS:
            parser.error(f"--backends: unknown backend {b!r}; valid: {', '.join(BACKENDS)}")
    available = {b: unavailable_reason(b) for b in names}
    for b, reason in available.items():
        if reason is not None:
            print(f"skipping backend {b!r}: {reason}", file=sys.stderr)
    load_start = _load()
    codes = [None] if args.before is None else [None, os.path.abspath(args.before)]
    rows = []
    for case in cases:
        device = CASES[case][3]
        for backend in names:
            if available[backend] is not None or device not in BACKENDS[backend].device_types:
                continue
            if backend == "reference" and case != "64" and not args.reference_all:
                continue
            for code in codes:
                print(f"measuring case {case} with {backend} ({'current' if code is None else code})...",
                      file=sys.stderr, flush=True)
                rows.append(_run_worker(case, backend, 1 if backend == "reference" else args.repeats, code))
        ref = next((r for r in rows if r.get("case") == case and r.get("backend") == "reference"
                    and r.get("code") == "current" and "error" not in r), None)
        for r in rows:
            if ref is not None and r.get("case") == case and r.get("code") == "current" and "error" not in r:
                r["reference_ratio_fwd_bwd"] = ref["raster_fwd_bwd_ms_per_image"] / r["raster_fwd_bwd_ms_per_image"]
                r["reference_ratio_fwd"] = ref["raster_fwd_ms_per_image"] / r["raster_fwd_ms_per_image"]
                r["reference_ratio_render_fwd_bwd"] = (ref["render_fwd_bwd_ms_per_image"]
                                                       / r["render_fwd_bwd_ms_per_image"])
                r["reference_ratio_fwd_bwd_cpu_time"] = (ref["raster_fwd_bwd_cpu_ms_per_image"]
                                                         / r["raster_fwd_bwd_cpu_ms_per_image"])
    load_end = _load()
    speedups = _speedups(rows)

    meta = dict(git_commit=git_commit(), torch=torch.__version__, python=platform.python_version(),
                cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                cuda_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                load_average_start=load_start, load_average_end=load_end, before=args.before,
                time=datetime.datetime.now().isoformat(timespec="seconds"),
                note="other processes may share the machine; see load_average_start / _end")
    print(_table(rows))
    if speedups:
        print(_speedup_table(speedups))
    if load_start is not None:
        print(f"load average (1, 5, 15 min): start {', '.join(f'{v:.2f}' for v in load_start)}; "
              f"end {', '.join(f'{v:.2f}' for v in load_end)} on {os.cpu_count()} CPUs")
    path = write_results("rasterizer", dict(meta=meta, results=rows, speedups=speedups))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
