"""Evaluation of a reconstruction model on a fixed index (the pixelSplat / MVSplat protocol).

Per scene: PSNR / SSIM / LPIPS-VGG of every target view, averaged over the scene's targets; the Gaussian count;
seconds for the model + render. In the same pass a baseline that shows, for each target, the context image with
the nearest frame index unchanged: a model must beat it to have learnt anything about the geometry. When the
targets have another size than the contexts (`--target-resolution`), that context image is first resized to the
target size (bilinear, antialiased when shrinking; `resize_images`), so the baseline is scored where the model is.
Records and summary state both sizes (`image_shape` of the contexts, `target_shape`).
Scenes are sharded over ranks (the EvaluationSet does that) and the records gathered on rank 0.

With a densifier (a snapshot trained with generative densification) the method's output is the fine
(densified) reconstruction: `psnr` / `ssim` / `lpips` are the fine renders' and `coarse_*` the encoder's alone.
`oracle_best_of_*` is the official "best of coarse and fine" figure: per scene the render with the higher PSNR
against the ground truth. It looks at the target images to choose, so it is reported only under that label and is
not a valid method number.
"""
from __future__ import annotations

import json
import math
import os
import time

import torch
from torch import Tensor

import dnnlib
from torch_utils import distributed

METRIC_NAMES = ("psnr", "ssim", "lpips")
ORACLE_NOTE = "uses the target images to choose between coarse and fine; not a valid method number"


class EvaluationError(ValueError):
    """Bad evaluation input (one line naming the option, index file or key)."""


def check_num_context(index, num_context: int) -> None:
    """Every entry of the EvaluationIndex must list at least `num_context` context views."""
    if num_context < 2:
        raise EvaluationError(f"--num-context must be >= 2, got {num_context}")
    for key in index.keys():
        context, _ = index.views(key)
        if len(context) < num_context:
            raise EvaluationError(f"--num-context {num_context}: {index.path}: key {key!r} lists only "
                                  f"{len(context)} context view(s)")


def nearest_context(context_index: Tensor, target_index: Tensor) -> Tensor:
    """[T] position (into the context views) of the context frame nearest to each target frame; ties go to the
    earlier context view."""
    distance = (target_index[:, None] - context_index[None, :]).abs()
    return distance.argmin(dim=1)


def resize_images(images: Tensor, shape) -> Tensor:
    """[N, C, h, w] float images -> [N, C, H, W] by bilinear interpolation (align_corners=False), antialiased
    (a triangle filter as wide as the scale factor) when shrinking, so detail above the new Nyquist limit is
    averaged rather than aliased. Unchanged when the size already matches. Stays within the input's range."""
    import torch.nn.functional as F

    shape = (int(shape[0]), int(shape[1]))
    if tuple(images.shape[-2:]) == shape:
        return images
    return F.interpolate(images, size=shape, mode="bilinear", align_corners=False, antialias=True)


def batched(example: dict) -> dict:
    """An EvaluationSet item with a leading batch dimension of 1 (what the encoder and to_cameras take)."""
    out = {"key": [example["key"]]}
    for part in ("context", "target"):
        out[part] = {name: value[None] for name, value in example[part].items()}
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_example(encoder, example: dict, metrics, num_context: int = 2, backend: str = "auto",
                     device="cpu", save_images: str | None = None, densifier=None) -> dict:
    """The record of one scene: key, frames, model and baseline metrics (means over targets), counts, time.
    With `densifier`: the fine metrics as the model's, plus coarse_*, oracle_best_of_*, counts per stage and the
    densification stage's seconds (see the module docstring)."""
    from reconstruction.views import batch_to, select_views, to_cameras
    from splatting import render

    device = torch.device(device)
    key = example["key"]
    if example["context"]["image"].shape[0] < num_context:
        raise EvaluationError(f"--num-context {num_context}: scene {key!r} has only "
                              f"{example['context']['image'].shape[0]} context view(s)")
    batch = batch_to(batched(example), device)
    context = select_views(batch["context"], slice(0, num_context))
    target = batch["target"]
    _sync(device)
    start = time.perf_counter()
    out = encoder(context)
    dense = None
    if densifier is not None:  # timed: encoder + densifier + the fine render (the method); the coarse render below
        dense = densifier(context, out, backend=backend, profile=True)
        gaussians = dense.gaussians
    else:
        gaussians = out.gaussians
    rendered = render(gaussians, to_cameras(target), backend=backend)
    _sync(device)
    seconds = time.perf_counter() - start
    gt = target["image"][0]
    model = metrics(rendered.color[0], gt)
    nearest = nearest_context(context["index"][0], target["index"][0])
    baseline = metrics(resize_images(context["image"][0][nearest], gt.shape[-2:]), gt)
    record = {"key": key, "context": context["index"][0].tolist(), "target": target["index"][0].tolist(),
              "image_shape": list(context["image"].shape[-2:]), "target_shape": list(gt.shape[-2:])}
    for name in METRIC_NAMES:
        record[name] = float(model[name].double().mean())
    for name in METRIC_NAMES:
        record[f"baseline_{name}"] = float(baseline[name].double().mean())
    record["gaussians"] = int(gaussians.num_gaussians)
    record["seconds"] = seconds
    if dense is not None:
        coarse = metrics(render(out.gaussians, to_cameras(target), backend=backend).color[0], gt)
        record.update(densify_record(record, {name: float(coarse[name].double().mean()) for name in METRIC_NAMES},
                                     dense, int(out.gaussians.num_gaussians)))
    if save_images:
        save_renders(save_images, key, rendered.color[0], record["target"])
    return record


def densify_record(record: dict, coarse: dict, dense, coarse_gaussians: int) -> dict:
    """The densification fields of a scene's record: coarse_* metrics, oracle_best_of_* (the render of higher PSNR
    against the targets, and which one), Gaussians per stage (0 = coarse kept) and the stage's seconds."""
    out = {f"coarse_{name}": coarse[name] for name in METRIC_NAMES}
    pick_fine = record["psnr"] >= coarse["psnr"]
    for name in METRIC_NAMES:
        out[f"oracle_best_of_{name}"] = record[name] if pick_fine else coarse[name]
    out["oracle_choice"] = "fine" if pick_fine else "coarse"
    stage_ids = dense.stage_ids[0]
    out["gaussians_per_stage"] = torch.bincount(stage_ids.cpu(), minlength=int(stage_ids.max()) + 1).tolist()
    out["coarse_gaussians"] = coarse_gaussians
    for part in ("selection", "decoder", "total"):
        out["densify_seconds" if part == "total" else f"densify_{part}_seconds"] = float(dense.timings[part])
    return out


def save_renders(directory: str, key: str, color: Tensor, frames: list[int]) -> None:
    """DIR/KEY/NNNNNN.png (NNNNNN = target frame index) of the renders [T, 3, H, W], each written atomically."""
    from PIL import Image

    from torch_utils.misc import images_to_uint8

    folder = os.path.join(directory, key)
    os.makedirs(folder, exist_ok=True)
    for pixels, frame in zip(images_to_uint8(color, drange=(0, 1)), frames):
        with dnnlib.atomic_file(os.path.join(folder, f"{frame:06d}.png")) as handle:
            Image.fromarray(pixels, "RGB").save(handle, format="PNG")


def evaluate(encoder, dataset, metrics, num_context: int = 2, backend: str = "auto", device="cpu", limit=None,
             progress: bool = False, save_images: str | None = None, densifier=None) -> list[dict]:
    """Records of this rank's scenes of `dataset` (an EvaluationSet), the first `limit` of them when given."""
    import tqdm

    count = len(dataset) if limit is None else min(len(dataset), int(limit))
    if count:  # untimed warm-up (rasterizer extension load, allocator, lazy imports), as MVSplat skips its first
        evaluate_example(encoder, dataset[0], metrics, num_context, backend, device, densifier=densifier)
    records = []
    for i in tqdm.tqdm(range(count), desc="scenes", unit="scene", disable=not progress, leave=False):
        records.append(evaluate_example(encoder, dataset[i], metrics, num_context, backend, device, save_images,
                                        densifier=densifier))
    return records


def gather_records(records: list[dict], key_order: list[str]) -> list[dict]:
    """Every rank's records, on every rank, in `key_order` (the index file's order)."""
    rank_of = {key: i for i, key in enumerate(key_order)}
    merged = [r for part in distributed.all_gather_objects(records) for r in part]
    return sorted(merged, key=lambda r: rank_of.get(r["key"], len(rank_of)))


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


def summarize(records: list[dict], snapshot: str = "", split: str = "test") -> dict:
    """One summary: means of the model and baseline metrics over scenes, counts, time, the snapshot."""
    summary = {"snapshot": snapshot, "split": split, "num_scenes": len(records)}
    for name in ("image_shape", "target_shape"):  # one evaluation has one size of each
        shapes = {tuple(r[name]) for r in records if name in r}
        if len(shapes) == 1:
            summary[name] = list(shapes.pop())
    for name in METRIC_NAMES:
        summary[name] = _mean(r[name] for r in records)
    for name in METRIC_NAMES:
        summary[f"baseline_{name}"] = _mean(r[f"baseline_{name}"] for r in records)
    summary["psnr_gain_over_baseline"] = summary["psnr"] - summary["baseline_psnr"]
    summary["seconds_per_scene"] = _mean(r["seconds"] for r in records)
    counts = sorted({r["gaussians"] for r in records})
    summary["gaussians_per_scene"] = counts[0] if len(counts) == 1 else _mean(r["gaussians"] for r in records)
    if records and all("coarse_psnr" in r for r in records):
        summary.update(summarize_densify(records))
    return summary


def summarize_densify(records: list[dict]) -> dict:
    """The densification part of the summary: coarse means, the labelled oracle, counts per stage, seconds."""
    out = {f"coarse_{name}": _mean(r[f"coarse_{name}"] for r in records) for name in METRIC_NAMES}
    out["psnr_gain_over_coarse"] = _mean(r["psnr"] for r in records) - out["coarse_psnr"]
    for name in METRIC_NAMES:
        out[f"oracle_best_of_{name}"] = _mean(r[f"oracle_best_of_{name}"] for r in records)
    out["oracle_fine_chosen"] = sum(r["oracle_choice"] == "fine" for r in records)
    out["oracle_note"] = ORACLE_NOTE
    stages = max(len(r["gaussians_per_stage"]) for r in records)
    per_stage = [[(r["gaussians_per_stage"] + [0] * stages)[s] for r in records] for s in range(stages)]
    out["gaussians_per_stage"] = [values[0] if len(set(values)) == 1 else _mean(values) for values in per_stage]
    out["coarse_gaussians_per_scene"] = _mean(r["coarse_gaussians"] for r in records)
    for key in ("densify_selection_seconds", "densify_decoder_seconds", "densify_seconds"):
        out[f"{key}_per_scene"] = _mean(r[key] for r in records)
    return out


def _json_safe(record: dict) -> dict:
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def write_jsonl(path: str, records: list[dict]) -> str:
    """One JSON line per scene, written all-or-nothing."""
    with dnnlib.atomic_file(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(_json_safe(record)) + "\n")
    return path


def summary_line(summary: dict) -> str:
    return json.dumps(_json_safe(summary))
