"""Videos, still images and splat .ply files from a trained gsgan snapshot; `view` opens a .ply in the browser.

    python gen_videos.py --network SNAPSHOT --seeds 0-3 --grid 2x2 --trunc 0.7 --outdir out/
    python gen_videos.py view out/seed0000.ply

Writes into --outdir: seedAAAA-BBBB.mp4 (the grid video; -depth / -alpha suffix for other --image_mode values),
seedNNNN.ply per seed (--ply, default on) and seedNNNN.png per seed (--images). See training/video_utils.py for
the keyframe layout and training/media_export.py for the .ply frame.
"""
from __future__ import annotations

import os

import click

from splatting.backends import BACKENDS
from splatting.ply import MAX_SH_DEGREE, PLY_FRAMES
from training.precision import DTYPES, FORCE_ENV
from training.runtime_checks import check_runtime_choices
from viewer.cli import view
from training.generator import COMPAT_TRUNCATION_CUTOFF
from training.mp4_writer import check_bitrate, check_fps
from training.output_paths import OutputPathError, check_output_dir, make_output_dir, remove_empty
from training.video_utils import (CAMERA_PRESETS, IMAGE_MODES, MAX_FRAMES, MAX_LIST_LENGTH, MAX_RESOLUTION, MAX_SEEDS,
                                  TRAJECTORIES, parse_grid, parse_int_list)

BACKEND_CHOICES = ["auto", *BACKENDS]


class IntList(click.ParamType):
    """'0-3,7' -> [0, 1, 2, 3, 7] (inclusive ranges)."""

    name = "list"

    def __init__(self, what: str = "integer", maximum: int | None = None, max_count: int = MAX_LIST_LENGTH):
        self.what, self.maximum, self.max_count = what, maximum, max_count

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            values = parse_int_list(value, self.what, max_count=self.max_count)
        except ValueError as error:
            self.fail(str(error), param, ctx)
        if self.maximum is not None and max(values) > self.maximum:
            self.fail(f"{max(values)} is too large: a {self.what} must be at most {self.maximum}", param, ctx)
        return values


class Grid(click.ParamType):
    name = "COLSxROWS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_grid(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


class DefaultGroup(click.Group):
    """A group whose first command runs when the command line names none (`gen_videos.py --network ...`)."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["videos", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup)
def cli():
    """Render gsgan generators: `videos` (the default command) and `view` (interactive .ply viewer).

    \b
    python gen_videos.py --network SNAPSHOT --seeds 0-3 --grid 2x2 --trunc 0.7 --outdir out/
    python gen_videos.py view out/seed0000.ply
    """


def _checked(check):
    """A click callback from a checker that raises ValueError (the option's one-line error)."""
    def callback(ctx, param, value):
        try:
            return check(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
    return callback


def _device(name: str):
    """--device, resolved as by every CLI (run_control.resolve_device), as a usage error when CUDA is missing."""
    from torch_utils import run_control

    try:
        return run_control.resolve_device(name)
    except run_control.DeviceUnavailable:
        raise click.BadParameter("cuda requested but torch sees no CUDA device", param_hint="'--device'") from None


def _gs_params(G, res_visualize, point_index, num_init_near_point, visualize_anchor, opacity_ones, rendering_scale,
               disable_background, camera_cond):
    """GSParams for G, checked against G (GSParams.check_for) so that a bad flag fails before any rendering, as
    the one-line usage error of its option (the options are named like the GSParams fields)."""
    from training.gs_params import GSParams, GSParamsError

    try:
        gs_params = GSParams(res_visualize=res_visualize or None, point_index=point_index or None,
                             num_init_near_point=num_init_near_point, visualize_anchor=visualize_anchor,
                             opacity_ones=opacity_ones, rendering_scale=rendering_scale,
                             disable_background=disable_background, camera_cond=camera_cond)
        gs_params.check_for(G.gaussian_counts())
    except GSParamsError as error:
        raise click.BadParameter(error.reason, param_hint=f"'--{error.field}'") from None
    return gs_params


@cli.command("videos")
@click.option("--network", "-n", "network", required=True, metavar="PATH",
              help="snapshot file (network-snapshot-*.pt) or a run directory (its latest snapshot)")
@click.option("--seeds", type=IntList("seed", maximum=2**32 - 1, max_count=MAX_SEEDS), default="0-3",
              show_default=True, help=f"e.g. 0-3,7 (at most {MAX_SEEDS:,} seeds)")
@click.option("--grid", type=Grid(), default="1x1", show_default=True,
              help="COLSxROWS; len(seeds) must be a multiple of COLS*ROWS (the extra seeds become keyframes)")
@click.option("--trunc", "truncation_psi", type=float, default=1.0, show_default=True, help="truncation psi")
@click.option("--trunc-cutoff", "truncation_cutoff", type=click.IntRange(min=0), default=None,
              help="truncate only the first N ws [default: all ws; 14 for compat models, as the official script]")
@click.option("--outdir", required=True, type=click.Path(file_okay=False), help="where to write the results")
@click.option("--frames", "num_frames", type=click.IntRange(1, MAX_FRAMES), default=240, show_default=True,
              help="frames of the whole loop")
@click.option("--fps", default="60", show_default=True, callback=_checked(check_fps), help="frames per second")
@click.option("--bitrate", default="10M", show_default=True, callback=_checked(check_bitrate),
              help="H.264 bitrate (bits/s, e.g. 10M or 800k)")
@click.option("--cameras", "camera_preset", type=click.Choice(sorted(CAMERA_PRESETS)), default=None,
              help="camera radius / pivot / focal preset [default: from the snapshot's --cfg, else ffhq]")
@click.option("--trajectory", type=click.Choice(TRAJECTORIES), default=None,
              help="ffhq: EG3D's yaw/pitch wobble; orbit: full 360 degrees [default: orbit for shapenet, else ffhq]")
@click.option("--image_mode", "--image-mode", "image_mode", type=click.Choice(IMAGE_MODES), default="image",
              show_default=True, help="colour, negated normalized depth, or coverage")
@click.option("--nrr", type=click.IntRange(1, MAX_RESOLUTION), default=None,
              help="render resolution [default: the generator's]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="rasterizer (any snapshot renders with any backend; auto follows GSGAN_BACKEND, then gsplat on "
                   "CUDA, cpu on CPU)")
@click.option("--dtype", type=click.Choice(DTYPES), default="fp32", show_default=True,
              help="precision of the generator's feature networks; bf16 only where the device computes it natively "
                   f"(CUDA, CPUs with AVX-512 BF16 / AMX), else refused unless {FORCE_ENV}=1")
@click.option("--video/--no-video", default=True, show_default=True, help="write the grid video")
@click.option("--ply/--no-ply", default=True, show_default=True, help="write seedNNNN.ply (frontal-view Gaussians)")
@click.option("--ply-frame", type=click.Choice(PLY_FRAMES), default="opencv", show_default=True,
              help="opencv: y down, upright in common splat viewers; eg3d: the generator's y-up world")
@click.option("--ply-sh-degree", "ply_sh_degree", type=click.IntRange(0, MAX_SH_DEGREE), default=0, show_default=True,
              help="SH degree written to the .ply (higher coefficients are zero); 3 for the Inria 3DGS tools")
@click.option("--images/--no-images", default=False, show_default=True,
              help="write seedNNNN.png: colour at 5 yaws (-0.5..0.5 rad) above their depth")
@click.option("--res_visualize", "--res-visualize", "res_visualize", type=IntList("level"), default=None,
              help="render only these foreground levels, e.g. 0,1")
@click.option("--point_index", "--point-index", "point_index", type=IntList("point index"), default=None,
              help="render only the descendants of these initial points")
@click.option("--num_init_near_point", "--num-init-near-point", "num_init_near_point",
              type=click.IntRange(min=1), default=None,
              help="with one --point_index: use its K nearest initial points instead")
@click.option("--visualize_anchor", "--visualize-anchor", "visualize_anchor", is_flag=True,
              help="render the anchors (opaque) instead of the Gaussians")
@click.option("--opacity_ones", "--opacity-ones", "opacity_ones", is_flag=True, help="foreground fully opaque")
@click.option("--rendering_scale", "--rendering-scale", "rendering_scale", type=float, default=0.0,
              show_default=True, help="added to the foreground log-scales")
@click.option("--disable_background", "--disable-background", "disable_background", is_flag=True,
              help="no background Gaussians (also not in the .ply)")
@click.option("--camera_cond", "--camera-cond", "camera_cond", is_flag=True,
              help="fixed colour view direction (0, 0, -1): colours do not change with the camera")
@click.option("--dry-run", is_flag=True, help="check the options and the snapshot, list the outputs, render nothing")
def videos(network, seeds, grid, truncation_psi, truncation_cutoff, outdir, num_frames, fps, bitrate, camera_preset,
           trajectory, image_mode, nrr, device, backend, dtype, video, ply, ply_frame, ply_sh_degree, images, dry_run,
           **gs_flags):
    """Orbit video of a grid of seeds (default command), plus a .ply per seed and optional still images."""
    from torch_utils.run_control import stop_signals_interrupt

    with stop_signals_interrupt():  # a SIGTERM removes temp files and kills ffmpeg like Ctrl+C
        _videos(network, seeds, grid, truncation_psi, truncation_cutoff, outdir, num_frames, fps, bitrate,
                camera_preset, trajectory, image_mode, nrr, device, backend, dtype, video, ply, ply_frame,
                ply_sh_degree, images, dry_run, gs_flags)


def _load_generator(network: str, device):
    from torch_utils.checkpoint import SnapshotError, load_snapshot, resolve_snapshot

    try:
        path = resolve_snapshot(network)
        click.echo(f'Loading networks from "{path}"...')
        snapshot = load_snapshot(path, device="cpu")
    except SnapshotError as error:
        raise click.ClickException(str(error)) from None
    except ValueError as error:  # e.g. init_kwargs beyond the generator's limits
        raise click.ClickException(f"{network}: {error}") from None
    return snapshot, snapshot["G_ema"].to(device)


def _videos(network, seeds, grid, truncation_psi, truncation_cutoff, outdir, num_frames, fps, bitrate, camera_preset,
            trajectory, image_mode, nrr, device, backend, dtype, video, ply, ply_frame, ply_sh_degree, images, dry_run,
            gs_flags):
    from training import media_export, video_utils as vu

    cols, rows = grid
    try:
        vu.keyframes_per_cell(len(seeds), cols, rows)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--grid' / '--seeds'") from None
    try:
        check_output_dir(outdir, "--outdir")
    except OutputPathError as error:
        raise click.BadParameter(str(error).removeprefix("--outdir: "), param_hint="'--outdir'") from None
    device = _device(device)
    check_runtime_choices(backend, dtype, device)

    snapshot, G = _load_generator(network, device)
    G.backend = backend
    G.inference_dtype = dtype
    gs_params = _gs_params(G, **gs_flags)
    camera_preset = camera_preset or vu.preset_for_snapshot(snapshot)
    preset = CAMERA_PRESETS[camera_preset]
    trajectory = trajectory or preset.trajectory
    compat = bool(getattr(G, "compat", False))
    if truncation_cutoff is None and compat:  # the official video script's default; the model's own is all ws
        truncation_cutoff = COMPAT_TRUNCATION_CUTOFF
    resolution = nrr or G.neural_rendering_resolution
    if dry_run:
        cells = cols * rows
        click.echo(f"device {device}, backend {backend}, dtype {dtype}, cameras {camera_preset}, trajectory "
                   f"{trajectory}, {len(seeds)} seed(s) on a {cols}x{rows} grid ({len(seeds) // cells} keyframe(s) "
                   f"per cell), render resolution {resolution}")
        if video:
            click.echo(f"would write {os.path.join(outdir, vu.video_filename(seeds, image_mode))} "
                       f"({num_frames} frames at {fps:g} fps)")
        for kind, on in (("ply", ply), ("png", images)):
            if on:
                click.echo(f"would write {len(seeds)} seedNNNN.{kind} file(s) in {outdir}")
        return

    created = make_output_dir(outdir)
    try:
        if video:
            vu.check_video_size(cols, rows, resolution, num_frames, image_mode, outdir)
        ws = vu.compute_ws(G, seeds, preset, truncation_psi, truncation_cutoff, device=device)
        if video:
            target = os.path.join(outdir, vu.video_filename(seeds, image_mode))
            labels = vu.trajectory_labels(trajectory, num_frames, preset, compat=compat)
            vu.render_video(G, vu.cell_keyframes(ws, cols, rows), labels, target, cols, rows, image_mode=image_mode,
                            resolution=nrr, gs_params=gs_params, fps=fps, bitrate=bitrate)
            click.echo(f"wrote {target} ({num_frames} frames, {trajectory} trajectory)")
        if ply:
            paths = [os.path.join(outdir, f"seed{seed:04d}.ply") for seed in seeds]
            media_export.export_plys(G, ws, paths, preset, frame=ply_frame, gs_params=gs_params,
                                     sh_degree=ply_sh_degree)
            click.echo(f"wrote {len(paths)} .ply file(s) ({ply_frame} frame, SH degree {ply_sh_degree}), "
                       f"e.g. {paths[0]}")
        if images:
            for seed, w in zip(seeds, ws):
                target = os.path.join(outdir, f"seed{seed:04d}.png")
                media_export.save_png(target, media_export.render_still(G, w, preset, resolution=nrr,
                                                                        gs_params=gs_params))
            click.echo(f"wrote {len(seeds)} still image(s) seedNNNN.png")
    except (ValueError, OSError) as error:
        remove_empty(created)
        raise click.ClickException(str(error)) from None
    except BaseException:
        remove_empty(created)
        raise


cli.add_command(view)

if __name__ == "__main__":
    cli()
