"""Feed-forward 3D reconstruction from posed views (MVSplat-style): train, test and render.

Examples:

\b
  # Build the built-in scenes and train on the CPU for 10 minutes:
  python dataset_tool.py scenes --dest datasets/scenes64
  python reconstruct.py train --outdir=runs --data=datasets/scenes64 --experiment=scenes --minutes=10
\b
  # Evaluate the latest snapshot of a run (PSNR / SSIM / LPIPS and the nearest-context baseline):
  python reconstruct.py test --network=runs/00000-scenes-scenes64-gpus1-batch4 --data=datasets/scenes64
\b
  # A video along the context cameras and a .ply of the reconstruction of one evaluation scene:
  python reconstruct.py render --network=runs/00000-scenes-scenes64-gpus1-batch4 --data=datasets/scenes64 \\
      --index-entry=0 --outdir=out
\b
  # The official RE10K configuration (print options and model size only):
  python reconstruct.py train --outdir=runs --data=datasets/re10k --experiment=re10k --gpus=4 --dry-run
\b
  # Generative densification: fine-tune a trained run's encoder jointly with a fresh densifier:
  python reconstruct.py train --outdir=runs --data=datasets/scenes64 --experiment=scenes --densify \\
      --resume=runs/00000-scenes-scenes64-gpus1-batch4
"""
from __future__ import annotations

import json
import os

import click

from reconstruction.config import BACKENDS, EXPERIMENTS, ConfigError


def user_errors() -> tuple:
    """The project exceptions that are the user's to fix: shown as one line."""
    from reconstruction.chunks import ChunkError
    from reconstruction.densify.segment import DensifyError
    from reconstruction.encoder.errors import EncoderError
    from reconstruction.evaluate import EvaluationError
    from reconstruction.metrics import ImageMetricError
    from reconstruction.view_sampler import ViewSamplerError
    from torch_utils.checkpoint import SnapshotError

    errors = [ConfigError, ChunkError, EncoderError, EvaluationError, ViewSamplerError, SnapshotError,
              ImageMetricError, DensifyError]
    try:
        from reconstruction.lpips import LPIPSWeightsError
        errors.append(LPIPSWeightsError)
    except ImportError:
        pass
    return tuple(errors)


class ShapeType(click.ParamType):
    """H or HxW (image size in pixels)."""

    name = "HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().split("x")
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            sizes = []
        if len(sizes) not in (1, 2) or min(sizes) < 1:
            self.fail(f"expected a size H or HxW in pixels, e.g. 64 or 64x96, got {value!r}", param, ctx)
        return (sizes[0], sizes[-1])


class IntListType(click.ParamType):
    """Comma-separated non-negative integers, e.g. 3,15."""

    name = "i,j,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            values = [int(v) for v in str(value).split(",")]
        except ValueError:
            values = []
        if not values or min(values) < 0:
            self.fail(f"expected comma-separated frame indices such as 3,15, got {value!r}", param, ctx)
        return values


def parse_model_args(items, hint: str = "--model-arg") -> dict:
    """--model-arg KEY=VALUE (VALUE as JSON, else a string) -> {KEY: VALUE}."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=hint)
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


@click.group(help=__doc__)
def cli():
    pass


# ---------------------------------------------------------------------------------------------- train
@cli.command(help="Train the reconstruction model (see the examples at the top of reconstruct.py --help).")
@click.option("--outdir", required=True, metavar="DIR", help="Where run directories NNNNN-desc/ are created.")
@click.option("--data", metavar="DIR", help="Chunk dataset root (DIR/train/*.torch + index.json).")
@click.option("--experiment", type=click.Choice(list(EXPERIMENTS)), default="scenes", show_default=True,
              help="Preset of data, sampler, model and schedule options.")
@click.option("--steps", type=click.IntRange(min=1),
              help="Optimizer steps of the schedule [re10k 300000; scenes 1000].")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True),
              help="Wall-clock budget: stop with a snapshot when reached (the schedule still spans --steps).")
@click.option("--batch", type=click.IntRange(min=1), help="Scenes per process per pass [re10k 2; scenes 4].")
@click.option("--accumulate", type=click.IntRange(min=1), help="Passes per optimizer step [re10k 2; scenes 1].")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes (GPUs; CPU processes with --device=cpu).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--resume", metavar="PT|DIR", help="Continue exactly from a snapshot or a run directory's latest.")
@click.option("--init", metavar="PT", help="Start from a plain encoder state_dict (loaded strictly).")
@click.option("--model-preset", help="Encoder preset [re10k: re10k; scenes: small].")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="Encoder constructor override (VALUE as JSON); repeatable.")
@click.option("--resolution", type=ShapeType(), help="Image size the model sees, H or HxW [re10k 256; scenes 64].")
@click.option("--target-resolution", type=ShapeType(),
              help="Size the target views are rendered, trained and scored at, H or HxW [--resolution].")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="auto", show_default=True,
              help="Rasterizer backend.")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader workers per process [re10k 4; scenes 1].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate [2e-4].")
@click.option("--densify-lr", type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate of the densifier's parameters [--lr].")
@click.option("--densify-eps", type=click.FloatRange(min=0, min_open=True),
              help="Adam epsilon of the densifier's parameters [1e-15].")
@click.option("--lpips-weight", type=click.FloatRange(min=0), help="LPIPS-VGG loss weight [re10k 0.05; scenes 0].")
@click.option("--lpips-after", type=click.IntRange(min=0), default=0, show_default=True,
              help="Use the LPIPS term from this step on.")
@click.option("--gap-warmup", type=click.IntRange(min=0),
              help="Steps over which the context gap ramps to its final bounds [re10k 150000; scenes 300]; "
                   "0 for a fine-tune (the official GDM fine-tune) so it trains at the final gaps from the start.")
@click.option("--tick-steps", type=click.IntRange(min=1),
              help="Steps per tick (log line, grid) [re10k 100; scenes 50].")
@click.option("--snapshot-ticks", type=click.IntRange(min=0),
              help="Ticks between snapshots, 0 = only at the end [re10k 50; scenes 5].")
@click.option("--densify", is_flag=True,
              help="Train with generative densification (encoder + densifier, loss on coarse and fine renders); "
                   "with --resume of a run without it: fine-tune its encoder from step 0.")
@click.option("--densify-preset", help="Densifier preset [re10k: re10k; scenes: small].")
@click.option("--densify-arg", "densify_args", multiple=True, metavar="KEY=VALUE",
              help="GaussianDensifier constructor override (VALUE as JSON); repeatable.")
@click.option("--k-num", type=click.IntRange(min=1),
              help="Gaussians densified per context view [the densifier preset's: re10k 30000; small 1024].")
@click.option("--freeze-encoder", is_flag=True,
              help="With --densify: keep the encoder of --resume/--init fixed (eval mode) and train the densifier "
                   "alone, on the fine render's loss; a step costs about 0.64x a joint one at the small preset.")
@click.option("--desc", default="", help="String appended to the run directory name.")
@click.option("--dry-run", "-n", is_flag=True, help="Print the resolved options and the model summary, then exit.")
def train(**opts):
    try:
        options = build_train_options(opts)
        precheck_train(options, dry_run=opts["dry_run"])
        if opts["dry_run"]:
            click.echo(describe(options))
            return
        from reconstruction import loop

        result = loop.launch(options)
    except user_errors() as error:
        raise click.ClickException(str(error)) from None
    if result.status == "fault":
        raise click.ClickException(result.message)
    click.echo(f"{result.status}: {result.run_dir} (step {result.step}); last snapshot: {result.snapshot}")
    from torch_utils.run_control import exit_status

    if exit_status(result.status):  # interrupted: a distinct status, so scripts can tell it from a finished run
        raise SystemExit(exit_status(result.status))


def build_train_options(opts: dict):
    from reconstruction.config import resolve_options

    if opts["data"] is None and not opts["dry_run"]:
        raise click.BadParameter("required (except with --dry-run)", param_hint="--data")
    overrides = {
        "outdir": opts["outdir"], "desc": opts["desc"], "seed": opts["seed"], "num_gpus": opts["gpus"],
        "device": opts["device"], "steps": opts["steps"], "minutes": opts["minutes"], "batch_gpu": opts["batch"],
        "accumulate": opts["accumulate"], "tick_steps": opts["tick_steps"], "snapshot_ticks": opts["snapshot_ticks"],
        "resume": opts["resume"] or "", "init": opts["init"] or "",
        "data.path": os.path.abspath(opts["data"]) if opts["data"] else "", "data.workers": opts["workers"],
        "data.image_shape": opts["resolution"], "data.target_shape": opts.get("target_resolution"),
        "model.preset": opts["model_preset"],
        "model.backend": opts["backend"], "optim.lr": opts["lr"], "optim.densify_lr": opts.get("densify_lr"),
        "optim.densify_eps": opts.get("densify_eps"),
        "loss.lpips_weight": opts["lpips_weight"],
        "loss.lpips_after": opts["lpips_after"], "sampler.warmup_steps": opts["gap_warmup"],
    }
    model_args = parse_model_args(opts["model_args"])
    if model_args:
        overrides["model.overrides"] = model_args
    densify_given = [name for name, key in (("--densify-preset", "densify_preset"), ("--densify-arg", "densify_args"),
                                            ("--k-num", "k_num"), ("--densify-lr", "densify_lr"),
                                            ("--densify-eps", "densify_eps"), ("--freeze-encoder", "freeze_encoder"))
                     if opts.get(key)]
    if densify_given and not opts.get("densify"):
        raise click.BadParameter(f"{', '.join(densify_given)} given without --densify", param_hint="--densify")
    if opts.get("densify"):
        overrides.update({"densify.enabled": True, "densify.preset": opts.get("densify_preset"),
                          "densify.k_num": opts.get("k_num"), "densify.freeze_encoder": opts.get("freeze_encoder")})
        densify_args = parse_model_args(opts.get("densify_args") or (), hint="--densify-arg")
        if densify_args:
            overrides["densify.overrides"] = densify_args
    options = resolve_options(opts["experiment"], overrides)
    options.validate()
    return options


def build_encoder_meta(options):
    """The encoder of the options, on the meta device when its constructor allows (sizes without weights)."""
    import torch

    from reconstruction.train_setup import build_encoder

    try:
        with torch.device("meta"):
            return build_encoder(options)
    except user_errors():
        raise
    except Exception:  # noqa: BLE001  a constructor that computes on its tensors: build it for real
        return build_encoder(options)


def build_densifier_meta(options, encoder):
    """The densifier of the options (None when off) for `encoder`, on the meta device when its constructor allows."""
    import torch

    from reconstruction.train_setup import build_densifier

    if not options.densify.enabled:
        return None
    try:
        with torch.device("meta"):
            return build_densifier(options, encoder)
    except user_errors():
        raise
    except Exception:  # noqa: BLE001  a constructor that computes on its tensors: build it for real
        return build_densifier(options, encoder)


def _architecture_diff(saved: dict, current: dict) -> str:
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return ", ".join(f"{k}={saved.get(k)!r} (snapshot) vs {current.get(k)!r}" for k in diff[:6])


def precheck_train(options, dry_run: bool) -> None:
    """Every user error before any process starts: data, model options, densifier options and counts, --init
    keys, --resume architecture."""
    from torch_utils import checkpoint

    encoder = build_encoder_meta(options)
    densifier = build_densifier_meta(options, encoder)
    if densifier is not None:
        h, w = options.data.image_shape
        densifier.counts(options.sampler.num_context, h, w)  # k_num within H*W
    if options.init:
        state = checkpoint.read_state_dict_file(options.init, "--init")
        checkpoint.check_state_dict(state, encoder, options.init, "--init")
    if options.resume:
        path = checkpoint.resolve_snapshot(options.resume)
        data = checkpoint.read_recon_snapshot_dict(path)
        details = _architecture_diff(data["encoder"].get("init_kwargs", {}), encoder.init_kwargs)
        if details:
            raise checkpoint.SnapshotError(f"{path}: --resume of a different architecture: {details}")
        if densifier is None and data["densifier"] is not None:
            raise checkpoint.SnapshotError(f"{path}: a run with generative densification; resume it with "
                                           f"--densify (and its densifier options)")
        if densifier is not None and data["densifier"] is None:
            return _precheck_rest(options, dry_run)  # a fine-tune: fresh schedule, any --steps
        if densifier is not None:
            details = _architecture_diff(data["densifier"].get("init_kwargs", {}), densifier.init_kwargs)
            if details:
                raise checkpoint.SnapshotError(f"{path}: --resume of a different densifier: {details}")
            from reconstruction.train_setup import check_same_freeze

            check_same_freeze(path, data["options"], options.densify.freeze_encoder)
        steps = data["options"].get("steps") if isinstance(data["options"], dict) else None
        if steps != options.steps:
            raise checkpoint.SnapshotError(f"{path}: its schedule spans --steps={steps}, this run asks for "
                                           f"--steps={options.steps}; resume with the same --steps")
    _precheck_rest(options, dry_run)


def _precheck_rest(options, dry_run: bool) -> None:
    if dry_run:
        return
    _check_data_root(options.data.path, "train", "--data")
    _check_devices(options.device, options.num_gpus)


def _check_data_root(root: str, split: str, hint: str) -> None:
    from reconstruction.chunks import read_index

    if not os.path.isdir(root):
        raise click.BadParameter(f"{root}: no such dataset folder", param_hint=hint)
    if not os.path.isdir(os.path.join(root, split)):
        raise click.BadParameter(f"{root}: has no {split}/ folder (expected {split}/*.torch + index.json)",
                                 param_hint=hint)
    read_index(root, split)


def _check_devices(device: str, gpus: int) -> None:
    import torch

    from torch_utils import distributed

    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("no CUDA device is available", param_hint="--device")
    uses_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if uses_cuda and not distributed.launched_by_torchrun() and gpus > torch.cuda.device_count():
        raise click.BadParameter(f"{gpus} requested but only {torch.cuda.device_count()} CUDA device(s) are "
                                 f"visible", param_hint="--gpus")


def describe(options) -> str:
    """Resolved options (JSON), exact parameter count and Gaussians per scene, without any forward pass."""
    from torch_utils import misc

    encoder = build_encoder_meta(options)
    densifier = build_densifier_meta(options, encoder)
    h, w = options.data.image_shape
    v = options.sampler.num_context
    coarse = int(encoder.gaussians_per_scene(v, h, w))
    summary = {"encoder_parameters": misc.count_parameters(encoder), "gaussians_per_scene": coarse,
               "context_views": v, "target_views": options.sampler.num_target, "image_shape": [h, w],
               "target_shape": list(options.data.target_or_image_shape),
               "scenes_per_step": options.examples_per_step, "batch_per_process": options.batch_gpu,
               "accumulate": options.accumulate}
    tables = [misc.parameter_table(encoder, "CostVolumeEncoder")]
    counts_line = f"Gaussians per scene: {coarse:,} ({v} views x {h} x {w})"
    if densifier is not None:
        counts = densifier.counts(v, h, w)
        summary.update(densifier_parameters=misc.count_parameters(densifier),
                       coarse_gaussians_per_scene=coarse, gaussians_per_scene=int(counts["per_scene"]),
                       k_num=densifier.k_num, densified_per_view=counts["stages"])
        summary["total_parameters"] = summary["encoder_parameters"] + summary["densifier_parameters"]
        tables.append(misc.parameter_table(densifier, "GaussianDensifier"))
        counts_line = (f"Gaussians per scene: {counts['per_scene']:,} after densification ({coarse:,} coarse: "
                       f"{v} views x {h} x {w}; per view {densifier.k_num:,} selected -> {counts['fine_per_view']:,} "
                       f"fine + {counts['coarse_kept_per_view']:,} kept)\n"
                       f"Parameters: encoder {summary['encoder_parameters']:,} + densifier "
                       f"{summary['densifier_parameters']:,} = {summary['total_parameters']:,}")
    lines = ["Training options:", options.to_json(), "", "Model summary:", json.dumps(summary, indent=2), "",
             *[line for table in tables for line in (table, "")], counts_line,
             f"Output directory: {options.outdir} (not created: dry run)"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- test / render
def load_network(network: str, device):
    """(snapshot path, snapshot dict with the encoder rebuilt on `device`)."""
    from torch_utils import checkpoint

    path = checkpoint.resolve_snapshot(network)
    return path, checkpoint.load_recon_snapshot(path, device=device)


def view_options(snapshot: dict, experiment: str | None) -> tuple[tuple[int, int], tuple[int, int], float, float]:
    """(image_shape, target_shape, near, far): the --experiment preset's when given, else the snapshot's training
    options; the target shape is the image shape where they set none."""
    from reconstruction.config import ReconTrainOptions, experiment_values

    if experiment is not None:
        values = experiment_values(experiment)
        image_shape = tuple(values["data.image_shape"])
        target_shape = tuple(values.get("data.target_shape") or image_shape)
        return image_shape, target_shape, float(values["data.near"]), float(values["data.far"])
    options = ReconTrainOptions.from_dict(snapshot["options"])
    return tuple(options.data.image_shape), options.data.target_or_image_shape, options.data.near, options.data.far


def default_index(data: str, index: str | None) -> str:
    if index is not None:
        return index
    path = os.path.join(data, "evaluation_index.json")
    if not os.path.isfile(path):
        raise click.BadParameter(f"{data} has no evaluation_index.json; pass --index EVAL_INDEX.json",
                                 param_hint="--index")
    return path


def resolve_device(device: str, rank: int = 0):
    from torch_utils import run_control

    try:
        return run_control.resolve_device(device, rank)
    except run_control.DeviceUnavailable:
        raise click.BadParameter("no CUDA device is available", param_hint="--device") from None


def run_test(rank: int, world: int, args: dict) -> list[dict]:
    """This rank's evaluation; every rank returns all records (gathered in index order)."""
    import torch

    from reconstruction.dataset import EvaluationSet
    from reconstruction.evaluate import evaluate, gather_records
    from reconstruction.metrics import ImageMetrics
    from reconstruction.view_sampler import EvaluationIndex

    device = resolve_device(args["device"], rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _, snapshot = load_network(args["snapshot"], device)
    index = EvaluationIndex(args["index"])
    keys = index.keys()[:args["limit"]] if args["limit"] is not None else index.keys()
    dataset = EvaluationSet(args["data"], args["split"], index, image_shape=args["image_shape"], near=args["near"],
                            far=args["far"], rank=rank, world_size=world, target_shape=args["target_shape"])
    dataset.keys = [k for k in dataset.keys if k in set(keys)]
    metrics = ImageMetrics(("vgg",), device=device)
    records = evaluate(snapshot["encoder"], dataset, metrics, num_context=args["num_context"],
                       backend=args["backend"], device=device, progress=rank == 0,
                       save_images=args.get("save_images"), densifier=snapshot.get("densifier"))
    return gather_records(records, index.keys())


def _test_worker(rank: int, init_method: str, world: int, args: dict) -> list[dict]:
    import torch

    from torch_utils import distributed

    device = resolve_device(args["device"], rank)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    distributed.init(rank, world, device, init_method)
    try:
        records = run_test(rank, world, args)
        distributed.barrier()
        return records
    finally:
        distributed.cleanup()


@cli.command(help="Evaluate a snapshot: per-scene PSNR / SSIM / LPIPS and the nearest-context baseline. For a run "
                  "with generative densification: the fine (method) and coarse figures, and the best-of-both "
                  "oracle under its own label (it chooses with the targets: not a method number).")
@click.option("--network", required=True, metavar="PT|DIR", help="Snapshot or run directory (its latest).")
@click.option("--data", required=True, metavar="DIR", help="Chunk dataset root.")
@click.option("--index", metavar="JSON", help="Evaluation index [DATA/evaluation_index.json].")
@click.option("--split", default="test", show_default=True, help="Dataset split.")
@click.option("--experiment", type=click.Choice(list(EXPERIMENTS)),
              help="Image size and depth range of this preset [the snapshot's training options].")
@click.option("--target-resolution", type=ShapeType(),
              help="Size the target views are rendered and scored at, H or HxW [the snapshot's training options' "
                   "target size, else its image size].")
@click.option("--num-context", type=click.IntRange(min=2), default=2, show_default=True,
              help="Context views per scene (the first N of each index entry).")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True, help="Processes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N scenes of the index.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="auto", show_default=True)
@click.option("--save-images", metavar="DIR", help="Also write every rendered target view as DIR/KEY/NNNNNN.png.")
def test(network, data, index, split, experiment, target_resolution, num_context, gpus, device, limit, backend,
         save_images):
    from reconstruction.evaluate import check_num_context, summarize, summary_line, write_jsonl
    from reconstruction.view_sampler import EvaluationIndex
    from torch_utils import distributed

    try:
        snapshot_path, snapshot = load_network(network, "cpu")
        image_shape, target_shape, near, far = view_options(snapshot, experiment)
        target_shape = target_resolution or target_shape
        if snapshot.get("densifier") is not None:
            snapshot["densifier"].counts(num_context, *image_shape)  # k_num within H*W at this image size
        _check_data_root(data, split, "--data")
        index_path = default_index(data, index)
        check_num_context(EvaluationIndex(index_path), num_context)
        _check_devices(device, gpus)
        del snapshot
        args = dict(snapshot=snapshot_path, data=data, index=index_path, split=split, image_shape=image_shape,
                    target_shape=target_shape, near=near, far=far, num_context=num_context, device=device,
                    limit=limit, backend=backend, save_images=save_images)
        if gpus == 1:
            records = run_test(0, 1, args)
        else:
            records = distributed.spawn(_test_worker, gpus, args=(gpus, args))[0]
        out = os.path.join(os.path.dirname(os.path.abspath(snapshot_path)), f"metric-recon-{split}.jsonl")
        write_jsonl(out, records)
        click.echo(f"per-scene results: {out}")
        click.echo(summary_line(summarize(records, snapshot_path, split)))
    except user_errors() as error:
        raise click.ClickException(str(error)) from None


@cli.command(help="Render a video along the context cameras (colour | depth) and a .ply of one reconstruction.")
@click.option("--network", required=True, metavar="PT|DIR", help="Snapshot or run directory (its latest).")
@click.option("--data", required=True, metavar="DIR", help="Chunk dataset root.")
@click.option("--split", default="test", show_default=True, help="Dataset split.")
@click.option("--key", help="Scene key (context from --context or its evaluation index entry).")
@click.option("--index-entry", type=click.IntRange(min=0), help="The N-th scene of the evaluation index.")
@click.option("--index", metavar="JSON", help="Evaluation index [DATA/evaluation_index.json].")
@click.option("--context", type=IntListType(), help="Context frame indices, e.g. 3,15 [the index entry's].")
@click.option("--experiment", type=click.Choice(list(EXPERIMENTS)),
              help="Image size and depth range of this preset [the snapshot's training options].")
@click.option("--frames", type=click.IntRange(min=2), default=120, show_default=True)
@click.option("--extrapolate", type=click.FloatRange(min=0), default=0.25, show_default=True,
              help="Extend the path beyond both context cameras by this fraction of their distance.")
@click.option("--fps", type=click.FloatRange(min=1), default=30, show_default=True)
@click.option("--outdir", default="out", show_default=True, metavar="DIR")
@click.option("--ply/--no-ply", default=True, show_default=True, help="Also write KEY.ply.")
@click.option("--coarse", is_flag=True,
              help="Densified snapshot: render the encoder's coarse Gaussians instead of the fine ones.")
@click.option("--color-by-stage", is_flag=True,
              help="Densified snapshot: also write KEY-stages.mp4 / .ply, every Gaussian coloured by its stage "
                   "(unselected coarse grey, stage 1 red, 2 green, 3 blue).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="auto", show_default=True)
def render(network, data, split, key, index_entry, index, context, experiment, frames, extrapolate, fps, outdir,
           ply, coarse, color_by_stage, device, backend):
    from reconstruction import media

    try:
        if (key is None) == (index_entry is None):
            raise click.UsageError("pass exactly one of --key KEY and --index-entry N")
        dev = resolve_device(device)
        snapshot_path, snapshot = load_network(network, dev)
        image_shape, _, near, far = view_options(snapshot, experiment)
        densifier = snapshot.get("densifier")
        if densifier is None and color_by_stage:  # (--coarse of such a snapshot is its only reconstruction)
            raise click.BadParameter(f"{snapshot_path} was trained without generative densification: it has no "
                                     f"stages to colour", param_hint="--color-by-stage")
        _check_data_root(data, split, "--data")
        key, context = resolve_render_scene(data, index, key, index_entry, context)
        if densifier is not None:
            densifier.counts(len(context), *image_shape)  # k_num within H*W at this image size
        views = media.load_scene_views(data, split, key, context, image_shape, near, far)
        os.makedirs(outdir, exist_ok=True)
        written = media.render_reconstruction(snapshot["encoder"], views, outdir, key, frames=frames,
                                              extrapolate=extrapolate, fps=fps, ply=ply, backend=backend,
                                              device=dev, densifier=densifier, coarse=coarse,
                                              stages=color_by_stage)
    except user_errors() as error:
        raise click.ClickException(str(error)) from None
    for path in written:
        click.echo(path)


def resolve_render_scene(data: str, index: str | None, key: str | None, index_entry: int | None,
                         context: list[int] | None) -> tuple[str, list[int]]:
    """(key, context frames) from --index-entry or --key (+ --context, else the key's index entry)."""
    from reconstruction.view_sampler import EvaluationIndex

    if key is not None and context is not None:
        return key, context
    evaluation = EvaluationIndex(default_index(data, index))
    if index_entry is not None:
        keys = evaluation.keys()
        if index_entry >= len(keys):
            raise click.BadParameter(f"{evaluation.path} has {len(keys)} entries; got {index_entry}",
                                     param_hint="--index-entry")
        key = keys[index_entry]
    elif key not in evaluation:
        raise click.BadParameter(f"{evaluation.path} has no entry for key {key!r}; pass --context i,j",
                                 param_hint="--key")
    frames = evaluation.views(key)[0].tolist()
    return key, context if context is not None else frames


if __name__ == "__main__":
    cli()
