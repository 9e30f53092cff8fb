"""Generator and discriminator cost per call: G forward (no grad), G forward+backward, D forward, D forward+backward.

    python bench/generator.py [--configs small-64,ffhq-256,ffhq-512] [--batches 1] [--modes "G fwd,G fwd+bwd"]
                              [--rounds 3] [--repeats 2] [--threads 2] [--before DIR] [--device cpu]

Every (config, batch, mode) is measured in fresh worker processes (so peak memory is a clean high-water mark):
median wall and CPU time per call (time.process_time, summed over threads: the fairer number on a loaded machine)
and the peak memory above the weights (ru_maxrss delta after the models are built, or the CUDA allocator's
peak). With --before DIR (another checkout, e.g. `git worktree add /tmp/gen_before HEAD`), the same cells run with
DIR's code, alternating current / before subprocesses `--rounds` times, and the speed-ups, the memory ratios and the
largest deviation of the generated Gaussians and image (same weights, same z) are printed. The machine's load
average is recorded at the start and the end. Results go to bench/results/generator-<time>.json.
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
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {
    "small-64": dict(G=dict(img_resolution=64, num_points=64, res_end=32, channel_max=128),
                     D=dict(img_resolution=64, channel_max=128)),
    "ffhq-256": dict(G=dict(img_resolution=256), D=dict(img_resolution=256)),
    "ffhq-512": dict(G=dict(img_resolution=512, res_end=256), D=dict(img_resolution=512)),
}
MODES = ("G fwd", "G fwd+bwd", "D fwd", "D fwd+bwd")
FRONTAL_FOCAL = 4.2647
GAUSSIAN_FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")


def frontal_labels(batch: int, device):
    """EG3D label of the frontal camera: at (0, 0, 2.7) looking at the origin, OpenCV axes, focal 4.2647."""
    import torch

    from splatting.cameras import eg3d_label, look_at

    label = eg3d_label(look_at((0.0, 0.0, 2.7), (0.0, 0.0, 0.0)), FRONTAL_FOCAL)
    return label.reshape(1, 25).repeat(batch, 1).to(device)


def _load() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# --------------------------------------------------------------------------------------------------
# Worker: one (config, batch, mode) in this process, with whichever checkout is first on sys.path.

def worker(config: str, batch: int, mode: str, repeats: int, device_name: str, dump: str | None) -> dict:
    import torch

    from training.discriminator import Discriminator
    from training.generator import GSGenerator

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    torch.manual_seed(0)
    cfg = CONFIGS[config]
    G = GSGenerator(**cfg["G"]).to(device).eval()
    D = Discriminator(**cfg["D"]).to(device) if mode.startswith("D") else None
    from splatting.backends import get_backend
    get_backend(G.backend, device)  # builds / loads a compiled rasterizer before any measurement
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(batch, G.z_dim, generator=gen, device=device)
    c = frontal_labels(batch, device)
    img = torch.randn(batch, 3, D.img_resolution, D.img_resolution, generator=gen, device=device) if D else None

    def g_fwd():
        with torch.no_grad():
            return G(z, c)

    def g_fwd_bwd():
        G.zero_grad(set_to_none=True)
        out = G(z, c)
        (out["image"].square().mean() + out["gaussians"].means.square().mean()).backward()

    def d_fwd():
        with torch.no_grad():
            D(img, c)

    def d_fwd_bwd():
        D.zero_grad(set_to_none=True)
        logits, feat_pose, cam_emb = D(img, c)
        (logits.sum() + (feat_pose * cam_emb).sum()).backward()

    fn = {"G fwd": g_fwd, "G fwd+bwd": g_fwd_bwd, "D fwd": d_fwd, "D fwd+bwd": d_fwd_bwd}[mode]
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    walls, cpus = [], []
    for i in range(repeats + 1):  # the first call warms up (allocator, caches) and is not timed
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        if i > 0:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        if i == 0 and dump is not None and mode == "G fwd":
            g = out["gaussians"]
            torch.save({**{k: getattr(g, k)[:1].cpu() for k in GAUSSIAN_FIELDS}, "image": out["image"][:1].cpu()},
                       dump)
        del out
    weights = sum(p.numel() * p.element_size() for m in (G, D) if m is not None for p in m.parameters())
    row = dict(config=config, batch=batch, mode=mode, device=str(device), threads=torch.get_num_threads(),
               wall_ms=[1e3 * t for t in walls], cpu_ms=[1e3 * t for t in cpus], weights_mb=weights / 2 ** 20,
               num_gaussians=G.gaussian_counts()["total"], package=os.path.dirname(sys.modules["training"].__file__))
    if cuda:
        row["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2 ** 20
        row["peak_kind"] = "torch.cuda.max_memory_allocated above the models"
    else:
        row["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
        row["peak_kind"] = "ru_maxrss delta after the models are built"
    return row


def _run_worker(cell: tuple, args, code: str | None, dump: str | None) -> dict:
    config, batch, mode = cell
    command = [sys.executable, os.path.abspath(__file__), "--worker", config, str(batch), mode,
               "--repeats", str(args.repeats), "--device", args.device]
    if code is not None:
        command += ["--code", code]
    if dump is not None:
        command += ["--dump", dump]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    label = "current" if code is None else "before"
    if proc.returncode != 0:
        return dict(config=config, batch=batch, mode=mode, code=label,
                    error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), code=label)


def _merge(rows: list[dict]) -> dict:
    """The rounds of one (cell, code) -> medians over every timed call, median peak memory."""
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return rows[0]
    merged = {k: v for k, v in ok[0].items() if k not in ("wall_ms", "cpu_ms", "peak_mb")}
    merged["wall_ms"] = statistics.median(t for r in ok for t in r["wall_ms"])
    merged["cpu_ms"] = statistics.median(t for r in ok for t in r["cpu_ms"])
    merged["peak_mb"] = statistics.median(r["peak_mb"] for r in ok)
    merged["calls"] = sum(len(r["wall_ms"]) for r in ok)
    return merged


def _deviation(current: str, before: str) -> dict:
    """Largest |current - before| per Gaussian field and image, with the field's largest magnitude."""
    import torch

    a, b = torch.load(current), torch.load(before)
    return {k: dict(max_abs=float((a[k] - b[k]).abs().max()), max_magnitude=float(b[k].abs().max()))
            for k in b}


def _table(rows: list[dict]) -> str:
    head = f"{'config':<9} {'B':>2} {'mode':<10} {'code':<8} | {'wall ms':>9} {'cpu ms':>9} {'peak MB':>8} " \
           f"{'weights MB':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['config']:<9} {r['batch']:>2} {r['mode']:<10} {r['code']:<8} | error: {r['error'][:70]}")
            continue
        lines.append(f"{r['config']:<9} {r['batch']:>2} {r['mode']:<10} {r['code']:<8} | {r['wall_ms']:9.1f} "
                     f"{r['cpu_ms']:9.1f} {r['peak_mb']:8.0f} {r['weights_mb']:10.0f}")
    lines.append("(medians per call; cpu ms = process CPU time summed over threads; peak MB = high-water mark above "
                 "the weights)")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small-64,ffhq-256", help="comma list of " + ", ".join(CONFIGS))
    parser.add_argument("--batches", default="1", help="comma list of batch sizes")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    parser.add_argument("--rounds", type=int, default=3, help="worker processes per cell and code (alternating)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per worker (after one warm-up call)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every worker")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--before", default=None, metavar="DIR", help="another gsgan checkout, measured alongside")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench", "results"), help="results directory")
    parser.add_argument("--worker", nargs=3, metavar=("CONFIG", "BATCH", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--code", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.code) if args.code is not None else REPO_ROOT)
    if args.worker:
        config, batch, mode = args.worker
        print(json.dumps(worker(config, int(batch), mode, args.repeats, args.device, args.dump)))
        return
    configs = [s.strip() for s in args.configs.split(",") if s.strip()]
    modes = [s.strip() for s in args.modes.split(",") if s.strip()]
    for name in configs:
        if name not in CONFIGS:
            parser.error(f"--configs: unknown config {name!r}; valid: {', '.join(CONFIGS)}")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"--modes: unknown mode {mode!r}; valid: {', '.join(MODES)}")
    try:
        batches = [int(s) for s in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
    if any(b < 1 for b in batches) or min(args.rounds, args.repeats, args.threads) < 1:
        parser.error("--batches, --rounds, --repeats and --threads must be >= 1")
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device: expected cpu or cuda, got {args.device!r}")
    if args.before is not None and not os.path.isfile(os.path.join(args.before, "training", "generator.py")):
        parser.error(f"--before: {args.before!r} is not a gsgan checkout (no training/generator.py in it)")

    sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
    from _results import git_commit, write_results

    codes = [None] if args.before is None else [None, os.path.abspath(args.before)]
    load_start, rows, deviations = _load(), [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for cell in [(c, b, m) for c in configs for b in batches for m in modes]:
            per_code = {code: [] for code in codes}
            for round_index in range(args.rounds):
                for code in codes:
                    label = "current" if code is None else "before"
                    dump = os.path.join(scratch, f"{label}.pt") if round_index == 0 and cell[2] == "G fwd" else None
                    print(f"{cell} {label} round {round_index + 1}/{args.rounds}...", file=sys.stderr, flush=True)
                    per_code[code].append(_run_worker(cell, args, code, dump))
            merged = [_merge(per_code[code]) for code in codes]
            rows += merged
            if len(merged) == 2 and cell[2] == "G fwd" and all("error" not in r for r in merged):
                deviations["/".join(map(str, cell))] = _deviation(os.path.join(scratch, "current.pt"),
                                                                  os.path.join(scratch, "before.pt"))
    load_end = _load()
    speedups = []
    for now in rows:
        before = next((r for r in rows if r["code"] == "before" and
                       (r["config"], r["batch"], r["mode"]) == (now["config"], now["batch"], now["mode"])), None)
        if now["code"] == "current" and before is not None and "error" not in now and "error" not in before:
            speedups.append(dict(config=now["config"], batch=now["batch"], mode=now["mode"],
                                 wall_speedup=before["wall_ms"] / now["wall_ms"],
                                 cpu_speedup=before["cpu_ms"] / now["cpu_ms"],
                                 peak_ratio=now["peak_mb"] / max(before["peak_mb"], 1e-9)))
    print(_table(rows))
    for s in speedups:
        print(f"{s['config']} B={s['batch']} {s['mode']}: before/current wall {s['wall_speedup']:.2f}x, "
              f"cpu {s['cpu_speedup']:.2f}x; peak memory current/before {s['peak_ratio']:.2f}")
    for cell, dev in deviations.items():
        print(f"{cell} current vs before: " + ", ".join(f"{k} {v['max_abs']:.2e} (of {v['max_magnitude']:.2e})"
                                                        for k, v in dev.items()))
    print(f"load average at start {load_start}, at end {load_end}")
    import torch

    payload = dict(benchmark="generator", git_commit=git_commit(), torch_version=torch.__version__,
                   python=platform.python_version(), cpu=platform.processor() or platform.machine(),
                   cpu_count=os.cpu_count(), threads=args.threads, rounds=args.rounds, repeats=args.repeats,
                   before=args.before, load_average_start=load_start, load_average_end=load_end,
                   results=rows, speedups=speedups, deviations=deviations)
    print(f"wrote {write_results('generator', payload, args.out)}")


if __name__ == "__main__":
    main()
