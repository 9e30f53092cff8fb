"""Scene datasets over pixelSplat chunk folders, yielding examples in the layout of `reconstruction.views`.

SceneStream (training) is an endless, seeded stream that is exactly resumable and independent of the number of
DataLoader workers; EvaluationSet (testing) follows a fixed EvaluationIndex. Both decode only the frames they use.
Target views can have their own size (`target_shape`, None = `image_shape`): Gaussians are resolution-free, so a
model that sees small context images can be trained and scored on larger (or smaller) novel views. Each part is
rescaled and cropped from the original frame on its own, so both keep exact normalized intrinsics.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from .chunks import ChunkError, ChunkStore, decode_image, flip_views, fov_degrees, parse_cameras, rescale_and_crop
from .view_sampler import BoundedViewSampler, EvaluationIndex, ViewSamplerError

# Why SceneStream passes over an example (the counters in SceneStream.skipped, in this order).
SKIP_REASONS = ("frames", "fov", "frame_shape")


class DatasetError(ChunkError):
    """A dataset option or split that cannot be used (a ChunkError, so one `except` covers all data errors)."""


def _seeded_generator(*words: int) -> torch.Generator:
    """A torch generator seeded from a tuple of non-negative ints (no collisions between nearby tuples)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _check_shape(name: str, value) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise DatasetError(f"{name}: expected two positive ints (height, width), got {value!r}")
    return int(value[0]), int(value[1])


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DatasetError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def _check_depth_range(near, far) -> tuple[float, float]:
    for name, value in (("near", near), ("far", far)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise DatasetError(f"{name}: expected a finite number > 0, got {value!r}")
    if not near < far:
        raise DatasetError(f"near/far: expected near < far, got near={near}, far={far}")
    return float(near), float(far)


def _check_rank(rank, world_size) -> tuple[int, int]:
    world_size = _check_count("world_size", world_size, 1)
    rank = _check_count("rank", rank, 0)
    if rank >= world_size:
        raise DatasetError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank}")
    return rank, world_size


def make_views(frames: Tensor, extrinsics: Tensor, intrinsics: Tensor, images: dict[int, Tensor],
               image_shape: tuple[int, int], near: float, far: float) -> dict:
    """VIEWS (see reconstruction.views) of `frames`, from decoded uint8 frames {frame: [3, h, w]}."""
    height, width = image_shape
    out_images, out_k = [], []
    for frame in frames.tolist():
        image, k = rescale_and_crop(images[frame][None], intrinsics[frame][None], (height, width))
        out_images.append(image[0])
        out_k.append(k[0])
    count = len(frames)
    return {"image": torch.stack(out_images),
            "intrinsics": torch.stack(out_k),
            "extrinsics": extrinsics[frames].clone(),
            "near": torch.full((count,), near, dtype=torch.float32),
            "far": torch.full((count,), far, dtype=torch.float32),
            "index": frames.to(torch.int64).clone()}


def make_example(key: str, context: Tensor, target: Tensor, extrinsics: Tensor, intrinsics: Tensor,
                 images: dict[int, Tensor], image_shape, target_shape, near: float, far: float) -> dict:
    """{"key", "context", "target"}: context views at image_shape, target views at target_shape."""
    return {"key": key,
            "context": make_views(context, extrinsics, intrinsics, images, image_shape, near, far),
            "target": make_views(target, extrinsics, intrinsics, images, target_shape, near, far)}


def _decode_frames(example: dict, frames, where: str) -> dict[int, Tensor]:
    return {frame: decode_image(example["images"][frame], f"{where}: frame {frame}")
            for frame in sorted(set(int(f) for f in frames))}


class SceneStream(torch.utils.data.IterableDataset):
    """Endless training examples {"key", "context", "target"} from root/split, deterministic and resumable.

    The global stream is epochs of a seeded order computed from index.json alone: per epoch the chunk order is
    shuffled and so are the keys within each chunk (consecutive positions share a chunk, so the cache hits).
    Global position p belongs to rank p % world_size; `start` is the number of this rank's positions already
    consumed. Inside a DataLoader, worker w of n takes every n-th block of `batch_size` consecutive positions of
    this rank, which is exactly how the DataLoader interleaves its workers' batches back, so batches do not depend
    on the number of workers (pass the DataLoader's batch_size here). Everything random about position p (context
    and target frames, the flip) comes from a generator seeded by (seed, p); the sampler's step is
    p // examples_per_step (use the global batch size, so the gap schedule follows the optimizer step).

    Unusable examples (too few frames for the sampler, a FoV above max_fov_deg, frames of another shape than
    frame_shape) are skipped and counted in `.skipped` (per reason, in the iterating process); the slot then
    takes the next usable example of the same epoch order, so every position still yields exactly one example and
    resuming stays exact. With report_skips=True each example also carries "skipped": int64 [len(SKIP_REASONS)],
    the skips made to fill it, so a training loop can sum them across DataLoader workers. An image that does not
    decode is a ChunkError (corrupt data), not a skip.
    """

    def __init__(self, root: str, split: str, sampler: BoundedViewSampler, image_shape=(256, 256),
                 near: float = 1.0, far: float = 100.0, flip: bool = True, max_fov_deg: float = 100.0,
                 frame_shape=None, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
                 examples_per_step: int = 1, cache_chunks: int = 2, batch_size: int = 1,
                 report_skips: bool = False, target_shape=None):
        super().__init__()
        if not isinstance(sampler, BoundedViewSampler):
            raise DatasetError(f"sampler: expected a BoundedViewSampler, got {type(sampler).__name__}")
        self.sampler = sampler
        self.image_shape = _check_shape("image_shape", image_shape)
        self.target_shape = self.image_shape if target_shape is None else _check_shape("target_shape", target_shape)
        self.frame_shape = None if frame_shape is None else _check_shape("frame_shape", frame_shape)
        self.near, self.far = _check_depth_range(near, far)
        if isinstance(max_fov_deg, bool) or not isinstance(max_fov_deg, (int, float)) or not max_fov_deg > 0:
            raise DatasetError(f"max_fov_deg: expected a number > 0 (degrees), got {max_fov_deg!r}")
        self.max_fov_deg = float(max_fov_deg)
        self.flip = bool(flip)
        self.seed = _check_count("seed", seed, 0)
        self.rank, self.world_size = _check_rank(rank, world_size)
        self.start = _check_count("start", start, 0)
        self.examples_per_step = _check_count("examples_per_step", examples_per_step, 1)
        self.batch_size = _check_count("batch_size", batch_size, 1)
        self.report_skips = bool(report_skips)
        self.store = ChunkStore(root, split, cache_chunks=cache_chunks)
        self.where = os.path.join(str(root), str(split))
        self._groups = list(self.store.keys_by_chunk().values())
        self.num_keys = len(self.store)
        if self.num_keys == 0:
            raise DatasetError(f"{self.where}: no usable example (its index.json lists no examples)")
        self.skipped = {reason: 0 for reason in SKIP_REASONS}
        self._order_cache: tuple[int, list[str]] = (-1, [])

    # --- the global order -------------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> list[str]:
        """The keys of epoch `epoch` in stream order (a pure function of index.json, seed and epoch)."""
        if self._order_cache[0] != epoch:
            generator = _seeded_generator(self.seed, epoch, 1)
            order: list[str] = []
            for group in torch.randperm(len(self._groups), generator=generator).tolist():
                keys = self._groups[group]
                order += [keys[i] for i in torch.randperm(len(keys), generator=generator).tolist()]
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def key_at(self, position: int) -> str:
        """The key at global position `position` (before any skip)."""
        return self.epoch_order(position // self.num_keys)[position % self.num_keys]

    def rank_positions(self, worker: int = 0, num_workers: int = 1):
        """This rank's global positions from `start` on, restricted to worker `worker` of `num_workers`."""
        block = worker
        while True:
            first = self.start + block * self.batch_size
            for k in range(first, first + self.batch_size):
                yield k * self.world_size + self.rank
            block += num_workers

    # --- one position -----------------------------------------------------------------------------------------
    def _try(self, key: str, step: int, generator: torch.Generator):
        """(None, example) or (skip reason, None)."""
        example = self.store.get(key)
        where = f"{self.store.path_of(key)}: key {key!r}"
        extrinsics, intrinsics = parse_cameras(example["cameras"], f"{where}: field 'cameras'")
        if bool((fov_degrees(intrinsics) > self.max_fov_deg).any()):
            return "fov", None
        try:
            context, target = self.sampler.sample(len(example["images"]), step, generator)
        except ViewSamplerError:
            return "frames", None
        images = _decode_frames(example, torch.cat([context, target]), where)
        if self.frame_shape is not None and any(tuple(im.shape[1:]) != self.frame_shape for im in images.values()):
            return "frame_shape", None
        item = make_example(key, context, target, extrinsics, intrinsics, images, self.image_shape,
                            self.target_shape, self.near, self.far)
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            item["context"], item["target"] = flip_views(item["context"]), flip_views(item["target"])
        return None, item

    def example_at(self, position: int) -> dict:
        """The example of global position `position` (a pure function of the data, options and position)."""
        step = position // self.examples_per_step
        generator = _seeded_generator(self.seed, position, 0)
        epoch, offset = divmod(position, self.num_keys)
        order = self.epoch_order(epoch)
        counts = dict.fromkeys(SKIP_REASONS, 0)
        for attempt in range(self.num_keys):
            reason, item = self._try(order[(offset + attempt) % self.num_keys], step, generator)
            if item is not None:
                if self.report_skips:
                    item["skipped"] = torch.tensor([counts[r] for r in SKIP_REASONS], dtype=torch.int64)
                return item
            counts[reason] += 1
            self.skipped[reason] += 1
        detail = ", ".join(f"{counts[r]} {r}" for r in SKIP_REASONS if counts[r])
        raise DatasetError(f"{self.where}: no usable example ({self.num_keys} skipped: {detail}; sampler at step "
                           f"{step}: {self.sampler!r}, max_fov_deg={self.max_fov_deg}, "
                           f"frame_shape={self.frame_shape})")

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for position in self.rank_positions(worker, num_workers):
            yield self.example_at(position)


class EvaluationSet(torch.utils.data.Dataset):
    """The scenes of a fixed EvaluationIndex (this rank's share, keys[rank::world_size]), grouped by chunk.

    Items are {"key", "context", "target"} in the layout of reconstruction.views; no augmentation."""

    def __init__(self, root: str, split: str, index: EvaluationIndex, image_shape=(256, 256), near: float = 1.0,
                 far: float = 100.0, rank: int = 0, world_size: int = 1, cache_chunks: int = 2,
                 target_shape=None):
        if not isinstance(index, EvaluationIndex):
            raise DatasetError(f"index: expected an EvaluationIndex, got {type(index).__name__}")
        self.index = index
        self.image_shape = _check_shape("image_shape", image_shape)
        self.target_shape = self.image_shape if target_shape is None else _check_shape("target_shape", target_shape)
        self.near, self.far = _check_depth_range(near, far)
        self.rank, self.world_size = _check_rank(rank, world_size)
        self.store = ChunkStore(root, split, cache_chunks=cache_chunks)
        where = os.path.join(str(root), str(split))
        for key in index.keys():
            if key not in self.store:
                raise DatasetError(f"{index.path}: key {key!r} is not in {where} (its index.json has no such key)")
        chunk_rank = {name: i for i, name in enumerate(self.store.keys_by_chunk())}
        mine = index.keys()[self.rank::self.world_size]
        self.keys = sorted(mine, key=lambda k: chunk_rank[self.store.chunk_of(k)])  # stable: file order per chunk

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        key = self.keys[i]
        example = self.store.get(key)
        try:
            self.index.check(key, len(example["images"]))
        except ViewSamplerError as error:
            raise DatasetError(str(error)) from None
        context, target = self.index.views(key)
        where = f"{self.store.path_of(key)}: key {key!r}"
        extrinsics, intrinsics = parse_cameras(example["cameras"], f"{where}: field 'cameras'")
        images = _decode_frames(example, torch.cat([context, target]), where)
        return make_example(key, context, target, extrinsics, intrinsics, images, self.image_shape,
                            self.target_shape, self.near, self.far)
