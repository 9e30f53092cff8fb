"""Train a GSGAN model (EG3D/GSGAN option names; see docs/official-gsgan.md and _scripts/train_*.sh).

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
import os

import click

from training.config import (CFG_DEFAULTS, AugmentConfig, ConfigError, DataConfig, DiscriminatorConfig,
                             GeneratorConfig, LossConfig, OptimConfig, TrainConfig)


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
@click.option("--cfg", required=True, type=click.Choice(["ffhq", "afhq", "shapenet", "shapes"]), help="Base config.")
@click.option("--data", metavar="[ZIP|DIR]", help="Training data (optional for --cfg=shapes and --dry-run).")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes (GPUs; CPU processes with --device=cpu).")
@click.option("--batch", type=click.IntRange(min=1), help="Total batch size [default: 32; shapes: 8].")
@click.option("--gamma", type=click.FloatRange(min=0), help="R1 weight [1; shapes: 0.1].")
@bool_option("cond", "Use the camera labels (required by GSGAN).", default=True)
@bool_option("mirror", "Enable dataset x-flips.", default=False)
@click.option("--aug", type=click.Choice(["noaug", "ada", "fixed"]), default="noaug", show_default=True)
@click.option("--p", "aug_p", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="Augmentation probability for --aug=fixed.")
@click.option("--target", type=click.FloatRange(0, 1), default=0.6, show_default=True, help="ADA target.")
@click.option("--resume", metavar="[PT|DIR]", help="Resume from a snapshot or a run directory's latest one.")
@bool_option("resume_blur", "Compat resume: keep the blur fade.", default=False)
@click.option("--batch-gpu", type=click.IntRange(min=1), help="Batch per process [default: batch/gpus].")
@click.option("--cbase", type=click.IntRange(min=1), help="Capacity multiplier (D; G uses cbase/4) [32768].")
@click.option("--cmax", type=click.IntRange(min=1), help="Max. feature maps (G and D) [512].")
@click.option("--glr", type=click.FloatRange(min=0), help="G learning rate [0.0025; shapes: 0.005].")
@click.option("--dlr", type=click.FloatRange(min=0), help="D learning rate [0.002; shapes: 0.004].")
@click.option("--map-depth", type=click.IntRange(min=1), default=2, show_default=True, help="Mapping layers.")
@click.option("--mbstd-group", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--desc", default="", help="String appended to the run directory name.")
@click.option("--metrics", type=MetricList(), default="none", show_default=True,
              help="Comma-separated metrics at each network snapshot, or none.")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), help="Training length [15000; shapes: 50].")
@click.option("--tick", type=click.FloatRange(min=0, min_open=True), help="kimg per tick [4; shapes: 1].")
@click.option("--snap", type=click.IntRange(min=0), help="Ticks between snapshots (0: only at the end) [50].")
@click.option("--image-snap", type=click.IntRange(min=0), help="Ticks between image grids [= --snap].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader workers per process [3; shapes: 1].")
@click.option("--dry-run", "-n", is_flag=True, help="Print the resolved options and model sizes, then exit.")
@click.option("--neural_rendering_resolution_initial", "nrr", type=click.IntRange(min=1),
              help="Render resolution (must equal the dataset resolution).")
@bool_option("gen_pose_cond", "Generator pose conditioning.", default=True)
@click.option("--c-scale", "c_scale", type=float, default=1.0, show_default=True, help="Scale of G's pose label.")
@click.option("--gpc_reg_prob", type=click.FloatRange(0, 1), help="Final pose-swap probability [ffhq 0.5, afhq 0.8].")
@click.option("--gpc_reg_fade_kimg", type=click.FloatRange(min=0), default=1000.0, show_default=True)
@click.option("--blur_fade_kimg", type=click.FloatRange(min=0), help="Blur fade (x batch/32) [200; shapes: 0 = off].")
@click.option("--style_mixing_prob", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--gaussian_num_pts", type=click.IntRange(min=4), help="Initial points P0 [256; shapes: 64].")
@bool_option("start_pe", "Positional encoding of the initial points.", default=True)
@click.option("--res_end", type=click.IntRange(min=8), help="Point-generator end resolution [128; shapes: 16].")
@click.option("--center_dists", type=click.FloatRange(min=0), help="Centre regularizer weight [ffhq 1, afhq 10].")
@click.option("--knn_dists", type=click.FloatRange(min=0), default=10.0, show_default=True)
@click.option("--knn_num_ks", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--pose_contrastive", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Pose-contrastive weight (independent of --gpus unless --compat).")
@click.option("--prob_uniform", type=click.FloatRange(0, 1), help="FFHQ pose augmentation of gen_c [ffhq 0.5].")
@click.option("--background_kimg", type=click.FloatRange(min=0),
              help="Background on after this [50; shapes: none built].")
@click.option("--d_num_fp16_res", type=click.IntRange(min=0), default=4, show_default=True)
@click.option("--g_num_fp16_res", type=click.IntRange(min=0), default=0, show_default=True,
              help="Accepted for compatibility; the official G ignores it (G runs in fp32).")
@click.option("--grid", type=GridType(), help="Image grid COLSxROWS [official size; shapes: 4x2].")
@click.option("--backend", type=click.Choice(["auto", "reference", "cpu", "gsplat", "inria"]), default="auto",
              show_default=True, help="Rasterizer backend.")
@bool_option("compat", "Reproduce the official quirks (docs/official-gsgan.md).", default=False)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--nonfinite", type=click.Choice(["stop", "replace"]), default="stop", show_default=True,
              help="On a NaN/inf loss or gradient: stop with a snapshot, or replace and continue (official).")
def main(**opts):
    opts = merge_bool_flags(opts)
    dry_run = opts.pop("dry_run")
    config = build_config(opts, dry_run=dry_run)
    if dry_run:
        click.echo(describe(config))
        return
    from training import training_loop

    result = training_loop.launch(config)
    if result.status == "fault":
        raise click.ClickException(result.message)
    click.echo(f"{result.status}: {result.run_dir} (kimg {result.cur_nimg / 1e3:.3f}); "
               f"last snapshot: {result.snapshot}")


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
    """The option value if given, else the cfg preset, else the official default."""
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
        from training.dataset import DatasetError, ImageFolderDataset

        try:
            dataset = ImageFolderDataset(path, use_labels=opts["cond"], xflip=opts["mirror"])
        except (DatasetError, OSError) as error:
            raise click.BadParameter(str(error), param_hint="--data") from None
        resolution, fingerprint = dataset.resolution, dataset.fingerprint()
        dataset.close()
    resolution = resolution or opts.get("nrr") or preset["resolution"]
    workers = _pick(opts, "workers", preset, 3)
    return DataConfig(path=os.path.abspath(path) if path else "", resolution=resolution, mirror=opts["mirror"],
                      use_labels=opts["cond"], workers=workers, fingerprint=fingerprint)


def build_config(opts: dict, dry_run: bool = False) -> TrainConfig:
    """The full TrainConfig from CLI options (cfg presets filled in), validated before any expensive work."""
    preset = CFG_DEFAULTS[opts["cfg"]]
    if not opts["cond"]:
        raise click.BadParameter("GSGAN needs the camera labels; --cond=False is not supported", param_hint="--cond")
    if opts.get("g_num_fp16_res"):
        click.echo("note: --g_num_fp16_res is ignored (the official G ignores it too; G runs in fp32)", err=True)
    data = resolve_data(opts, preset, dry_run)
    batch = _pick(opts, "batch", preset, 32)
    cbase, cmax = _pick(opts, "cbase", preset, 32768), _pick(opts, "cmax", preset, 512)
    g_extra = dict(preset.get("G_extra", {}), rendering_backend=opts["backend"])
    generator = GeneratorConfig(
        num_points=_pick(opts, "gaussian_num_pts", preset, 256), res_end=_pick(opts, "res_end", preset, 128),
        channel_base=max(cbase // 4, 1), channel_max=cmax, map_depth=opts["map_depth"],
        gen_pose_cond=opts["gen_pose_cond"], c_scale=opts["c_scale"], start_pe=opts["start_pe"],
        neural_rendering_resolution=opts.get("nrr") or data.resolution, extra=g_extra)
    discriminator = DiscriminatorConfig(channel_base=cbase, channel_max=cmax, mbstd_group_size=opts["mbstd_group"],
                                        num_fp16_res=opts["d_num_fp16_res"])
    loss = LossConfig(
        r1_gamma=_pick(opts, "gamma", preset, 1.0), pose_contrastive_weight=opts["pose_contrastive"],
        knn_weight=opts["knn_dists"],
        knn_k=opts["knn_num_ks"], center_weight=_pick(opts, "center_dists", preset, 1.0),
        blur_fade_kimg=_pick(opts, "blur_fade_kimg", preset, 200.0) * batch / 32,  # scaled like EG3D
        gpc_reg_prob=_pick(opts, "gpc_reg_prob", preset, 0.5), gpc_reg_fade_kimg=opts["gpc_reg_fade_kimg"],
        prob_uniform=_pick(opts, "prob_uniform", preset, 0.0),
        background_start_kimg=_pick(opts, "background_kimg", preset, 50.0),
        style_mixing_prob=opts["style_mixing_prob"], resume_blur=opts["resume_blur"])
    snap = _pick(opts, "snap", preset, 50)
    try:
        config = TrainConfig(
            cfg=opts["cfg"], compat=opts["compat"], outdir=opts["outdir"], desc=opts["desc"], seed=opts["seed"],
            num_gpus=opts["gpus"], batch_size=batch, batch_gpu=opts["batch_gpu"] or max(batch // opts["gpus"], 1),
            total_kimg=float(_pick(opts, "kimg", preset, 15000.0)), kimg_per_tick=float(_pick(opts, "tick", preset, 4.0)),
            snapshot_ticks=snap, image_snapshot_ticks=snap if opts["image_snap"] is None else opts["image_snap"],
            metrics=opts["metrics"], ema_kimg=batch * 10 / 32, ema_rampup=0.05,
            grid_size=opts["grid"] or preset.get("grid"), device=opts["device"], resume=opts["resume"] or "",
            nonfinite=opts["nonfinite"], data=data, G=generator, D=discriminator, loss=loss,
            optim=OptimConfig(glr=_pick(opts, "glr", preset, 0.0025),
                              dlr=_pick(opts, "dlr", preset, 0.002)),
            augment=AugmentConfig(mode=opts["aug"], p=opts["aug_p"], target=opts["target"]))
        config.validate()
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    _check_environment(config, dry_run)
    return config


def _check_environment(config: TrainConfig, dry_run: bool) -> None:
    if config.resume:
        from torch_utils.checkpoint import SnapshotError, resolve_snapshot

        try:
            resolve_snapshot(config.resume)
        except SnapshotError as error:
            raise click.BadParameter(str(error), param_hint="--resume") from None
    if dry_run:
        return
    import torch

    from torch_utils import distributed

    if config.device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("no CUDA device is available", param_hint="--device")
    uses_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if uses_cuda and not distributed.launched_by_torchrun() and config.num_gpus > torch.cuda.device_count():
        raise click.BadParameter(f"{config.num_gpus} requested but only {torch.cuda.device_count()} CUDA "
                                 f"device(s) are visible", param_hint="--gpus")


def describe(config: TrainConfig) -> str:
    """Resolved options (JSON) and a model summary: exact parameter counts, Gaussians per level."""
    import torch

    from torch_utils import misc
    from training.discriminator import Discriminator
    from training.generator import GSGenerator

    def build(cls, kwargs):
        try:
            with torch.device("meta"):  # exact sizes without allocating or initialising the weights
                return cls(**kwargs)
        except Exception:  # noqa: BLE001  a constructor that computes on its tensors: build it for real
            return cls(**kwargs)

    G = build(GSGenerator, config.generator_kwargs())
    D = build(Discriminator, config.discriminator_kwargs())
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
