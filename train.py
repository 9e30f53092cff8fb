"""Train a GSGAN model (EG3D/GSGAN option names; see docs/official-release.md and _scripts/train_*.sh).

Examples:

\b
  # Quick CPU run on the built-in synthetic dataset (built into the cache on first use):
  python train.py --outdir=training-runs --cfg=shapes --device=cpu --kimg=2
\b
  # Official FFHQ 256 configuration (4 GPUs):
  python train.py --outdir=training-runs --cfg=ffhq --data=ffhq256.zip --gpus=4 --batch=32 --gamma=1 \\
      --gen_pose_cond=True --neural_rendering_resolution_initial=256 --metrics=fid2k_full --blur_fade_kimg=200 \\
      --kimg=15000 --gaussian_num_pts=256 --start_pe=True --gpc_reg_prob=0.5 --center_dists=1.0 \\
      --prob_uniform=0.5 --res_end=128
\b
  # Print the resolved options and model sizes without training:
  python train.py --outdir=training-runs --cfg=ffhq --gpus=4 --batch=32 --dry-run

Boolean options accept both --opt=True/False (EG3D style) and --opt / --no-opt.
"""
from __future__ import annotations

import json
import math
import os

import click

from splatting.backends import BACKENDS
from torch_utils.checkpoint import SnapshotError
from training.config import (AUGMENT_MODES, BACKDROP_MODES, CFG_DEFAULTS, CFG_NAMES, DEVICES, GENERATOR_ARCHS,
                             NONFINITE_MODES, AugmentConfig, ConfigError, DataConfig, DiscriminatorConfig,
                             GeneratorConfig, LossConfig, OptimConfig, TrainConfig)
from training.dataset import DatasetError, ImageFolderDataset
from training.output_paths import OutputPathError, check_output_dir

SHAPES = CFG_DEFAULTS["shapes"]
BACKEND_CHOICES = ["auto", *BACKENDS]
# Errors a user can cause (bad data, snapshot, output folder, full disk): one line and exit status 1, no traceback.
USER_ERRORS = (DatasetError, SnapshotError, OutputPathError, ConfigError)


class BoolType(click.ParamType):
    """True/False, yes/no, 1/0 (EG3D scripts write --gen_pose_cond=True)."""

    name = "bool"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        self.fail(f"expected True or False, got {value!r}", param, ctx)


class MetricList(click.ParamType):
    """Comma-separated metric names checked against the metrics registry; 'none' disables metrics."""

    name = "list"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        names = [name.strip() for name in str(value).split(",") if name.strip()]
        if not names or names == ["none"]:
            return ()
        from metrics import metric_main  # noqa: deferred

        bad = [name for name in names if not metric_main.is_valid_metric(name)]
        if bad:
            self.fail(f"unknown metric(s) {', '.join(bad)}; {metric_main.valid_metrics_message()}", param, ctx)
        return tuple(names)


class FiniteFloat(click.FloatRange):
    """A float option, optionally bounded, that refuses NaN and inf: click's FloatRange lets NaN through every
    bound (all comparisons with NaN are false), and one NaN option would only surface minutes into set-up."""

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"expected a finite number, got {value!r}", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        if self.min is None and self.max is None:
            return "finite"
        return super()._describe_range()


class GridType(click.ParamType):
    """COLSxROWS, e.g. 4x2."""

    name = "grid"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            cols, rows = (int(v) for v in str(value).lower().split("x"))
        except ValueError:
            self.fail(f"expected COLSxROWS such as 4x2, got {value!r}", param, ctx)
        if cols < 1 or rows < 1:
            self.fail(f"expected positive sizes, got {value!r}", param, ctx)
        return cols, rows


BOOL = BoolType()


def bool_option(name: str, help: str, default=None):
    """--name[=True|False] plus a hidden --no-name flag."""
    dest = name.lstrip("-").replace("-", "_")

    def decorate(fn):
        fn = click.option(f"--no-{name.lstrip('-')}", f"no_{dest}", is_flag=True, hidden=True)(fn)
        return click.option(f"--{name.lstrip('-')}", dest, type=BOOL, is_flag=False, flag_value=True,
                            default=default, help=help + " [True/False]")(fn)
    return decorate


@click.command(help=__doc__)
@click.option("--outdir", required=True, metavar="DIR", help="Where run directories NNNNN-desc/ are created.")
@click.option("--cfg", required=True, type=click.Choice(CFG_NAMES), help="Base config.")
@click.option("--data", metavar="[ZIP|DIR]", help="Training data (optional for --cfg=shapes and --dry-run).")
@click.option("--gpus", type=click.IntRange(min=1), default=TrainConfig.num_gpus, show_default=True,
              help="Processes (GPUs; CPU processes with --device=cpu).")
@click.option("--batch", type=click.IntRange(min=1),
              help=f"Total batch size [default: {TrainConfig.batch_size}; shapes: {SHAPES['batch']}].")
@click.option("--gamma", type=FiniteFloat(min=0),
              help=f"R1 weight [{LossConfig.r1_gamma:g}; shapes: {SHAPES['gamma']}].")
@bool_option("cond", "Use the camera labels (required by GSGAN).", default=DataConfig.use_labels)
@bool_option("mirror", "Enable dataset x-flips.", default=DataConfig.mirror)
@click.option("--aug", type=click.Choice(AUGMENT_MODES), default=AugmentConfig.mode, show_default=True)
@click.option("--p", "aug_p", type=FiniteFloat(0, 1), default=AugmentConfig.p, show_default=True,
              help="Augmentation probability for --aug=fixed.")
@click.option("--target", type=FiniteFloat(0, 1), default=AugmentConfig.target, show_default=True, help="ADA target.")
@click.option("--resume", metavar="[PT|DIR]", help="Resume from a snapshot or a run directory's latest one.")
@bool_option("resume_blur", "Compat resume: keep the blur fade.", default=LossConfig.resume_blur)
@click.option("--batch-gpu", type=click.IntRange(min=1), help="Batch per process [default: batch/gpus].")
@click.option("--cbase", type=click.IntRange(min=1),
              help=f"Capacity multiplier (D; G uses cbase/4) [{DiscriminatorConfig.channel_base}].")
@click.option("--cmax", type=click.IntRange(min=1),
              help=f"Max. feature maps (G and D) [{GeneratorConfig.channel_max}].")
@click.option("--glr", type=FiniteFloat(min=0), help=f"G learning rate [{OptimConfig.glr}; shapes: {SHAPES['glr']}].")
@click.option("--dlr", type=FiniteFloat(min=0), help=f"D learning rate [{OptimConfig.dlr}; shapes: {SHAPES['dlr']}].")
@click.option("--arch", type=click.Choice(list(GENERATOR_ARCHS)), default=GeneratorConfig.arch, show_default=True,
              help="Generator: the GSGAN hierarchy, or the naive flat baseline (same mapping network and number of "
                   "Gaussians, no hierarchy, constraints or anchors).")
@click.option("--backdrop", type=click.Choice(BACKDROP_MODES),
              help=f"What G draws behind the object: off (black), field (a learned backdrop at infinity, starting "
                   f"from the dataset's border colour), auto (off on a uniform black border, else field; with "
                   f"--resume: the snapshot's) [{GeneratorConfig.backdrop}; shapes: {SHAPES['backdrop']}].")
@click.option("--map-depth", type=click.IntRange(min=1), default=GeneratorConfig.map_depth, show_default=True,
              help="Mapping layers.")
@click.option("--mbstd-group", type=click.IntRange(min=1), default=DiscriminatorConfig.mbstd_group_size,
              show_default=True)
@click.option("--desc", default=TrainConfig.desc, help="String appended to the run directory name.")
@click.option("--metrics", type=MetricList(), default="none", show_default=True,
              help="Comma-separated metrics at each network snapshot, or none.")
@click.option("--kimg", type=FiniteFloat(min=0, min_open=True),
              help=f"Training length [{TrainConfig.total_kimg:g}; shapes: {SHAPES['kimg']:g}].")
@click.option("--tick", type=FiniteFloat(min=0, min_open=True),
              help=f"kimg per tick [{TrainConfig.kimg_per_tick:g}; shapes: {SHAPES['tick']:g}].")
@click.option("--snap", type=click.IntRange(min=0),
              help=f"Ticks between snapshots (0: only at the end) [{TrainConfig.snapshot_ticks}; "
                   f"shapes: {SHAPES['snap']}].")
@click.option("--image-snap", type=click.IntRange(min=0), help="Ticks between image grids [= --snap].")
@click.option("--seed", type=click.IntRange(min=0), default=TrainConfig.seed, show_default=True)
@click.option("--workers", type=click.IntRange(min=0),
              help=f"DataLoader workers per process [{DataConfig.workers}; shapes: {SHAPES['workers']}].")
@click.option("--dry-run", "-n", is_flag=True, help="Print the resolved options and model sizes, then exit.")
@click.option("--neural_rendering_resolution_initial", "nrr", type=click.IntRange(min=1),
              help="Render resolution (must equal the dataset resolution).")
@bool_option("gen_pose_cond", "Generator pose conditioning.", default=GeneratorConfig.gen_pose_cond)
@click.option("--c-scale", "c_scale", type=FiniteFloat(), default=GeneratorConfig.c_scale, show_default=True,
              help="Scale of G's pose label.")
@click.option("--gpc_reg_prob", type=FiniteFloat(0, 1),
              help=f"Final pose-swap probability [ffhq {CFG_DEFAULTS['ffhq']['gpc_reg_prob']}, "
                   f"afhq {CFG_DEFAULTS['afhq']['gpc_reg_prob']}].")
@click.option("--gpc_reg_fade_kimg", type=FiniteFloat(min=0), default=LossConfig.gpc_reg_fade_kimg, show_default=True)
@click.option("--blur_fade_kimg", type=FiniteFloat(min=0),
              help=f"Blur fade (x batch/32) [{LossConfig.blur_fade_kimg:g}; "
                   f"shapes: {SHAPES['blur_fade_kimg']:g} = off].")
@click.option("--style_mixing_prob", type=FiniteFloat(0, 1), default=LossConfig.style_mixing_prob, show_default=True)
@click.option("--gaussian_num_pts", type=click.IntRange(min=4),
              help=f"Initial points P0 [{GeneratorConfig.num_points}; shapes: {SHAPES['gaussian_num_pts']}].")
@bool_option("start_pe", "Positional encoding of the initial points.", default=GeneratorConfig.start_pe)
@click.option("--res_end", type=click.IntRange(min=8),
              help=f"Point-generator end resolution [{GeneratorConfig.res_end}; shapes: {SHAPES['res_end']}].")
@click.option("--center_dists", type=FiniteFloat(min=0),
              help=f"Centre regularizer weight [ffhq {CFG_DEFAULTS['ffhq']['center_dists']:g}, "
                   f"afhq {CFG_DEFAULTS['afhq']['center_dists']:g}].")
@click.option("--knn_dists", type=FiniteFloat(min=0), default=LossConfig.knn_weight, show_default=True)
@click.option("--knn_num_ks", type=click.IntRange(min=1), default=LossConfig.knn_k, show_default=True)
@click.option("--pose_contrastive", type=FiniteFloat(min=0), default=LossConfig.pose_contrastive_weight,
              show_default=True, help="Pose-contrastive weight (independent of --gpus unless --compat).")
@click.option("--prob_uniform", type=FiniteFloat(0, 1),
              help=f"FFHQ pose augmentation of gen_c [ffhq {CFG_DEFAULTS['ffhq']['prob_uniform']}].")
@click.option("--background_kimg", type=FiniteFloat(min=0),
              help=f"Background on after this [{LossConfig.background_start_kimg:g}; shapes: none built].")
@click.option("--d_num_fp16_res", type=click.IntRange(min=0), default=DiscriminatorConfig.num_fp16_res,
              show_default=True)
@click.option("--g_num_fp16_res", type=click.IntRange(min=0), default=0, show_default=True,
              help="Accepted for compatibility; the official G ignores it (G runs in fp32).")
@click.option("--grid", type=GridType(), help="Image grid COLSxROWS [official size; shapes: 4x2].")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="Rasterizer backend.")
@bool_option("compat", "Reproduce the official quirks (docs/official-release.md).", default=TrainConfig.compat)
@click.option("--device", type=click.Choice(DEVICES), default=TrainConfig.device, show_default=True)
@click.option("--nonfinite", type=click.Choice(NONFINITE_MODES), default=TrainConfig.nonfinite, show_default=True,
              help="On a NaN/inf loss or gradient: stop with a snapshot, or replace and continue (official).")
def main(**opts):
    opts = merge_bool_flags(opts)
    dry_run = opts.pop("dry_run")
    try:
        config = build_config(opts, dry_run=dry_run)
        if dry_run:
            click.echo(describe(config))
            return
        from training import training_loop

        result = training_loop.launch(config)
    except USER_ERRORS as error:  # met during set-up or training (an image in a worker, a full disk)
        raise click.ClickException(str(error)) from None
    if result.status == "fault":
        raise click.ClickException(result.message)
    click.echo(f"{result.status}: {result.run_dir} (kimg {result.cur_nimg / 1e3:.3f}); "
               f"last snapshot: {result.snapshot}")
    if result.exit_status:  # interrupted: a distinct status, so scripts can tell it from a finished run
        raise SystemExit(result.exit_status)


# ---------------------------------------------------------------------------------------------- option resolution
def merge_bool_flags(opts: dict) -> dict:
    """Fold the hidden --no-X flags into X (error when both --X=True and --no-X are given)."""
    opts = dict(opts)
    for key in [k for k in opts if k.startswith("no_") and k[3:] in opts]:
        negated = opts.pop(key)
        if negated:
            if opts[key[3:]] is True:
                raise click.UsageError(f"--{key[3:]} and --no-{key[3:]} contradict each other")
            opts[key[3:]] = False
    return opts


def _pick(opts: dict, key: str, preset: dict, fallback, preset_key: str | None = None):
    """The option value if given, else the cfg preset, else `fallback` (the config dataclass's default)."""
    value = opts.get(key)
    if value is not None:
        return value
    return preset.get(preset_key or key, fallback)


def shapes_dataset(resolution: int, count: int) -> str:
    """The built-in synthetic dataset (dataset_tool.py synth --poses ffhq), built once into the cache."""
    import dnnlib

    path = os.path.join(dnnlib.cache_dir("datasets"), f"shapes-ffhq-{resolution}px-{count}.zip")
    if not os.path.isfile(path):
        import dataset_tool

        click.echo(f"building the synthetic dataset {path} ...")
        dataset_tool.synth.main(["--poses", "ffhq", "--count", str(count), "--resolution", str(resolution),
                                 "--seed", "0", "--dest", path], standalone_mode=False)
    return path


def resolve_data(opts: dict, preset: dict, dry_run: bool) -> DataConfig:
    """DataConfig with the dataset's resolution (only the header is read); cfg default when dry-running."""
    path = opts.get("data")
    if path is None and opts["cfg"] == "shapes" and not dry_run:
        path = shapes_dataset(opts.get("nrr") or preset["resolution"], preset["dataset_count"])
    if path is None and not dry_run:
        raise click.BadParameter("required (except for --cfg=shapes and --dry-run)", param_hint="--data")
    resolution, fingerprint = 0, ""
    if path is not None and (os.path.exists(path) or not dry_run):
        try:
            dataset = ImageFolderDataset(path, use_labels=opts["cond"], xflip=opts["mirror"])
        except (DatasetError, OSError) as error:
            raise click.BadParameter(str(error), param_hint="--data") from None
        resolution, fingerprint = dataset.resolution, dataset.fingerprint()
        dataset.close()
    resolution = resolution or opts.get("nrr") or preset["resolution"]
    workers = _pick(opts, "workers", preset, DataConfig.workers)
    return DataConfig(path=os.path.abspath(path) if path else "", resolution=resolution, mirror=opts["mirror"],
                      use_labels=opts["cond"], workers=workers, fingerprint=fingerprint)


# Images whose outer ring decides --backdrop (evenly spaced over the dataset): enough for the medians of
# dataset_tool.border_statistics, few enough to read in a moment at any resolution.
BACKDROP_SAMPLE_IMAGES = 64


def resolve_backdrop(opts: dict, preset: dict, data: DataConfig) -> tuple[str, tuple[float, float, float]]:
    """(--backdrop resolved to off / field, its starting colour). The dataset's border (the reading of
    `dataset_tool.py info`) decides auto and gives field its colour; with --resume, auto takes the snapshot's
    choice, so runs started before the option existed resume as they were. No dataset to read (a dry run
    without --data): auto is off, the colour black."""
    mode = _pick(opts, "backdrop", preset, GeneratorConfig.backdrop)
    if mode == "off":
        return mode, GeneratorConfig.backdrop_color
    if mode == "auto" and opts.get("resume"):
        from torch_utils.checkpoint import read_snapshot_dict, resolve_snapshot

        try:
            kwargs = read_snapshot_dict(resolve_snapshot(opts["resume"]))["G"]["init_kwargs"]
        except SnapshotError as error:
            raise click.BadParameter(str(error), param_hint="--resume") from None
        except (KeyError, TypeError):  # not a training snapshot: check_resume names what is wrong
            return "off", GeneratorConfig.backdrop_color
        return kwargs.get("backdrop", "off"), tuple(kwargs.get("backdrop_color", GeneratorConfig.backdrop_color))
    if not data.path or not os.path.exists(data.path):
        return ("off" if mode == "auto" else mode), GeneratorConfig.backdrop_color
    import numpy as np

    import dataset_tool

    dataset = ImageFolderDataset(data.path, use_labels=False)
    try:
        picks = np.unique(np.linspace(0, len(dataset) - 1, BACKDROP_SAMPLE_IMAGES).round().astype(int))
        stats = dataset_tool.border_statistics(np.stack([dataset[int(i)][0] for i in picks]))
    finally:
        dataset.close()
    if mode == "auto":
        mode = "off" if dataset_tool.describe_backdrop(stats) == "uniform black" else "field"
    color = tuple(round(float(v) / 255, 4) for v in stats["color"]) if mode == "field" else \
        GeneratorConfig.backdrop_color
    return mode, color


def build_config(opts: dict, dry_run: bool = False) -> TrainConfig:
    """The full TrainConfig from CLI options (cfg presets filled in, every other default the config dataclasses'),
    validated before any expensive work: options, output folder, dataset, --resume snapshot, device, backend."""
    preset = CFG_DEFAULTS[opts["cfg"]]
    if not opts["cond"]:
        raise click.BadParameter("GSGAN needs the camera labels; --cond=False is not supported", param_hint="--cond")
    if opts.get("g_num_fp16_res"):
        click.echo("note: --g_num_fp16_res is ignored (the official G ignores it too; G runs in fp32)", err=True)
    if not dry_run:  # before the dataset is opened (or the shapes dataset built)
        try:
            check_output_dir(opts["outdir"], "--outdir")
        except OutputPathError as error:
            raise click.UsageError(str(error)) from None
    data = resolve_data(opts, preset, dry_run)
    batch = _pick(opts, "batch", preset, TrainConfig.batch_size)
    cbase = _pick(opts, "cbase", preset, DiscriminatorConfig.channel_base)
    cmax = _pick(opts, "cmax", preset, GeneratorConfig.channel_max)
    g_extra = dict(preset.get("G_extra", {}), rendering_backend=opts["backend"])
    backdrop, backdrop_color = resolve_backdrop(opts, preset, data)
    generator = GeneratorConfig(
        arch=opts["arch"], num_points=_pick(opts, "gaussian_num_pts", preset, GeneratorConfig.num_points),
        res_end=_pick(opts, "res_end", preset, GeneratorConfig.res_end),
        channel_base=max(cbase // 4, 1), channel_max=cmax, map_depth=opts["map_depth"],
        gen_pose_cond=opts["gen_pose_cond"], c_scale=opts["c_scale"], start_pe=opts["start_pe"],
        neural_rendering_resolution=opts.get("nrr") or data.resolution, backdrop=backdrop,
        backdrop_color=backdrop_color, extra=g_extra)
    discriminator = DiscriminatorConfig(channel_base=cbase, channel_max=cmax, mbstd_group_size=opts["mbstd_group"],
                                        num_fp16_res=opts["d_num_fp16_res"])
    loss = LossConfig(
        r1_gamma=_pick(opts, "gamma", preset, LossConfig.r1_gamma), pose_contrastive_weight=opts["pose_contrastive"],
        knn_weight=opts["knn_dists"], knn_k=opts["knn_num_ks"],
        center_weight=_pick(opts, "center_dists", preset, LossConfig.center_weight),
        blur_fade_kimg=_pick(opts, "blur_fade_kimg", preset, LossConfig.blur_fade_kimg) * batch / 32,  # as EG3D
        gpc_reg_prob=_pick(opts, "gpc_reg_prob", preset, LossConfig.gpc_reg_prob),
        gpc_reg_fade_kimg=opts["gpc_reg_fade_kimg"],
        prob_uniform=_pick(opts, "prob_uniform", preset, LossConfig.prob_uniform),
        background_start_kimg=_pick(opts, "background_kimg", preset, LossConfig.background_start_kimg),
        style_mixing_prob=opts["style_mixing_prob"], resume_blur=opts["resume_blur"])
    snap = _pick(opts, "snap", preset, TrainConfig.snapshot_ticks)
    try:
        config = TrainConfig(
            cfg=opts["cfg"], compat=opts["compat"], outdir=opts["outdir"], desc=opts["desc"], seed=opts["seed"],
            num_gpus=opts["gpus"], batch_size=batch, batch_gpu=opts["batch_gpu"] or max(batch // opts["gpus"], 1),
            total_kimg=float(_pick(opts, "kimg", preset, TrainConfig.total_kimg)),
            kimg_per_tick=float(_pick(opts, "tick", preset, TrainConfig.kimg_per_tick)),
            snapshot_ticks=snap, image_snapshot_ticks=snap if opts["image_snap"] is None else opts["image_snap"],
            metrics=opts["metrics"], ema_kimg=TrainConfig.ema_kimg * batch / 32,  # the default is for batch 32
            grid_size=opts["grid"] or preset.get("grid"), device=opts["device"], resume=opts["resume"] or "",
            nonfinite=opts["nonfinite"], data=data, G=generator, D=discriminator, loss=loss,
            optim=OptimConfig(glr=_pick(opts, "glr", preset, OptimConfig.glr),
                              dlr=_pick(opts, "dlr", preset, OptimConfig.dlr)),
            augment=AugmentConfig(mode=opts["aug"], p=opts["aug_p"], target=opts["target"]))
        config.validate()
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    if config.resume:
        check_resume(config)
    if not dry_run:
        _check_environment(config)
    return config


def build_on_meta(cls, kwargs: dict):
    """cls(**kwargs) on the meta device: exact sizes and init_kwargs without allocating or initialising weights.
    A constructor refusing its sizes is a usage error."""
    import torch

    try:
        with torch.device("meta"):
            return cls(**kwargs)
    except ValueError as error:
        raise click.UsageError(str(error).splitlines()[0]) from None


def planned_modules(config: TrainConfig) -> dict:
    """The networks this run builds ({"G", "D", "G_ema", "augment_pipe"}; None when not used), on the meta device,
    built from the same keyword arguments as the training loop's."""
    from training.augment import AugmentPipe
    from training.discriminator import Discriminator

    G = build_on_meta(config.generator_class(), config.generator_kwargs())
    D = build_on_meta(Discriminator, config.discriminator_kwargs())
    augment_pipe = None if config.augment.mode == "noaug" else build_on_meta(AugmentPipe, {})
    return {"G": G, "D": D, "G_ema": G, "augment_pipe": augment_pipe}


def check_resume(config: TrainConfig) -> None:
    """--resume: the snapshot must hold everything this run resumes (same architecture, optimizer states, counters)
    and be short of --kimg; refused in one line before a run folder exists."""
    from torch_utils.checkpoint import check_training_snapshot, resolve_snapshot

    try:
        path = resolve_snapshot(config.resume)
        data = check_training_snapshot(path, planned_modules(config))
    except SnapshotError as error:
        raise click.BadParameter(str(error), param_hint="--resume") from None
    reached = data["progress"]["cur_nimg"]
    if reached >= config.total_kimg * 1000:
        raise click.BadParameter(f"{path} is already at kimg {reached / 1e3:g}: nothing left to train (ask for more "
                                 f"than that)", param_hint="--kimg")


def _check_environment(config: TrainConfig) -> None:
    """Device, process count and rasterizer backend usable here (before the run folder is created)."""
    import torch

    from torch_utils import distributed
    from torch_utils.run_control import resolve_device
    from training.generator import check_backend_usable

    if config.device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("no CUDA device is available", param_hint="--device")
    uses_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if uses_cuda and not distributed.launched_by_torchrun() and config.num_gpus > torch.cuda.device_count():
        raise click.BadParameter(f"{config.num_gpus} requested but only {torch.cuda.device_count()} CUDA "
                                 f"device(s) are visible", param_hint="--gpus")
    try:
        check_backend_usable(config.G.extra.get("rendering_backend", "auto"), resolve_device(config.device))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--backend") from None


def describe(config: TrainConfig) -> str:
    """Resolved options (JSON) and a model summary: exact parameter counts, Gaussians per level."""
    from torch_utils import misc

    modules = planned_modules(config)
    G, D = modules["G"], modules["D"]
    counts = G.gaussian_counts()
    summary = {
        "G_parameters": misc.count_parameters(G), "D_parameters": misc.count_parameters(D),
        "gaussians_per_level": counts["levels"], "rendered_foreground_gaussians": counts["foreground"],
        "anchor_gaussians": counts["anchors"], "anchors_per_level": counts["anchor_levels"],
        "background_gaussians": counts["background"], "total_rendered_gaussians": counts["total"],
        "num_ws": G.num_ws, "batch_per_process": config.batch_gpu, "accumulation_rounds": config.rounds,
    }
    lines = ["Training options:", config.to_json(), "", "Model summary:", json.dumps(summary, indent=2), "",
             misc.parameter_table(G, "G"), "", misc.parameter_table(D, "D"), "",
             f"Output directory: {config.outdir} (not created: dry run)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
