"""Seeding, RNG state capture/restore (for exact resume), parameter counts, a module summary table, the
infinite rank-sharded data sampler, the float -> uint8 quantizer for displayed images and image-grid saving."""
from __future__ import annotations

import copy
import hashlib
import random

import numpy as np
import torch
from torch import nn

from dnnlib import atomic_file


def set_seed(seed: int, rank: int = 0, num_ranks: int = 1) -> int:
    """Seed python, numpy and torch (all devices) with seed * num_ranks + rank; returns that value."""
    value = int(seed) * int(num_ranks) + int(rank)
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)
    return value


def capture_rng_state() -> dict:
    """Global RNG states of python, numpy and torch (CPU + CUDA) as values `torch.load(weights_only=True)` accepts."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of capture_rng_state (CUDA states are restored only when the device count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def cpu_copy(obj):
    """Deep copy with every tensor copied to the CPU: a state frozen in time (for snapshots of live training)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(value) for value in obj)
    return copy.deepcopy(obj)


def state_digests(modules: dict) -> dict:
    """{"<key>.<tensor name>": sha256 of the tensor's bytes} over the state_dicts of {key: module}."""
    digests = {}
    for key, module in modules.items():
        for name, tensor in module.state_dict().items():
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            digests[f"{key}.{name}"] = hashlib.sha256(data).hexdigest()
    return digests


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Exact number of scalar parameters (shared parameters counted once)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


def count_buffers(module: nn.Module) -> int:
    return int(sum(b.numel() for b in module.buffers()))


def format_count(n: int) -> str:
    """1234567 -> '1,234,567 (1.23 M)'."""
    return f"{n:,} ({n / 1e6:.2f} M)"


def parameter_table(module: nn.Module, name: str = "") -> str:
    """Parameters per direct child, without running the module (cheap even for the full-size models)."""
    rows = [("submodule", "parameters", "buffers")]
    for child_name, child in module.named_children():
        rows.append((child_name, f"{count_parameters(child):,}", f"{count_buffers(child):,}"))
    direct = sum(p.numel() for p in module.parameters(recurse=False))
    if direct:
        rows.append(("(own parameters)", f"{direct:,}", "-"))
    rows.append(("total", f"{count_parameters(module):,}", f"{count_buffers(module):,}"))
    return _format_rows(rows, title=name or type(module).__name__)


def _format_rows(rows: list[tuple], title: str = "") -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [title] if title else []
    for index, row in enumerate(rows):
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
        if index == 0 or index == len(rows) - 2:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _describe_output(output) -> str:
    if isinstance(output, torch.Tensor):
        return str(list(output.shape))
    if isinstance(output, (tuple, list)):
        return ", ".join(_describe_output(item) for item in output[:4]) + (" ..." if len(output) > 4 else "")
    if isinstance(output, dict):
        return ", ".join(f"{key}={_describe_output(value)}" for key, value in list(output.items())[:4])
    return type(output).__name__


@torch.no_grad()
def module_summary(module: nn.Module, inputs: tuple, kwargs: dict | None = None, max_depth: int = 1) -> tuple:
    """Run module(*inputs, **kwargs) once with forward hooks; returns (outputs, table of params + output shapes)."""
    entries, hooks = [], []
    for name, sub in module.named_modules():
        depth = 0 if name == "" else name.count(".") + 1
        if depth > max_depth or depth == 0:
            continue
        hooks.append(sub.register_forward_hook(
            lambda mod, _inp, out, name=name: entries.append((name, count_parameters(mod), _describe_output(out)))))
    try:
        outputs = module(*inputs, **(kwargs or {}))
    finally:
        for hook in hooks:
            hook.remove()
    rows = [("submodule", "parameters", "output")]
    seen = set()
    for name, params, out in entries:
        if name not in seen:
            seen.add(name)
            rows.append((name, f"{params:,}", out))
    rows.append(("total", f"{count_parameters(module):,}", _describe_output(outputs)))
    return outputs, _format_rows(rows, title=type(module).__name__)


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless, seeded, rank-sharded index stream that can start at any position (exact resume).

    The global stream is the concatenation of permutations of range(size), permutation e seeded by (seed, e);
    rank r takes global positions r, r + W, r + 2W, ... The k-th index this rank yields depends only on
    (size, seed, rank, W, k), so `start=k` resumes exactly where k indices were consumed before.
    """

    def __init__(self, size: int, rank: int = 0, num_replicas: int = 1, seed: int = 0, start: int = 0,
                 shuffle: bool = True):
        if size < 1:
            raise ValueError(f"InfiniteSampler: dataset is empty (size {size})")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"InfiniteSampler: rank {rank} not in [0, {num_replicas})")
        self.size, self.rank, self.num_replicas = int(size), int(rank), int(num_replicas)
        self.seed, self.start, self.shuffle = int(seed), int(start), bool(shuffle)
        self._cached = (-1, None)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._cached[0] != epoch:
            if self.shuffle:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm = torch.randperm(self.size, generator=gen)
            else:
                perm = torch.arange(self.size)
            self._cached = (epoch, perm)
        return self._cached[1]

    def index_at(self, k: int) -> int:
        position = k * self.num_replicas + self.rank
        return int(self._permutation(position // self.size)[position % self.size])

    def __iter__(self):
        k = self.start
        while True:
            yield self.index_at(k)
            k += 1

    def state_dict(self) -> dict:
        return {"size": self.size, "rank": self.rank, "num_replicas": self.num_replicas, "seed": self.seed,
                "start": self.start}


def quantize_uint8(images: torch.Tensor, drange=(-1.0, 1.0)) -> torch.Tensor:
    """Float images with values in drange -> uint8 of the same shape and device: round to nearest (ties to even)
    of (x - lo) * 255 / (hi - lo), clamped to [0, 255]; x * 127.5 + 127.5 for [-1, 1], x * 255 for [0, 1].

    The one quantizer for pixels people look at (videos, grids, stills, reconstruction media) and for the uint8
    round trip before a resize. FID/KID/PR images instead use `metrics.detector.to_uint8`, the reference
    pipeline's truncation, so that scores stay comparable with published ones.
    """
    lo, hi = (float(v) for v in drange)
    if not hi > lo:
        raise ValueError(f"quantize_uint8: drange must be (lo, hi) with hi > lo, got {tuple(drange)}")
    scale = 255.0 / (hi - lo)
    return (images.detach().float() * scale - lo * scale).round().clamp(0, 255).to(torch.uint8)


def images_to_uint8(images: torch.Tensor, drange=(-1.0, 1.0)) -> np.ndarray:
    """[N, C, H, W] float in drange -> uint8 [N, H, W, C] on the CPU (see quantize_uint8)."""
    return quantize_uint8(images, drange).permute(0, 2, 3, 1).cpu().numpy()


def save_image_grid(images: torch.Tensor, path: str, grid_size: tuple[int, int], drange=(-1.0, 1.0)) -> None:
    """Save [gw*gh, C, H, W] (C = 1 or 3) as one PNG grid, row-major, written atomically."""
    from PIL import Image

    gw, gh = grid_size
    pixels = images_to_uint8(images, drange)
    n, h, w, c = pixels.shape
    if n != gw * gh:
        raise ValueError(f"save_image_grid: {n} images do not fill a {gw}x{gh} grid")
    grid = pixels.reshape(gh, gw, h, w, c).transpose(0, 2, 1, 3, 4).reshape(gh * h, gw * w, c)
    image = Image.fromarray(grid[:, :, 0] if c == 1 else grid, "L" if c == 1 else "RGB")
    with atomic_file(path) as handle:
        image.save(handle, format="PNG")
