"""Throughput of the generator (mapping + Gaussians + render) and of the discriminator, forward and forward+backward.

Not a test: run `python bench/generator.py` (options: --help). Prints a table and writes
bench/results/generator-<timestamp>.json with the device, git commit and torch version, so runs can be compared.
Timings on a shared machine are noisy: compare ratios measured in the same run.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
import traceback

import click
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from _results import git_commit, write_results  # noqa: E402  (bench/ is the script's directory)

from training.discriminator import Discriminator  # noqa: E402

CONFIGS = {
    "small-64": dict(G=dict(img_resolution=64, num_points=64, res_end=32, channel_max=128),
                     D=dict(img_resolution=64, channel_max=128)),
    "ffhq-256": dict(G=dict(img_resolution=256), D=dict(img_resolution=256)),
}
MODES = ("G fwd", "G fwd+bwd", "D fwd", "D fwd+bwd")
FRONTAL_FOCAL = 4.2647


def frontal_labels(batch: int, device) -> torch.Tensor:
    """EG3D label of the frontal camera: at (0, 0, 2.7) looking at the origin, OpenCV axes, focal 4.2647."""
    try:
        from splatting.cameras import eg3d_label, look_at
        label = eg3d_label(look_at((0.0, 0.0, 2.7), (0.0, 0.0, 0.0)), FRONTAL_FOCAL)
    except ImportError:
        cam2world = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]])
        intrinsics = torch.tensor([FRONTAL_FOCAL, 0, 0.5, 0, FRONTAL_FOCAL, 0.5, 0, 0, 1])
        label = torch.cat([cam2world.flatten(), intrinsics])
    return label.reshape(1, 25).repeat(batch, 1).to(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, device, warmup: int, min_time: float, max_iters: int) -> tuple[float, int]:
    """Mean wall time of fn() after `warmup` calls, over at least one call and until min_time or max_iters."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start, iters = time.perf_counter(), 0
    while True:
        fn()
        _sync(device)
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or iters >= max_iters:
            return elapsed / iters, iters


def make_steps(G, D, batch: int, device):
    """The four measured callables of one (config, batch, device)."""
    res = D.img_resolution
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(batch, 512, generator=gen, device=device)
    c = frontal_labels(batch, device)
    img = torch.randn(batch, 3, res, res, generator=gen, device=device)

    def g_fwd():
        with torch.no_grad():
            G(z, c)

    def g_fwd_bwd():
        G.zero_grad(set_to_none=True)
        G(z, c)["image"].square().mean().backward()

    def d_fwd():
        with torch.no_grad():
            D(img, c)

    def d_fwd_bwd():
        D.zero_grad(set_to_none=True)
        logits, feat_pose, cam_emb = D(img, c)
        (logits.sum() + (feat_pose * cam_emb).sum()).backward()

    return {"G fwd": g_fwd, "G fwd+bwd": g_fwd_bwd, "D fwd": d_fwd, "D fwd+bwd": d_fwd_bwd}


def count_gaussians(G, device) -> int:
    with torch.no_grad():
        out = G(torch.zeros(1, 512, device=device), frontal_labels(1, device))
    return int(out["gaussians"].means.shape[1])


def run_config(name: str, device: torch.device, batches, modes, warmup, min_time, max_iters) -> list[dict]:
    from training.generator import GSGenerator

    torch.manual_seed(0)
    cfg = CONFIGS[name]
    G = GSGenerator(**cfg["G"]).to(device)
    D = Discriminator(**cfg["D"]).to(device)
    info = dict(config=name, device=str(device), G_kwargs=cfg["G"], D_kwargs=cfg["D"],
                G_params=sum(p.numel() for p in G.parameters()), D_params=sum(p.numel() for p in D.parameters()),
                num_gaussians=count_gaussians(G, device))
    rows = []
    for batch in batches:
        steps = make_steps(G, D, batch, device)
        for mode in modes:
            row = dict(info, batch=batch, mode=mode)
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sec, iters = seconds_per_call(steps[mode], device, warmup, min_time, max_iters)
                row.update(seconds_per_batch=sec, images_per_second=batch / sec, iters=iters)
                if device.type == "cuda":
                    row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory: record it and go on
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                traceback.print_exc()
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    if "error" in row:
        result = f"ERROR {row['error'][:60]}"
    else:
        result = f"{row['images_per_second']:10.2f} img/s  {row['seconds_per_batch'] * 1e3:10.1f} ms/batch"
    return f"{row['config']:<9} {row['device']:<6} B={row['batch']:<2} {row['mode']:<10} {result}"


@click.command()
@click.option("--configs", default="small-64,ffhq-256", show_default=True, help="Comma list of " + ",".join(CONFIGS))
@click.option("--batches", default="1,4", show_default=True, help="Comma list of batch sizes.")
@click.option("--devices", default="auto", show_default=True, help="auto (cpu + cuda if present), or a comma list.")
@click.option("--modes", default=",".join(MODES), show_default=True, help="Comma list of " + ",".join(MODES))
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--min-time", type=click.FloatRange(min=0), default=2.0, show_default=True, help="Seconds per cell.")
@click.option("--max-iters", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--out", "out_dir", default=os.path.join(REPO_ROOT, "bench", "results"), show_default=True)
def main(configs, batches, devices, modes, warmup, min_time, max_iters, out_dir):
    """Measure images/second of G and D; example: python bench/generator.py --configs small-64 --devices cpu"""
    config_list = [s.strip() for s in configs.split(",") if s.strip()]
    mode_list = [s.strip() for s in modes.split(",") if s.strip()]
    for name in config_list:
        if name not in CONFIGS:
            raise click.BadParameter(f"unknown config {name!r}; expected one of {sorted(CONFIGS)}",
                                     param_hint="--configs")
    for mode in mode_list:
        if mode not in MODES:
            raise click.BadParameter(f"unknown mode {mode!r}; expected one of {list(MODES)}", param_hint="--modes")
    try:
        batch_list = [int(s) for s in batches.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {batches!r}", param_hint="--batches")
    if devices == "auto":
        device_list = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        device_list = [s.strip() for s in devices.split(",")]
        if "cuda" in device_list and not torch.cuda.is_available():
            raise click.BadParameter("cuda requested but torch.cuda.is_available() is False", param_hint="--devices")
    if any(d.startswith("cuda") for d in device_list):
        torch.backends.cudnn.benchmark = True

    rows, devices_info = [], {}
    for dev in device_list:
        device = torch.device(dev)
        devices_info[str(device)] = device_name(device)
        for name in config_list:
            rows += run_config(name, device, batch_list, mode_list, warmup, min_time, max_iters)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    payload = dict(benchmark="generator", timestamp=stamp, git_commit=git_commit(), torch_version=torch.__version__,
                   python=platform.python_version(), devices=devices_info, cpu_threads=torch.get_num_threads(),
                   warmup=warmup, min_time=min_time, max_iters=max_iters, results=rows)
    path = write_results("generator", payload, out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
