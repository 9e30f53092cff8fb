"""Build and inspect datasets: EG3D-format image datasets for the GAN (a .zip of PNGs plus dataset.json with 25-float
camera labels) and pixelSplat-format multi-view scene datasets for reconstruction (ROOT/{train,test}/*.torch chunks).

Examples:

\b
  # A synthetic multi-view dataset of procedural heads with FFHQ-like cameras (no download needed).
  python dataset_tool.py synth --poses ffhq --count 2000 --resolution 64 --seed 0 --dest data/heads64.zip
\b
  # Other objects (rings with holes, chairs on thin legs) on other backdrops (grey, white, gradient, noise).
  python dataset_tool.py synth --family chairs --background gradient --count 2000 --resolution 16 --dest data/c16.zip
\b
  # Images + cameras (EG3D dataset.json or a per-image JSON map) -> a dataset at 256x256.
  python dataset_tool.py convert --source raw/ --cameras cams.json --dest data/mine256.zip --resolution 256
\b
  # Validate every image and label; look at a few images.
  python dataset_tool.py info --source data/heads64.zip
  python dataset_tool.py contact-sheet --source data/heads64.zip --dest sheet.png --count 16
\b
  # Built-in multi-view scenes for reconstruction (300 + 40 textured rooms at 64x64, chunk format + evaluation index).
  python dataset_tool.py scenes --dest datasets/scenes64
\b
  # Your own posed images (NeRF transforms.json or a COLMAP text model) -> one scene in chunk format.
  python dataset_tool.py convert-views --source my_scene/ --dest datasets/mine --context 0,8 --target 2,4,6

Outputs are written under a temporary name in the destination folder and renamed at the end, so a failure
never leaves a partial file behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import multiprocessing
import os
import signal
import tempfile
import zipfile

import click
import numpy as np
from PIL import Image
from tqdm import tqdm

from training.dataset import (LABELS_FILE, ArchiveReader, DatasetError, ImageFolderDataset, check_camera_geometry,
                              check_label, decode_rgb, is_power_of_two, label_summary, parse_labels_json)
from training import synthetic_scenes
from training.output_paths import OutputPathError, check_output_file, make_output_dir, remove_empty
from torch_utils.run_control import stop_signals_deferred, stop_signals_interrupt

# Largest image datasets the GAN commands make (refused up front: beyond them a typo, not an intent, is likely).
MAX_RESOLUTION = 4096   # pixels per side (the official datasets stop at 512)
MAX_COUNT = 1_000_000   # synth images (FFHQ has 70,000)

# ----------------------------------------------------------------------------------------------------------
# Atomic output


def check_dest(dest: str, overwrite: bool, suffix: str) -> None:
    """Refuse before doing any work: wrong extension, an existing file without --overwrite, or a place no file
    can be written (a file or a read-only folder on the way, a '..' after a missing folder)."""
    if not dest.lower().endswith(suffix):
        raise click.ClickException(f"--dest: expected a {suffix} path, got {dest}")
    if os.path.isdir(dest):
        raise click.ClickException(f"--dest: {dest} is a folder, expected a {suffix} file path")
    if os.path.exists(dest) and not overwrite:
        raise click.ClickException(f"--dest: {dest} already exists (pass --overwrite to replace it)")
    try:
        check_output_file(dest, "--dest")
    except OutputPathError as error:
        raise click.ClickException(str(error)) from None


@contextlib.contextmanager
def atomic_output(dest: str):
    """Yields a temporary path next to `dest`; renamed onto `dest` on success. On any error (a full disk, Ctrl+C,
    SIGTERM) the temporary file and any folder created for it are removed; OSErrors become one-line errors."""
    folder = os.path.dirname(dest) or "."  # as the OS resolves dest, so the rename stays in one folder
    created = make_output_dir(folder)
    tmp = None
    try:
        with stop_signals_deferred():  # a Ctrl+C cannot fall between creating the temp file and naming it
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(dest)}.", suffix=".tmp")
            os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the result the usual permissions
        yield tmp
        os.replace(tmp, dest)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        remove_empty(created)
        if isinstance(error, OSError):
            raise click.ClickException(f"{dest}: cannot write ({error.strerror or error}); nothing was left "
                                       f"behind") from None
        raise


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same options give a byte-identical zip


def _zip_write(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def image_name(index: int) -> str:
    """EG3D-style member name: 1000 images per folder."""
    return f"{index // 1000:05d}/img{index:08d}.png"


def write_dataset_zip(dest: str, items, total: int, extra: dict | None = None, desc: str = "writing") -> None:
    """Write (uint8 [R, R, 3], label [25]) items as an EG3D zip, atomically, with a progress bar."""
    with atomic_output(dest) as tmp:
        labels = []
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for index, (image, label) in enumerate(tqdm(items, total=total, desc=desc, unit="img", leave=False)):
                name = image_name(index)
                _zip_write(zf, name, encode_png(image))
                labels.append([name, [float(v) for v in np.asarray(label).reshape(-1)]])
            if not labels:
                raise click.ClickException("no images to write: the source is empty")
            doc = {"labels": labels, **(extra or {})}
            _zip_write(zf, LABELS_FILE, json.dumps(doc).encode())


# ----------------------------------------------------------------------------------------------------------
# convert


def _matrix(value, shape: tuple[int, int], where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise click.ClickException(f"{where}: expected {shape[0]}x{shape[1]} numbers, got {str(value)[:60]}") from None
    if arr.shape not in (shape, (shape[0] * shape[1],)):
        raise click.ClickException(f"{where}: expected a {shape[0]}x{shape[1]} matrix or {shape[0] * shape[1]} "
                                   f"numbers, got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise click.ClickException(f"{where}: has non-finite values (NaN or inf)")
    return arr.reshape(-1)


def read_cameras(data: bytes, where: str) -> list[tuple[str, np.ndarray]]:
    """[(relative image name, label [25])] from an EG3D dataset.json or a per-image map
    {"path.png": {"cam2world": 4x4 or 16, "intrinsics": 3x3 or 9 (normalized)}}."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{where}: not valid JSON ({exc})") from None
    if isinstance(doc, dict) and "labels" in doc:
        return parse_labels_json(data, where)
    if not isinstance(doc, dict) or not doc:
        raise click.ClickException(f'{where}: expected {{"labels": [...]}} (EG3D) or a non-empty map '
                                   f'{{"image.png": {{"cam2world": ..., "intrinsics": ...}}}}')
    entries = []
    for name, cam in doc.items():
        if not isinstance(cam, dict) or "cam2world" not in cam or "intrinsics" not in cam:
            raise click.ClickException(f"{where}: '{name}': expected an object with 'cam2world' and 'intrinsics'")
        label = np.concatenate([_matrix(cam["cam2world"], (4, 4), f"{where}: '{name}'.cam2world"),
                                _matrix(cam["intrinsics"], (3, 3), f"{where}: '{name}'.intrinsics")])
        entries.append((name.replace("\\", "/"), check_label(label.tolist(), f"{where}: '{name}'")))
    return entries


def crop_intrinsics(label: np.ndarray, width: int, height: int) -> np.ndarray:
    """The label after a centre crop of a width x height image to a square (normalized intrinsics change)."""
    side = min(width, height)
    ox, oy = (width - side) // 2, (height - side) // 2
    out = label.copy()
    k = label[16:].reshape(3, 3)
    fx_px, cx_px, fy_px, cy_px = k[0, 0] * width, k[0, 2] * width, k[1, 1] * height, k[1, 2] * height
    out[16], out[18] = fx_px / side, (cx_px - ox) / side
    out[20], out[21] = fy_px / side, (cy_px - oy) / side
    return out


def centre_crop_resize(image: Image.Image, resolution: int) -> np.ndarray:
    width, height = image.size
    side = min(width, height)
    ox, oy = (width - side) // 2, (height - side) // 2
    image = image.crop((ox, oy, ox + side, oy + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def _convert_items(archive: ArchiveReader, entries, resolution: int):
    for name, label in entries:
        where = f"{archive.path}/{name}"
        if not archive.exists(name):
            raise click.ClickException(f"{where}: listed in the cameras but missing from the source")
        image = decode_rgb(archive.read(name), where)
        yield centre_crop_resize(image, resolution), crop_intrinsics(label, *image.size)


# ----------------------------------------------------------------------------------------------------------
# CLI


class _Group(click.Group):
    """Turns DatasetError into a one-line click error (no traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DatasetError as exc:
            raise click.ClickException(str(exc)) from None


def _check_resolution(ctx, param, value):
    if value is not None and not is_power_of_two(value):
        raise click.BadParameter(f"expected a power of two (e.g. 64, 128, 256), got {value}")
    return value


def _ignore_sigint() -> None:
    """Pool initializer (for workers the pool starts later to replace one): see _start_pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_pool(workers: int):
    """A spawn pool whose workers ignore Ctrl+C: it reaches the whole process group, but only the main process
    should react (it stops the pool and removes its temporary file). The workers are started while this process
    ignores SIGINT, and an ignored signal stays ignored across exec, so a Ctrl+C during a worker's start-up imports
    prints no traceback either. Workers keep SIGTERM, with which the pool stops them."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_sigint)
    finally:
        signal.signal(signal.SIGINT, previous)


@click.group(cls=_Group, help=__doc__)
def cli():
    pass


@cli.command()
@click.option("--source", required=True, metavar="DIR|ZIP", help="Folder or zip of images.")
@click.option("--dest", required=True, metavar="ZIP", help="Output dataset (.zip).")
@click.option("--resolution", required=True, type=click.IntRange(4, MAX_RESOLUTION), callback=_check_resolution,
              help="Output resolution (square, power of two).")
@click.option("--cameras", type=click.Path(exists=True, dir_okay=False), metavar="JSON",
              help="Camera file (EG3D dataset.json or per-image map). Default: dataset.json inside --source.")
@click.option("--overwrite", is_flag=True, help="Replace --dest if it exists.")
def convert(source, dest, resolution, cameras, overwrite):
    """Images + cameras -> dataset zip (centre crop to square, Lanczos resize, intrinsics adjusted)."""
    check_dest(dest, overwrite, ".zip")
    archive = ArchiveReader(source)
    if cameras is not None:
        with open(cameras, "rb") as f:
            entries = read_cameras(f.read(), cameras)
    elif archive.exists(LABELS_FILE):
        entries = read_cameras(archive.read(LABELS_FILE), f"{source}/{LABELS_FILE}")
    else:
        raise click.ClickException(f"{source}/{LABELS_FILE}: missing (pass --cameras FILE or put an EG3D "
                                   f"dataset.json in the source)")
    if not entries:
        raise click.ClickException(f"{cameras or source}: lists no images (empty source)")
    labels = np.stack([label for _, label in entries])
    check_camera_geometry(labels, [name for name, _ in entries], cameras or source)
    if np.abs(labels[:, [18, 21]]).max() > 2.0:
        raise click.ClickException(f"{cameras or source}: intrinsics look like pixel units (cx, cy up to "
                                   f"{np.abs(labels[:, [18, 21]]).max():g}); expected normalized intrinsics "
                                   f"(divide row 0 by the width and row 1 by the height)")
    missing = [name for name, _ in entries if not archive.exists(name)]
    if missing:
        raise click.ClickException(f"{source}/{missing[0]}: listed in the cameras but missing from the source"
                                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    skipped = len(set(archive.image_names()) - {name for name, _ in entries})
    if skipped:
        click.echo(f"note: {skipped} image(s) in the source have no camera and are skipped")
    with stop_signals_interrupt():
        write_dataset_zip(dest, _convert_items(archive, entries, resolution), len(entries), desc="converting")
    click.echo(f"wrote {dest}: {len(entries)} images at {resolution}x{resolution}")


@cli.command()
@click.option("--poses", type=click.Choice(sorted(synthetic_scenes.POSE_PRESETS)), default="ffhq", show_default=True,
              help="ffhq: FFHQ-like frontal cameras; orbit: 360-degree ShapeNet-like cameras.")
@click.option("--count", type=click.IntRange(1, MAX_COUNT), default=2000, show_default=True, help="Number of images.")
@click.option("--resolution", type=click.IntRange(4, MAX_RESOLUTION), default=64, show_default=True,
              callback=_check_resolution, help="Image resolution (power of two).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--num-scenes", type=click.IntRange(min=1), default=None,
              help="Distinct objects, each seen from count/num-scenes cameras. [default: count // 4]")
@click.option("--supersample", type=click.IntRange(1, 4), default=2, show_default=True,
              help="Rays per pixel along each axis (anti-aliasing).")
@click.option("--family", type=click.Choice(list(synthetic_scenes.FAMILIES)), default="heads", show_default=True,
              help="heads: smooth blobs; rings: tori with holes and strong stripes; chairs: boxes on thin legs.")
@click.option("--background", type=click.Choice(synthetic_scenes.BACKGROUNDS), default="black", show_default=True,
              help="Backdrop: a plain colour, a vertical gradient, or low-frequency noise (its own per object).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Render processes. [default: min(2, CPUs); 1 for small counts]")
@click.option("--dest", required=True, metavar="ZIP", help="Output dataset (.zip).")
@click.option("--overwrite", is_flag=True, help="Replace --dest if it exists.")
def synth(poses, count, resolution, seed, num_scenes, supersample, family, background, workers, dest, overwrite):
    """Synthetic multi-view dataset of procedural objects, ray cast analytically.

    Image i shows scene i * num_scenes // count, so consecutive images are the same object from different
    cameras. Identical options give identical bytes. dataset.json's "synthetic" entry records the options; its
    "family" and "background" keys are written only when they are not heads / black, so the default dataset is
    byte for byte the one earlier versions wrote (and keeps its fingerprint and metric caches).
    """
    check_dest(dest, overwrite, ".zip")
    num_scenes = max(1, count // 4) if num_scenes is None else num_scenes
    if num_scenes > count:
        raise click.ClickException(f"--num-scenes: expected at most --count ({count}), got {num_scenes}")
    if workers is None:
        workers = 1 if count < 200 else max(1, min(2, os.cpu_count() or 1))
    labels = synthetic_scenes.synth_labels(poses, count, seed)
    scene_ids = synthetic_scenes.scene_assignment(count, num_scenes)
    jobs = [(poses, seed, int(s), labels[i], resolution, supersample, family, background)
            for i, s in enumerate(scene_ids)]
    record = {"poses": poses, "seed": seed, "num_scenes": num_scenes, "supersample": supersample}
    record.update({key: value for key, value, default in (("family", family, "heads"),
                                                           ("background", background, "black")) if value != default})
    extra = {"synthetic": {**record, "scene_ids": scene_ids.tolist()}}
    with contextlib.ExitStack() as stack:
        stack.enter_context(stop_signals_interrupt())
        if workers > 1:
            pool = stack.enter_context(_start_pool(workers))
            images = pool.imap(synthetic_scenes.render_synth_image, jobs, chunksize=16)
        else:
            images = map(synthetic_scenes.render_synth_image, jobs)
        write_dataset_zip(dest, zip(images, labels), count, extra=extra, desc="rendering")
    click.echo(f"wrote {dest}: {count} images of {num_scenes} {family} scenes at {resolution}x{resolution} "
               f"({poses} poses, {background} background)")


def border_statistics(images: np.ndarray) -> dict:
    """What the backdrop of images uint8 [N, 3, R, R] looks like, from each image's outer ring of pixels (width
    R // 16, at least 1). Medians, so that an object reaching the frame (a neck, chair legs) does not count:
    the colour (mean over images of each ring's median), the top and bottom bands' median brightness (a vertical
    gradient shows as a difference of one sign in every image), the spread within an image (median absolute
    deviation of the ring's brightness, averaged over images: textured backdrops) and between images (std of the
    ring medians: backdrops that change from image to image). All in 0-255 units."""
    n, _, res, _ = images.shape
    width = max(1, res // 16)
    mask = np.ones((res, res), dtype=bool)
    mask[width:res - width, width:res - width] = False
    pixels = images.astype(np.float64)
    ring = pixels[:, :, mask]  # [N, 3, ring pixels]
    per_image = np.median(ring, axis=2)  # [N, 3]
    brightness = ring.mean(axis=1)  # [N, ring pixels]
    spread = np.median(np.abs(brightness - np.median(brightness, axis=1, keepdims=True)), axis=1)
    top = np.median(pixels[:, :, :width].mean(axis=1).reshape(n, -1), axis=1)
    bottom = np.median(pixels[:, :, res - width:].mean(axis=1).reshape(n, -1), axis=1)
    return {"width": width, "color": per_image.mean(axis=0), "top": float(top.mean()), "bottom": float(bottom.mean()),
            "top_minus_bottom_abs": float(np.abs(top - bottom).mean()), "within": float(spread.mean()),
            "between": float(per_image.std(axis=0).mean())}


def describe_backdrop(stats: dict) -> str:
    """A one-phrase reading of border_statistics (thresholds in 0-255 units)."""
    step = stats["top"] - stats["bottom"]
    if abs(step) >= 12 and abs(step) >= 0.7 * stats["top_minus_bottom_abs"]:
        return f"vertical gradient ({'lighter' if step > 0 else 'darker'} at the top)"
    if stats["within"] > 6 or stats["between"] > 6:
        return "varied (textured, or changing from image to image)"
    r, g, b = stats["color"]
    level = (r + g + b) / 3
    name = ("black" if level < 16 else "white" if level > 239 else
            "grey" if max(r, g, b) - min(r, g, b) < 12 else "coloured")
    return f"uniform {name}"


@cli.command()
@click.option("--source", required=True, metavar="DIR|ZIP", help="Dataset to check.")
def info(source):
    """Validate every image and label of a dataset; print its size, backdrop (border) and label statistics."""
    dataset = ImageFolderDataset(source)
    object_share, images = [], []
    for idx in tqdm(range(len(dataset)), desc="checking", unit="img", leave=False):
        image, _ = dataset[idx]
        object_share.append(float((image.max(axis=0) > 8).mean()))
        images.append(image)
    border = border_statistics(np.stack(images))
    click.echo(f"dataset:      {source}")
    click.echo(f"images:       {len(dataset)}")
    click.echo(f"resolution:   {dataset.resolution}x{dataset.resolution} RGB")
    click.echo(f"fingerprint:  {dataset.fingerprint()[:16]}")
    synthetic = _synthetic_record(source)
    if synthetic is not None:
        click.echo(f"synthetic:    {synthetic.get('family', 'heads')} on {synthetic.get('background', 'black')} "
                   f"({synthetic.get('poses')} poses, {synthetic.get('num_scenes')} scenes, "
                   f"seed {synthetic.get('seed')})")
    click.echo(f"non-dark px:  mean {np.mean(object_share):.3f} (share of pixels brighter than 8/255)")
    click.echo(f"border:       RGB {' '.join(f'{v:.1f}' for v in border['color'])} (medians of the outer "
               f"{border['width']} px ring), top {border['top']:.1f} / bottom {border['bottom']:.1f}, spread within an "
               f"image {border['within']:.1f}, between images {border['between']:.1f}")
    click.echo(f"backdrop:     {describe_backdrop(border)}")
    for key, (lo, mean, hi) in label_summary(dataset.raw_labels).items():
        click.echo(f"{key + ':':<25} min {lo:8.4f}  mean {mean:8.4f}  max {hi:8.4f}")


def _synthetic_record(source: str) -> dict | None:
    """dataset.json's "synthetic" entry (written by `synth`), or None."""
    try:
        doc = json.loads(ArchiveReader(source).read(LABELS_FILE))
    except (DatasetError, OSError, ValueError):
        return None
    record = doc.get("synthetic") if isinstance(doc, dict) else None
    return record if isinstance(record, dict) else None


cli.add_command(info, name="check")


@cli.command("contact-sheet")
@click.option("--source", required=True, metavar="DIR|ZIP", help="Dataset to show.")
@click.option("--dest", required=True, metavar="PNG", help="Output image (.png).")
@click.option("--count", type=click.IntRange(min=1), default=16, show_default=True, help="Images to show.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First image index.")
@click.option("--overwrite", is_flag=True, help="Replace --dest if it exists.")
def contact_sheet(source, dest, count, start, overwrite):
    """A grid of dataset images (upscaled to at least 128 px each) for a quick look."""
    check_dest(dest, overwrite, ".png")
    dataset = ImageFolderDataset(source)
    indices = list(range(start, min(start + count, len(dataset))))
    if not indices:
        raise click.ClickException(f"--start: {start} is past the end of the dataset ({len(dataset)} images)")
    zoom = max(1, 128 // dataset.resolution)
    tile = dataset.resolution * zoom
    cols = math.ceil(math.sqrt(len(indices)))
    rows = math.ceil(len(indices) / cols)
    sheet = np.zeros((rows * tile, cols * tile, 3), dtype=np.uint8)
    for k, idx in enumerate(indices):
        image = dataset[idx][0].transpose(1, 2, 0).repeat(zoom, axis=0).repeat(zoom, axis=1)
        r, c = divmod(k, cols)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = image
    with stop_signals_interrupt(), atomic_output(dest) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    click.echo(f"wrote {dest}: {len(indices)} images ({rows}x{cols})")


# ----------------------------------------------------------------------------------------------------------
# Multi-view scene datasets for the reconstruction half (pixelSplat chunk format)


def check_folder_dest(dest: str, overwrite: bool) -> None:
    """Refuse before doing any work: an existing file, or an existing folder without --overwrite."""
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise click.ClickException(f"--dest: {dest} is a file, expected a folder")
    if os.path.exists(dest) and not overwrite:
        raise click.ClickException(f"--dest: {dest} already exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def atomic_folder(dest: str):
    """Yields a temporary sibling folder of `dest`; on success it replaces `dest` (any old one is removed only
    after the swap), on any error it is removed and `dest` is untouched."""
    import shutil

    dest = os.path.abspath(dest)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(dest)}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders
    try:
        yield tmp
        old = None
        if os.path.exists(dest):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(dest)}.", suffix=".old")
            os.replace(dest, os.path.join(old, "previous"))
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:  # put the previous folder back
                os.replace(os.path.join(old, "previous"), dest)
                os.rmdir(old)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _scene_example(result: dict) -> dict:
    """A chunk example from a render_scene_job result (torch is only needed here, in the main process)."""
    import torch

    from reconstruction.chunks import pack_cameras

    frames = len(result["images"])
    return {"key": result["key"], "url": result["url"], "timestamps": torch.arange(frames),
            "cameras": pack_cameras(torch.from_numpy(result["cam2world"]), torch.from_numpy(result["intrinsics"])),
            "images": [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in result["images"]]}


def _scene_examples(results, bar):
    """Chunk examples of render results, in order, ticking the progress bar."""
    for result in results:
        bar.update(1)
        yield _scene_example(result)


def _write_json(path: str, doc) -> None:
    import dnnlib

    with dnnlib.atomic_file(path, "w") as handle:
        json.dump(doc, handle, indent=1)
        handle.write("\n")


@cli.command()
@click.option("--dest", required=True, metavar="DIR", help="Output folder (train/, test/, evaluation_index.json).")
@click.option("--train-scenes", type=click.IntRange(min=0), default=300, show_default=True)
@click.option("--test-scenes", type=click.IntRange(min=0), default=40, show_default=True)
@click.option("--frames", type=click.IntRange(min=5), default=40, show_default=True, help="Frames per scene.")
@click.option("--resolution", type=click.IntRange(min=8), default=64, show_default=True,
              help="Square image size (--width/--height override it).")
@click.option("--width", type=click.IntRange(min=8), default=None, help="Image width. [default: --resolution]")
@click.option("--height", type=click.IntRange(min=8), default=None, help="Image height. [default: --resolution]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg"]), default="png", show_default=True,
              help="Frame encoding.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality.")
@click.option("--supersample", type=click.IntRange(1, 6), default=3, show_default=True,
              help="Rays per pixel along each axis (anti-aliasing).")
@click.option("--detail", type=click.Choice(["standard", "rich"]), default="standard", show_default=True,
              help="rich: every surface also carries a pixel-scale speckle (fine detail for densification).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Render processes. [default: min(2, CPUs); 1 for fewer than 20 scenes]")
@click.option("--overwrite", is_flag=True, help="Replace --dest if it exists.")
def scenes(dest, train_scenes, test_scenes, frames, resolution, width, height, seed, fmt, quality, supersample,
           detail, workers, overwrite):
    """Procedural indoor multi-view scenes (RealEstate10K-like camera paths) in the pixelSplat chunk format.

    Writes DEST/train and DEST/test (chunks + index.json), DEST/evaluation_index.json (2 context views 10-14
    frames apart, 3 targets between them, per test scene) and DEST/scenes.json (options, near/far, image
    shape). Every visible surface lies at depth 1-20; use near 1, far 100. Identical options give identical
    bytes.
    """
    from reconstruction import scene_dataset as sd
    from reconstruction import synthetic_scenes as ss
    from reconstruction.chunks import ChunkError, write_chunks

    check_folder_dest(dest, overwrite)
    width, height = width or resolution, height or resolution
    if not 1.0 / ss.MAX_ASPECT <= width / height <= ss.MAX_ASPECT:
        raise click.ClickException(f"--width/--height: {width}x{height} is more elongated than "
                                   f"{ss.MAX_ASPECT:g}:1 (not supported by the room generator)")
    if train_scenes + test_scenes == 0:
        raise click.ClickException("--train-scenes/--test-scenes: expected at least one scene in total")
    total = train_scenes + test_scenes
    if workers is None:
        workers = 1 if total < 20 else max(1, min(2, os.cpu_count() or 1))
    jobs = {split: [(seed, split, i, frames, width, height, supersample, fmt, quality, detail) for i in range(count)]
            for split, count in (("train", train_scenes), ("test", test_scenes))}
    info = {"generator": "reconstruction.synthetic_scenes", "seed": seed, "frames": frames,
            "image_shape": [height, width], "format": fmt, "quality": quality if fmt == "jpeg" else None,
            "supersample": supersample, "detail": detail, "scenes": {"train": train_scenes, "test": test_scenes},
            "near": 1.0, "far": 100.0, "depth_range": [ss.MIN_DEPTH, ss.MAX_DEPTH],
            "context_gap": list(sd.CONTEXT_GAP)}
    try:
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_folder(dest))
            render = map
            if workers > 1:
                render = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers)).imap
            bar = stack.enter_context(tqdm(total=total, desc="rendering", unit="scene", leave=False))
            paths = 0
            for split, split_jobs in jobs.items():
                if not split_jobs:
                    continue
                results = render(sd.render_scene_job, split_jobs, **({"chunksize": 2} if workers > 1 else {}))
                paths += len(write_chunks(tmp, split, _scene_examples(results, bar)))
            evaluation = {sd.scene_key(seed, "test", i): sd.evaluation_views(seed, i, frames)
                          for i in range(test_scenes)}
            _write_json(os.path.join(tmp, "evaluation_index.json"), evaluation)
            _write_json(os.path.join(tmp, "scenes.json"), info)
    except (ss.SceneError, ChunkError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {dest}: {train_scenes} train + {test_scenes} test scenes of {frames} frames at "
               f"{width}x{height} ({paths} chunk file(s))")


@cli.command("convert-views")
@click.option("--source", required=True, metavar="DIR",
              help="Folder with transforms.json (NeRF/instant-ngp) or a COLMAP text model (cameras.txt, images.txt).")
@click.option("--dest", required=True, metavar="ROOT", help="Dataset root to write ROOT/SPLIT/ into.")
@click.option("--split", default="test", show_default=True, help="Split folder name.")
@click.option("--key", default=None, help="Scene key. [default: the source folder's name]")
@click.option("--context", default=None, metavar="I,J", help="Context frames for ROOT/evaluation_index.json.")
@click.option("--target", default=None, metavar="K,L", help="Target frames for ROOT/evaluation_index.json.")
@click.option("--overwrite", is_flag=True, help="Replace ROOT/SPLIT (and ROOT/evaluation_index.json) if present.")
def convert_views(source, dest, split, key, context, target, overwrite):
    """Posed images of one scene -> one example in the pixelSplat chunk format.

    Frames are ordered by file name (COLMAP) or file order (transforms.json); timestamps are that order.
    Encoded PNG/JPEG bytes are stored unchanged. Nothing is written if anything is wrong.
    """
    import re

    from reconstruction import convert_views as cv
    from reconstruction.chunks import ChunkError, write_chunks

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", split):
        raise click.ClickException(f"--split: expected a folder name like test or train, got {split!r}")
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise click.ClickException(f"--dest: {dest} is a file, expected a folder")
    split_dir = os.path.join(dest, split)
    index_path = os.path.join(dest, "evaluation_index.json")
    if os.path.exists(split_dir) and not overwrite:
        raise click.ClickException(f"--dest: {split_dir} already exists (pass --overwrite to replace it)")
    if context is not None and os.path.exists(index_path) and not overwrite:
        raise click.ClickException(f"--dest: {index_path} already exists (pass --overwrite to replace it)")
    key = key if key is not None else os.path.basename(os.path.normpath(os.path.abspath(source)))
    try:
        frames = cv.read_posed_folder(source)
        entry = cv.evaluation_entry(context, target, len(frames))
        example = cv.frames_to_example(frames, key)
    except cv.ConvertViewsError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        with atomic_folder(split_dir) as tmp:
            write_chunks(os.path.dirname(tmp), os.path.basename(tmp), [example])
            if entry is not None:
                _write_json(index_path, {key: entry})
    except ChunkError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {split_dir}: scene {key!r} with {len(frames)} frames"
               + (f"; {index_path}" if entry is not None else ""))


if __name__ == "__main__":
    cli()  # pylint: disable=no-value-for-parameter
