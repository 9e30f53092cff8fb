"""Training throughput: full iterations (Gmain + Dmain + Dreg every 16, EMA) of the real training loop.

Not a test: run `python bench/train_step.py` (options: --help). Default: the `shapes` config on 2 CPU threads,
reported as kimg/hour. `--cfg ffhq256` (batch 32, one process) reports s/kimg and needs a GPU to be meaningful.
Writes bench/results/train_step-<timestamp>.json with the device, git commit and torch version.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import click
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from _results import git_commit, write_results  # noqa: E402  (bench/ is the script's directory)

import train  # noqa: E402
from torch_utils.run_control import resolve_device  # noqa: E402
from training.training_loop import Trainer  # noqa: E402

SETUPS = {
    "shapes": dict(cli=["--cfg", "shapes"], resolution=16),
    "ffhq256": dict(cli=["--cfg", "ffhq", "--batch", "32", "--batch-gpu", "32", "--gaussian_num_pts", "256",
                         "--res_end", "128", "--prob_uniform", "0.5"], resolution=256),
}


def build_config(setup: str, data: str | None, device: str, outdir: str):
    """The same TrainConfig train.py would build (options parsed by its click command)."""
    spec = SETUPS[setup]
    if data is None:
        data = train.shapes_dataset(spec["resolution"], 64 if setup != "shapes" else 512)
    args = ["--outdir", outdir, "--data", data, "--device", device, "--workers", "1", "--metrics", "none"] + spec["cli"]
    ctx = train.main.make_context("train.py", args)
    opts = train.merge_bool_flags(ctx.params)
    opts.pop("dry_run")
    return train.build_config(opts)


def time_iterations(trainer: Trainer, warmup: int, iterations: int) -> list[float]:
    """Seconds per iteration (synchronised on CUDA). On a shared machine report the median."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        trainer.train_step()
    times = []
    for _ in range(iterations):
        sync()
        start = time.perf_counter()
        trainer.train_step()
        sync()
        times.append(time.perf_counter() - start)
    return times


@click.command()
@click.option("--cfg", "setup", type=click.Choice(sorted(SETUPS)), default="shapes", show_default=True)
@click.option("--data", help="Dataset zip (default: the synthetic dataset at the setup's resolution).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=2, show_default=True, help="CPU threads (torch.set_num_threads).")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--iterations", type=int, default=16, show_default=True, help="Timed iterations (one Dreg).")
def main(setup, data, device, threads, warmup, iterations):
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(setup, data, device, tmp)
        torch_device = resolve_device(config.device)
        trainer = Trainer(config, tmp, 0, 1, torch_device)
        trainer.setup()
        times = time_iterations(trainer, warmup, iterations)
        trainer.close()
    median = statistics.median(times)
    batch = config.batch_size
    result = {
        "benchmark": "train_step", "setup": setup, "device": str(torch_device),
        "device_name": torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else platform.machine(),
        "threads": threads, "batch": batch, "resolution": config.data.resolution, "iterations": iterations,
        "sec_per_iteration_median": median, "sec_per_iteration_mean": statistics.mean(times),
        "sec_per_iteration_all": [round(t, 4) for t in times],
        "sec_per_kimg": median / batch * 1000, "kimg_per_hour": batch / 1000 / (median / 3600),
        "git_commit": git_commit(), "torch": torch.__version__,
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    click.echo(json.dumps(result, indent=2))
    click.echo(f"wrote {write_results('train_step', result)}")

if __name__ == "__main__":
    main()
