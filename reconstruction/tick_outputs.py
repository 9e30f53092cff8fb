"""What a reconstruction training tick shows: its log line and its image grid (grid-SSSSSS.png, rank 0)."""
from __future__ import annotations

import math

import torch

from torch_utils import misc


def depth_to_unit(depth, alpha=None):
    """[N, 1, H, W] depth -> [N, 1, H, W] in [0, 1] per image, near = bright, empty pixels black."""
    from training.video_utils import finite_range, masked_depth, normalize_depth

    if alpha is not None:
        depth = masked_depth(depth, alpha)
    d = depth.detach().float().cpu().numpy()
    lo, hi = finite_range(d)
    return (torch.from_numpy(normalize_depth(d, lo, hi)) + 1) / 2


def selection_overlay(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """image [n, 3, H, W] dimmed to half brightness, with the pixels of the selected Gaussians `index` [n, K]
    (into the view's H*W pixels, row-major: the encoder's layout) set to pure red."""
    n, _, h, w = image.shape
    out = image.clone() * 0.5
    mask = torch.zeros(n, h * w, dtype=torch.bool)
    mask.scatter_(1, index.long() % (h * w), True)
    mask = mask.reshape(n, 1, h, w)
    red = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1).expand_as(out)
    return torch.where(mask, red, out)


def grid_cell_shape(context_shape, target_shape) -> tuple[int, int]:
    """The size every grid cell is shown at: the larger (in pixels) of the context and target sizes, so neither
    the model's inputs nor its renders lose detail (ties: the context size)."""
    context_shape, target_shape = tuple(context_shape), tuple(target_shape)
    return target_shape if target_shape[0] * target_shape[1] > context_shape[0] * context_shape[1] else context_shape


def save_grid(path: str, batch: dict, rendered, coarse=None, dense=None) -> None:
    """Rows = the batch's scenes; columns = context views | first target | its render | its depth. With
    densification (coarse and dense given): context views | target | coarse render | fine render | selected |
    fine depth, where `selected` is the first context view dimmed with the pixels of its selected Gaussians in red.
    `rendered` is the render of the first target view (the fine one with densification). Targets may have another
    size than the contexts: every cell is resized to `grid_cell_shape` (evaluate.resize_images)."""
    from reconstruction.evaluate import resize_images

    context = batch["context"]["image"].cpu()                        # [n, V, 3, H, W]
    target = batch["target"]["image"][:, 0].cpu()                     # [n, 3, H', W']
    color = rendered.color[:, 0].clamp(0, 1).cpu()
    depth = depth_to_unit(rendered.depth[:, 0], rendered.alpha[:, 0]).expand(-1, 3, -1, -1)
    columns = [context.flatten(0, 1), target]
    if dense is not None:
        selected = selection_overlay(context[:, 0], dense.selection.index[:, 0].cpu())
        columns += [coarse.color[:, 0].clamp(0, 1).cpu(), color, selected]
    else:
        columns.append(color)
    columns.append(depth)
    n = target.shape[0]
    shape = grid_cell_shape(context.shape[-2:], target.shape[-2:])
    cells = torch.cat([resize_images(c.float(), shape).reshape(n, -1, 3, *shape) for c in columns], dim=1)
    rows, cols = cells.shape[:2]                                      # [n, V + 3 (+ 2), 3, *shape]
    misc.save_image_grid(cells.flatten(0, 1), path, (cols, rows), drange=(0, 1))


def format_tick_line(stats: dict) -> str:
    """One console/log line per tick."""
    def get(name):
        return stats.get(name, {}).get("mean", float("nan"))
    total = get("Timing/total_sec")
    total = 0.0 if math.isnan(total) else total
    # Data/skipped/<reason> holds the skips made per delivered example: mean * num = skips this tick.
    skipped = sum(e["mean"] * e["num"] for name, e in stats.items() if name.startswith("Data/skipped/"))
    if "Metrics/psnr_fine" not in stats:
        losses = (f"mse {get('Loss/mse'):.5f} lpips {get('Loss/lpips'):.4f} psnr {get('Metrics/psnr_train'):.2f} ")
    elif "Metrics/psnr_coarse" in stats:
        losses = (f"mse coarse {get('Loss/coarse/mse'):.5f} fine {get('Loss/fine/mse'):.5f} psnr coarse "
                  f"{get('Metrics/psnr_coarse'):.2f} fine {get('Metrics/psnr_fine'):.2f} densify "
                  f"{get('Timing/densify_sec'):.3f}s ")
    else:  # a frozen encoder: no coarse render in training
        losses = (f"mse fine {get('Loss/fine/mse'):.5f} psnr fine {get('Metrics/psnr_fine'):.2f} densify "
                  f"{get('Timing/densify_sec'):.3f}s ")
    return (f"tick {int(get('Progress/tick')):<5d} step {int(get('Progress/step')):<7d} "
            f"time {int(total // 3600)}h{int(total % 3600 // 60):02d}m{int(total % 60):02d}s  "
            f"sec/step {get('Timing/sec_per_step'):<6.3f} maintenance {get('Timing/maintenance_sec'):<5.1f} "
            f"cpumem {get('Resources/cpu_mem_gb'):.2f} gpumem {get('Resources/peak_gpu_mem_gb'):.2f}  "
            f"lr {get('Progress/lr'):.2e} loss {get('Loss/total'):.4f} {losses}skipped {int(round(skipped))}")
