"""pixelSplat-format scene chunks: reading, validating, writing, and the per-frame image and camera conversions.

Users point us at their RE10K / ACID / DTU folders unchanged, so this is the format the official converters
wrote:

    root/{train,test}/NNNNNN.torch   torch.save'd list of example dicts (~100 MB each on RE10K)
    root/{split}/index.json          {key: "NNNNNN.torch"}

    example = {"key": str (non-empty), "url": str (may be empty),
               "timestamps": int64 [N],
               "cameras": float32 [N, 18]   fx fy cx cy (normalized by image width / height), 0, 0,
                                            then the 3x4 world-to-camera matrix (OpenCV axes), row-major,
               "images": list of N uint8 1-D tensors, each an encoded JPEG / PNG file}

Chunks are only ever opened with `torch.load(weights_only=True)`, so a chunk cannot run code when loaded.
"""
from __future__ import annotations

import io
import json
import os
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image
from torch import Tensor

import dnnlib
from splatting.cameras import rigid_inverse
from torch_utils.checkpoint import atomic_torch_save
from torch_utils.misc import quantize_uint8

CAMERA_DIM = 18
EXAMPLE_FIELDS = ("key", "url", "timestamps", "cameras", "images")
INDEX_NAME = "index.json"
# A rotation block further than this from orthonormal is not a camera pose (RE10K poses are float32-exact to
# about 1e-6); inverting it as if it were rigid would silently give a wrong camera.
_RIGID_TOLERANCE = 1e-2


class ChunkError(ValueError):
    """A chunk folder, chunk file or example that is not in the pixelSplat format (one line naming the culprit)."""


# --------------------------------------------------------------------------------------------------------------
# Validation.

def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor {_shape(value)}"
    return f"a {type(value).__name__}"


def validate_example(example, where: str, number: int) -> None:
    """Raise ChunkError unless `example` (the `number`-th one of `where`) is a well-formed example dict."""
    if not isinstance(example, dict):
        raise ChunkError(f"{where}: example {number}: expected a dict with fields {list(EXAMPLE_FIELDS)}, "
                         f"got {_describe(example)}")
    key = example.get("key")
    if not isinstance(key, str) or not key:
        raise ChunkError(f"{where}: example {number}: field 'key': expected a non-empty str, got {key!r}"[:300])
    prefix = f"{where}: example {number} (key {key!r})"
    missing = [name for name in EXAMPLE_FIELDS if name not in example]
    if missing:
        raise ChunkError(f"{prefix}: missing field(s) {missing}")
    if not isinstance(example["url"], str):
        raise ChunkError(f"{prefix}: field 'url': expected a str, got {_describe(example['url'])}")
    cameras = example["cameras"]
    if not isinstance(cameras, Tensor) or not cameras.is_floating_point() or cameras.ndim != 2 \
            or cameras.shape[1] != CAMERA_DIM:
        got = _shape(cameras) if isinstance(cameras, Tensor) and cameras.is_floating_point() else _describe(cameras)
        raise ChunkError(f"{prefix}: field 'cameras': expected a float tensor [N, {CAMERA_DIM}], got {got}")
    if not bool(torch.isfinite(cameras).all()):
        raise ChunkError(f"{prefix}: field 'cameras': contains non-finite values (NaN or inf)")
    num_frames = cameras.shape[0]
    timestamps = example["timestamps"]
    if not isinstance(timestamps, Tensor) or timestamps.is_floating_point() or timestamps.is_complex() \
            or timestamps.dtype == torch.bool or tuple(timestamps.shape) != (num_frames,):
        raise ChunkError(f"{prefix}: field 'timestamps': expected an integer tensor [{num_frames}] "
                         f"(one per camera), got {_describe(timestamps)}")
    images = example["images"]
    if not isinstance(images, (list, tuple)) or len(images) != num_frames:
        got = f"{len(images)} entries" if isinstance(images, (list, tuple)) else _describe(images)
        raise ChunkError(f"{prefix}: field 'images': expected a list of {num_frames} encoded images "
                         f"(one per camera), got {got}")
    for frame, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.ndim != 1 or image.numel() == 0:
            raise ChunkError(f"{prefix}: field 'images': frame {frame}: expected a non-empty uint8 1-D tensor "
                             f"(encoded JPEG/PNG bytes), got {_describe(image)}")


def load_chunk(path: str) -> list[dict]:
    """The validated examples of one chunk file. Loaded with weights_only=True: never executes pickled code."""
    path = str(path)
    if not os.path.isfile(path):
        raise ChunkError(f"{path}: no such chunk file")
    try:
        examples = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001  arbitrary bytes raise arbitrary errors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ChunkError(f"{path}: refused to load it as a chunk (it does not load with torch.load(weights_only="
                         f"True); nothing in it was executed): {reason[:200]}") from None
    if not isinstance(examples, list):
        raise ChunkError(f"{path}: expected a list of example dicts, got {_describe(examples)}")
    for number, example in enumerate(examples):
        validate_example(example, path, number)
    return examples


# --------------------------------------------------------------------------------------------------------------
# Writing.

def _canonical(example: dict) -> dict:
    """The example with the official dtypes and compact storage (a sliced tensor would save its whole buffer)."""
    out = dict(example)
    out["cameras"] = example["cameras"].detach().to(torch.float32).contiguous().clone()
    out["timestamps"] = example["timestamps"].detach().to(torch.int64).contiguous().clone()
    out["images"] = [image.detach().contiguous().clone() for image in example["images"]]
    return out


def _chunk_name(number: int) -> str:
    return f"{number:06d}.torch"


def write_chunks(root: str, split: str, examples, max_chunk_bytes: int = 100 * 2**20,
                 progress: bool = False) -> list[str]:
    """Write `examples` as root/split/000000.torch, ... plus root/split/index.json; returns the chunk paths.

    A new chunk starts when the current one would exceed `max_chunk_bytes` of encoded image bytes (a single
    larger example gets a chunk of its own). Every example is validated like on reading, and keys must be unique.
    Each file is written atomically; an existing index.json is removed first and rewritten last, so an
    interrupted write never leaves an index that names a mix of old and new chunks."""
    if not isinstance(max_chunk_bytes, int) or isinstance(max_chunk_bytes, bool) or max_chunk_bytes <= 0:
        raise ChunkError(f"write_chunks: max_chunk_bytes must be a positive int, got {max_chunk_bytes!r}")
    directory = os.path.join(str(root), str(split))
    os.makedirs(directory, exist_ok=True)
    index_path = os.path.join(directory, INDEX_NAME)
    if os.path.exists(index_path):
        os.remove(index_path)
    if progress:
        from tqdm import tqdm
        examples = tqdm(examples, desc=f"writing {directory}", unit="scene")

    index: dict[str, str] = {}
    paths: list[str] = []
    current: list[dict] = []
    current_bytes = 0

    def flush() -> None:
        nonlocal current, current_bytes
        path = os.path.join(directory, _chunk_name(len(paths)))
        atomic_torch_save(current, path)
        for item in current:
            index[item["key"]] = os.path.basename(path)
        paths.append(path)
        current, current_bytes = [], 0

    seen: set[str] = set()
    for number, example in enumerate(examples):
        validate_example(example, f"write_chunks({directory})", number)
        if example["key"] in seen:
            raise ChunkError(f"write_chunks({directory}): example {number}: duplicate key {example['key']!r}")
        seen.add(example["key"])
        size = sum(int(image.numel()) for image in example["images"])
        if current and current_bytes + size > max_chunk_bytes:
            flush()
        current.append(_canonical(example))
        current_bytes += size
    if current:
        flush()
    with dnnlib.atomic_file(index_path, "w", fsync=True) as handle:
        json.dump(index, handle, indent=0)
    return paths


# --------------------------------------------------------------------------------------------------------------
# Reading a split lazily.

def read_index(root: str, split: str) -> dict[str, str]:
    """root/split/index.json as {key: chunk file name}, after checking that every chunk it names exists."""
    directory = os.path.join(str(root), str(split))
    path = os.path.join(directory, INDEX_NAME)
    if not os.path.isfile(path):
        raise ChunkError(f"{path}: no such file (expected a pixelSplat chunk folder with {split}/{INDEX_NAME})")
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ChunkError(f"{path}: not valid JSON ({str(error).splitlines()[0][:200]})") from None
    if not isinstance(index, dict):
        raise ChunkError(f"{path}: expected a JSON object {{key: chunk file name}}, got {type(index).__name__}")
    existing: dict[str, bool] = {}
    for key, name in index.items():
        if not key:
            raise ChunkError(f"{path}: contains an empty key")
        if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
            raise ChunkError(f"{path}: key {key!r}: expected a chunk file name like 000000.torch, got {name!r}")
        if name not in existing:
            existing[name] = os.path.isfile(os.path.join(directory, name))
        if not existing[name]:
            raise ChunkError(f"{path}: key {key!r} names chunk {name}, which does not exist")
    return index


class ChunkStore:
    """The examples of one split, loaded a chunk at a time into a bounded LRU cache.

    `loads` and `hits` count chunk loads and cache hits. Pickling (DataLoader workers) leaves the cache behind."""

    def __init__(self, root: str, split: str, cache_chunks: int = 2):
        if not isinstance(cache_chunks, int) or isinstance(cache_chunks, bool) or cache_chunks < 1:
            raise ChunkError(f"ChunkStore: cache_chunks must be an int >= 1, got {cache_chunks!r}")
        self.root, self.split, self.cache_chunks = str(root), str(split), cache_chunks
        self.directory = os.path.join(self.root, self.split)
        self.index = read_index(self.root, self.split)
        self._cache: OrderedDict[str, dict[str, dict]] = OrderedDict()
        self.loads = 0
        self.hits = 0

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key) -> bool:
        return key in self.index

    def keys(self) -> list[str]:
        """Keys in index.json order."""
        return list(self.index)

    def chunk_of(self, key: str) -> str:
        """The chunk file name holding `key`."""
        if key not in self.index:
            raise ChunkError(f"{os.path.join(self.directory, INDEX_NAME)}: no example with key {key!r}")
        return self.index[key]

    def keys_by_chunk(self) -> dict[str, list[str]]:
        """{chunk file name: its keys}, chunks in order of first appearance in index.json."""
        groups: dict[str, list[str]] = {}
        for key, name in self.index.items():
            groups.setdefault(name, []).append(key)
        return groups

    def path_of(self, key: str) -> str:
        return os.path.join(self.directory, self.chunk_of(key))

    def _chunk(self, name: str) -> dict[str, dict]:
        if name in self._cache:
            self._cache.move_to_end(name)
            self.hits += 1
            return self._cache[name]
        examples = load_chunk(os.path.join(self.directory, name))
        self.loads += 1
        self._cache[name] = {example["key"]: example for example in examples}
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return self._cache[name]

    def cached_chunks(self) -> list[str]:
        return list(self._cache)

    def get(self, key: str) -> dict:
        """The example `key` (validated)."""
        name = self.chunk_of(key)
        examples = self._chunk(name)
        if key not in examples:
            raise ChunkError(f"{os.path.join(self.directory, INDEX_NAME)}: key {key!r} names chunk {name}, "
                             f"but that chunk has no example with this key")
        return examples[key]


# --------------------------------------------------------------------------------------------------------------
# Cameras.

def parse_cameras(cameras: Tensor, where: str = "cameras") -> tuple[Tensor, Tensor]:
    """[N, 18] stored cameras -> (camera-to-world [N, 4, 4] OpenCV, normalized intrinsics [N, 3, 3]), float32."""
    if not isinstance(cameras, Tensor) or cameras.ndim != 2 or cameras.shape[1] != CAMERA_DIM:
        raise ChunkError(f"{where}: expected a float tensor [N, {CAMERA_DIM}], got {_describe(cameras)}")
    cameras = cameras.to(torch.float32)
    num = cameras.shape[0]
    fx, fy, cx, cy = cameras[:, 0], cameras[:, 1], cameras[:, 2], cameras[:, 3]
    intrinsics = torch.zeros(num, 3, 3)
    intrinsics[:, 0, 0], intrinsics[:, 1, 1] = fx, fy
    intrinsics[:, 0, 2], intrinsics[:, 1, 2] = cx, cy
    intrinsics[:, 2, 2] = 1
    w2c = torch.eye(4).repeat(num, 1, 1)
    w2c[:, :3] = cameras[:, 6:].reshape(num, 3, 4)
    rot = w2c[:, :3, :3].double()
    error = (rot.transpose(-1, -2) @ rot - torch.eye(3, dtype=torch.float64)).abs().amax(dim=(-1, -2))
    bad = (error > _RIGID_TOLERANCE) | (torch.linalg.det(rot) <= 0)
    if bool(bad.any()):
        frame = int(bad.nonzero()[0, 0])
        raise ChunkError(f"{where}: frame {frame}: the world-to-camera rotation is not a rotation matrix "
                         f"(|R^T R - I| = {float(error[frame]):.3g}, det = {float(torch.linalg.det(rot[frame])):.3g})")
    if bool((fx <= 0).any() or (fy <= 0).any()):
        raise ChunkError(f"{where}: focal lengths fx, fy must be > 0")
    return rigid_inverse(w2c), intrinsics


def pack_cameras(extrinsics: Tensor, intrinsics: Tensor) -> Tensor:
    """(camera-to-world [N, 4, 4], normalized intrinsics [N, 3, 3]) -> the stored [N, 18] float32 layout."""
    if not isinstance(extrinsics, Tensor) or extrinsics.ndim != 3 or tuple(extrinsics.shape[1:]) != (4, 4):
        raise ChunkError(f"pack_cameras: extrinsics: expected a float tensor [N, 4, 4], got {_describe(extrinsics)}")
    num = extrinsics.shape[0]
    if not isinstance(intrinsics, Tensor) or tuple(intrinsics.shape) != (num, 3, 3):
        raise ChunkError(f"pack_cameras: intrinsics: expected a float tensor [{num}, 3, 3], "
                         f"got {_describe(intrinsics)}")
    w2c = rigid_inverse(extrinsics.detach().to(torch.float64))
    k = intrinsics.detach().to(torch.float64)
    out = torch.zeros(num, CAMERA_DIM, dtype=torch.float64)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]
    out[:, 6:] = w2c[:, :3].reshape(num, 12)
    return out.to(torch.float32)


def fov_degrees(intrinsics: Tensor) -> Tensor:
    """[..., 3, 3] normalized intrinsics -> [..., 2] (horizontal, vertical) field of view in degrees."""
    focal = torch.stack([intrinsics[..., 0, 0], intrinsics[..., 1, 1]], dim=-1)
    return torch.rad2deg(2 * torch.atan(0.5 / focal))


# --------------------------------------------------------------------------------------------------------------
# Images.

def decode_image(data: Tensor, where: str) -> Tensor:
    """Encoded JPEG/PNG bytes (uint8 1-D) -> uint8 [3, H, W] RGB; grayscale, palette and alpha are converted."""
    if not isinstance(data, Tensor) or data.dtype != torch.uint8 or data.ndim != 1:
        raise ChunkError(f"{where}: expected encoded image bytes as a uint8 1-D tensor, got {_describe(data)}")
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            image.load()
            rgb = image.convert("RGB")
    except Exception as error:  # noqa: BLE001  PIL raises many kinds for corrupt data
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ChunkError(f"{where}: image does not decode ({reason[:200]})") from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _resize_lanczos(images: Tensor, height: int, width: int) -> Tensor:
    """uint8 [N, 3, h, w] -> uint8 [N, 3, height, width] with PIL's Lanczos filter (antialiased)."""
    out = []
    for image in images:
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        out.append(torch.from_numpy(np.array(pil.resize((width, height), Image.LANCZOS))).permute(2, 0, 1))
    return torch.stack(out)


def rescale_and_crop(images: Tensor, intrinsics: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Scale `images` [N, 3, h, w] so they just cover `shape` (H, W), then centre-crop to it.

    This is the official image shim (RE10K 360x640 -> 256x455 -> 256x256). images: float in [0, 1] (quantized to
    uint8 for the Lanczos resize, as officially) or uint8. Returns float32 images [N, 3, H, W] in [0, 1] and the
    normalized intrinsics of the result. A resize keeps normalized intrinsics (pixel edges map to edges); the crop
    changes them exactly: fx' = fx * w_s / W, cx' = (cx * w_s - left) / W, and likewise for y."""
    height, width = (int(s) for s in shape)
    if height <= 0 or width <= 0:
        raise ChunkError(f"rescale_and_crop: shape must be two positive ints (H, W), got {tuple(shape)}")
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ChunkError(f"rescale_and_crop: images: expected a tensor [N, 3, h, w], got {_describe(images)}")
    if tuple(intrinsics.shape) != (images.shape[0], 3, 3):
        raise ChunkError(f"rescale_and_crop: intrinsics: expected [{images.shape[0]}, 3, 3], "
                         f"got {_shape(intrinsics)}")
    h_in, w_in = images.shape[-2:]
    scale = max(height / h_in, width / w_in)
    h_scaled, w_scaled = max(height, round(h_in * scale)), max(width, round(w_in * scale))
    if (h_scaled, w_scaled) != (h_in, w_in):
        if images.dtype != torch.uint8:
            images = quantize_uint8(images, drange=(0, 1))
        images = _resize_lanczos(images, h_scaled, w_scaled)
    if images.dtype == torch.uint8:
        images = images.to(torch.float32) / 255
    top, left = (h_scaled - height) // 2, (w_scaled - width) // 2
    images = images[..., top:top + height, left:left + width].to(torch.float32).contiguous()
    k = intrinsics.to(torch.float32).clone()
    k[:, 0, 0] = intrinsics[:, 0, 0] * w_scaled / width
    k[:, 1, 1] = intrinsics[:, 1, 1] * h_scaled / height
    k[:, 0, 2] = (intrinsics[:, 0, 2] * w_scaled - left) / width
    k[:, 1, 2] = (intrinsics[:, 1, 2] * h_scaled - top) / height
    return images, k


def flip_views(views: dict) -> dict:
    """Views mirrored left-right: images flipped along W, cameras mirrored across their world's x = 0 plane.

    With M = diag(-1, 1, 1, 1), camera-to-world becomes M c2w M and cx becomes 1 - cx, so the flipped camera sees
    the x-mirrored scene exactly as the mirror image of what the original camera sees of the original scene.
    Works on [V, ...] and batched [B, V, ...] views; other fields are copied."""
    out = dict(views)
    out["image"] = views["image"].flip(-1)
    sign = views["extrinsics"].new_tensor([-1.0, 1.0, 1.0, 1.0])
    out["extrinsics"] = views["extrinsics"] * sign[:, None] * sign[None, :]
    k = views["intrinsics"].clone()
    k[..., 0, 2] = 1 - views["intrinsics"][..., 0, 2]
    k[..., 0, 1] = -views["intrinsics"][..., 0, 1]
    out["intrinsics"] = k
    return out
