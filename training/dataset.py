"""EG3D-format image datasets: a .zip or a folder of square RGB images plus `dataset.json` with camera labels.

dataset.json = {"labels": [[relative_path, [25 floats]], ...]}; a label is the OpenCV cam2world (16 floats,
row-major) followed by the normalized intrinsics (9 floats). The listing in dataset.json defines the dataset.
Labels and the listing are checked when the dataset is built; every image is checked (mode, size) when read.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib

import numpy as np
from PIL import Image

LABELS_FILE = "dataset.json"
LABEL_DIM = 25
FLOAT32_MAX = float(np.finfo(np.float32).max)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset that does not follow the EG3D format; the message names the file/field and what was expected.

    A DataLoader worker hands its exceptions to the main process by rebuilding them from the worker's whole
    traceback text ("Caught DatasetError in DataLoader worker process 0. Original Traceback ..."); this class
    keeps only its original one-line message then, so an image that fails in a worker reads exactly as it does
    in the main process. Pickling keeps the message too (multi-process ranks can pass the error on as it is).
    """

    def __init__(self, message: str = ""):
        super().__init__(_worker_message(str(message)))


def _worker_message(message: str) -> str:
    """The original message of a DatasetError rebuilt by torch's DataLoader from a worker's traceback, else
    `message` unchanged."""
    if not (message.startswith("Caught DatasetError") and "Traceback" in message):
        return message
    marker = "DatasetError: "
    position = message.rfind(marker)
    if position < 0:
        return message
    return message[position + len(marker):].strip()


# ----------------------------------------------------------------------------------------------------------
# Reading files from a folder or a zip


class ArchiveReader:
    """Read-only access to the files of a folder or a zip (relative '/'-separated names).

    The zip handle is opened lazily and reopened in a new process, so the reader (and datasets holding one) can be
    pickled to DataLoader workers and used after fork without sharing a file offset between processes.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            self.kind = "dir"
        elif os.path.isfile(self.path) and self.path.lower().endswith(".zip"):
            self.kind = "zip"
        elif os.path.exists(self.path):
            raise DatasetError(f"{self.path}: expected a folder or a .zip file")
        else:
            raise DatasetError(f"{self.path}: no such folder or .zip file")
        self._zip = None
        self._zip_pid = None
        self._sizes = self._list_sizes()

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DatasetError(f"{self.path}: not a readable zip file ({exc})") from None
            self._zip_pid = os.getpid()
        return self._zip

    def _list_sizes(self) -> dict[str, int]:
        if self.kind == "zip":
            infos = [info for info in self._zipfile().infolist() if not info.is_dir()]
            self._zip_crcs = {info.filename: info.CRC for info in infos}
            return {info.filename: info.file_size for info in infos}

        def unreadable(error: OSError):
            raise DatasetError(f"{self.path}: cannot list {error.filename} ({error.strerror})")

        sizes = {}
        for root, _dirs, files in os.walk(self.path, onerror=unreadable):
            for fname in files:
                full = os.path.join(root, fname)
                name = os.path.relpath(full, self.path).replace(os.sep, "/")
                try:
                    sizes[name] = os.path.getsize(full)
                except OSError as error:
                    if os.path.islink(full) and not os.path.exists(full):
                        raise DatasetError(f"{self.path}: '{name}' is a dangling symbolic link (its target "
                                           f"{os.readlink(full)} does not exist)") from None
                    raise DatasetError(f"{self.path}: cannot read '{name}' ({error.strerror})") from None
        return sizes

    def crc32(self, name: str) -> int:
        """CRC-32 of a file's bytes: free for zip members (stored), computed by reading for folder files."""
        if self.kind == "zip":
            return self._zip_crcs[name]
        return zlib.crc32(self.read(name))

    @property
    def sizes(self) -> dict[str, int]:
        """{relative name: size in bytes} of every file."""
        return dict(self._sizes)

    def exists(self, name: str) -> bool:
        return name in self._sizes

    def read(self, name: str) -> bytes:
        if name not in self._sizes:
            raise DatasetError(f"{self.path}: '{name}' is listed in {LABELS_FILE} but missing from the dataset")
        try:
            if self.kind == "zip":
                return self._zipfile().read(name)
            with open(os.path.join(self.path, name), "rb") as f:
                return f.read()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # CRC errors, truncated members
            raise DatasetError(f"{self.path}: cannot read '{name}' ({exc})") from None

    def image_names(self) -> list[str]:
        return sorted(n for n in self._sizes if n.lower().endswith(IMAGE_EXTENSIONS))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._zip = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"], state["_zip_pid"] = None, None
        return state


# ----------------------------------------------------------------------------------------------------------
# Labels


def check_label(values, where: str) -> np.ndarray:
    """float64 [25] from a JSON label value, or DatasetError naming `where`."""
    if not isinstance(values, (list, tuple)) or len(values) != LABEL_DIM:
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
        raise DatasetError(f"{where}: expected a label of {LABEL_DIM} numbers (16 cam2world + 9 intrinsics), got {got}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DatasetError(f"{where}: expected a label of {LABEL_DIM} numbers, found a non-number entry")
    label = np.asarray(values, dtype=np.float64)
    if not np.isfinite(label).all():
        raise DatasetError(f"{where}: label has non-finite values (NaN or inf)")
    too_large = np.abs(label) > FLOAT32_MAX  # the labels are used as float32, where these become inf
    if too_large.any():
        i = int(np.argmax(too_large))
        raise DatasetError(f"{where}: label entry {i} = {label[i]:g} is out of the float32 range (|x| <= "
                           f"{FLOAT32_MAX:.4g})")
    return label


def check_camera_geometry(labels: np.ndarray, names: list[str], where: str) -> None:
    """Reject labels that the renderer would reject: non-rigid cam2world or non-pinhole intrinsics."""
    cam = labels[:, :16].reshape(-1, 4, 4)
    rot = cam[:, :3, :3]
    k = labels[:, 16:].reshape(-1, 3, 3)
    problems = [
        (np.abs(cam[:, 3] - [0, 0, 0, 1]).max(axis=1) > 1e-4,
         "cam2world (entries 0-15) must be row-major with last row 0 0 0 1"),
        (np.abs(np.einsum("nji,njk->nik", rot, rot) - np.eye(3)).max(axis=(1, 2)) > 1e-2,
         "the rotation part of cam2world is not orthonormal"),
        (np.linalg.det(rot) <= 0, "cam2world is a reflection (det < 0), expected a right-handed rotation"),
        ((np.abs(k[:, [0, 1, 2, 2], [1, 0, 0, 1]]).max(axis=1) > 1e-6) | (np.abs(k[:, 2, 2] - 1) > 1e-6),
         "intrinsics (entries 16-24) must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]"),
        ((k[:, 0, 0] <= 0) | (k[:, 1, 1] <= 0), "intrinsics must have positive focal lengths"),
    ]
    for bad, message in problems:
        if bad.any():
            i = int(np.argmax(bad))
            raise DatasetError(f"{where}: label of '{names[i]}': {message}")


def parse_labels_json(data: bytes, where: str) -> list[tuple[str, np.ndarray]]:
    """[(relative image name, float64 label [25])] from the bytes of an EG3D dataset.json."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("labels"), list):
        raise DatasetError(f'{where}: expected an object {{"labels": [[relative_path, [25 floats]], ...]}}')
    entries, seen = [], set()
    for i, entry in enumerate(doc["labels"]):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise DatasetError(f'{where}: labels[{i}]: expected [relative_path, [25 floats]], got {str(entry)[:80]}')
        name = entry[0].replace("\\", "/")
        if name.startswith("/") or ".." in name.split("/") or not name:
            raise DatasetError(f"{where}: labels[{i}]: expected a relative path inside the dataset, got '{name}'")
        if name in seen:
            raise DatasetError(f"{where}: labels[{i}]: '{name}' is listed twice")
        seen.add(name)
        entries.append((name, check_label(entry[1], f"{where}: labels[{i}] ('{name}')")))
    return entries


def _labels_are_null(data: bytes) -> bool:
    """True for the {"labels": null} that unconditional EG3D/StyleGAN datasets carry."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and "labels" in doc and doc["labels"] is None


# ----------------------------------------------------------------------------------------------------------
# Images


def decode_rgb(data: bytes, where: str) -> Image.Image:
    """A PIL RGB image from encoded bytes; non-RGB modes (grayscale, RGBA, palette, CMYK) are errors."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.UnidentifiedImageError:  # its message holds the address of an in-memory buffer: say it plainly
        raise DatasetError(f"{where}: not a readable image (unknown format or damaged header)") from None
    except Exception as exc:  # PIL raises many types for undecodable data
        raise DatasetError(f"{where}: not a readable image ({exc})") from None
    if image.mode != "RGB":
        raise DatasetError(f"{where}: expected an RGB image, got mode {image.mode}")
    return image


def is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


# ----------------------------------------------------------------------------------------------------------
# The dataset


class ImageFolderDataset:
    """EG3D-format dataset; items are (image uint8 [3, R, R], label float32 [25]).

    xflip doubles the dataset: item i + n is item i mirrored horizontally with its camera mirrored across the
    world x = 0 plane (splatting.cameras.mirror_eg3d_labels), which is the same picture of the mirrored world.
    max_size keeps a deterministic random subset (seeded by random_seed) in listing order.
    With use_labels=False the labels are empty ([0]) and a source without dataset.json lists all its images.
    """

    def __init__(self, path: str, resolution: int | None = None, max_size: int | None = None, xflip: bool = False,
                 use_labels: bool = True, random_seed: int = 0):
        self.path = os.fspath(path)
        self._archive = ArchiveReader(self.path)
        self._use_labels = bool(use_labels)
        names, labels = self._read_listing()
        if not names:
            raise DatasetError(f"{self.path}: empty dataset (no images listed)")
        for name in names:
            if not self._archive.exists(name):
                raise DatasetError(f"{self.path}: '{name}' is listed in {LABELS_FILE} but missing from the dataset")

        raw_idx = np.arange(len(names), dtype=np.int64)
        if max_size is not None:
            if int(max_size) < 1:
                raise DatasetError(f"max_size: expected a positive number of images, got {max_size}")
            if max_size < len(raw_idx):
                np.random.RandomState(random_seed % (1 << 31)).shuffle(raw_idx)
                raw_idx = np.sort(raw_idx[:max_size])
        self._names = [names[i] for i in raw_idx]
        self._labels = labels[raw_idx].astype(np.float32)
        self._xflip = bool(xflip)

        first = self._load_pil(0)
        size = first.size[0]
        if first.size[0] != first.size[1]:
            raise DatasetError(f"{self._where(0)}: expected a square image, got {first.size[0]}x{first.size[1]}")
        if not is_power_of_two(size):
            raise DatasetError(f"{self._where(0)}: expected a power-of-two resolution, got {size}x{size}")
        if resolution is not None and resolution != size:
            raise DatasetError(f"{self.path}: images are {size}x{size} but resolution={resolution} was requested")
        self._resolution = size

    def _read_listing(self) -> tuple[list[str], np.ndarray]:
        """Image names and float64 labels [n, 25] from dataset.json (checked), or all images without labels."""
        where = f"{self.path}/{LABELS_FILE}"
        data = self._archive.read(LABELS_FILE) if self._archive.exists(LABELS_FILE) else None
        if data is None and self._use_labels:
            raise DatasetError(f"{where}: missing (an EG3D dataset needs dataset.json with the camera labels)")
        if data is None or (not self._use_labels and _labels_are_null(data)):
            names = self._archive.image_names()
            return names, np.zeros((len(names), LABEL_DIM))
        entries = parse_labels_json(data, where)
        names = [name for name, _ in entries]
        labels = np.stack([label for _, label in entries]) if entries else np.zeros((0, LABEL_DIM))
        if self._use_labels and entries:
            check_camera_geometry(labels, names, where)
        return names, labels

    # -- properties ----------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(os.path.normpath(self.path)))[0]

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def num_channels(self) -> int:
        return 3

    @property
    def image_shape(self) -> list[int]:
        return [3, self._resolution, self._resolution]

    @property
    def has_labels(self) -> bool:
        return self._use_labels

    @property
    def label_shape(self) -> list[int]:
        return [LABEL_DIM] if self._use_labels else [0]

    @property
    def label_dim(self) -> int:
        return self.label_shape[0]

    @property
    def raw_labels(self) -> np.ndarray:
        """float32 [n, 25] labels of the images kept (after max_size, before x-flip); [n, 0] without labels."""
        return self._labels.copy() if self._use_labels else np.zeros((len(self._names), 0), np.float32)

    @property
    def image_names(self) -> list[str]:
        """Relative names of the images kept (after max_size, before x-flip)."""
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names) * (2 if self._xflip else 1)

    # -- items ---------------------------------------------------------------------------------------------
    def _split(self, idx: int) -> tuple[int, bool]:
        n = len(self._names)
        if not -len(self) <= idx < len(self):
            raise IndexError(f"dataset index {idx} out of range for {len(self)} items")
        idx %= len(self)
        return idx % n, idx >= n

    def _where(self, raw: int) -> str:
        return f"{self.path}/{self._names[raw]}"

    def _load_pil(self, raw: int) -> Image.Image:
        return decode_rgb(self._archive.read(self._names[raw]), self._where(raw))

    def _load_image(self, raw: int) -> np.ndarray:
        image = self._load_pil(raw)
        if image.size != (self._resolution, self._resolution):
            raise DatasetError(f"{self._where(raw)}: expected {self._resolution}x{self._resolution} like the rest "
                               f"of the dataset, got {image.size[0]}x{image.size[1]}")
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        raw, flipped = self._split(int(idx))
        image = self._load_image(raw)
        if flipped:
            image = image[:, :, ::-1]
        return np.ascontiguousarray(image), self.get_label(idx)

    def get_label(self, idx: int) -> np.ndarray:
        """float32 [25] label of item idx (mirrored for the x-flipped half); [0] without labels."""
        raw, flipped = self._split(int(idx))
        if not self._use_labels:
            return np.zeros(0, dtype=np.float32)
        label = self._labels[raw].copy()
        if not flipped:
            return label
        # Imported here so that `import training.dataset` stays free of torch: dataset_tool's render workers
        # import this module and would otherwise pay ~2 s of CPU each for an unused torch import.
        from splatting.cameras import mirror_eg3d_labels

        return mirror_eg3d_labels(label)

    # -- identity ------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 hex of dataset.json and every file's (name, size, CRC-32); a folder and its zip agree.

        Metric caches are keyed by it, so a dataset regenerated at the same path never reuses stale statistics.
        """
        h = hashlib.sha256()
        if self._archive.exists(LABELS_FILE):
            h.update(self._archive.read(LABELS_FILE))
        for name, size in sorted(self._archive.sizes.items()):
            h.update(f"{name}\0{size}\0{self._archive.crc32(name):08x}\n".encode())
        return h.hexdigest()

    def close(self) -> None:
        self._archive.close()

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({self.path!r}, {len(self._names)} images, resolution={self._resolution}, "
                f"xflip={self._xflip}, labels={self._use_labels})")


def label_summary(labels: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """(min, mean, max) of camera distance, focal lengths and principal point of labels [n, 25]."""
    cam = labels[:, :16].reshape(-1, 4, 4).astype(np.float64)
    k = labels[:, 16:].reshape(-1, 3, 3).astype(np.float64)
    origin = cam[:, :3, 3]
    dist = np.linalg.norm(origin, axis=1)
    forward = cam[:, :3, 2]
    to_origin = -origin / np.maximum(dist[:, None], 1e-12)
    stats = {
        "camera distance": dist,
        "forward . dir-to-origin": np.einsum("ni,ni->n", forward, to_origin),
        "fx": k[:, 0, 0], "fy": k[:, 1, 1], "cx": k[:, 0, 2], "cy": k[:, 1, 2],
    }
    return {key: (float(v.min()), float(v.mean()), float(v.max())) for key, v in stats.items()}


__all__ = ["DatasetError", "ImageFolderDataset", "ArchiveReader", "parse_labels_json", "check_label",
           "check_camera_geometry", "decode_rgb", "is_power_of_two", "label_summary", "LABELS_FILE", "LABEL_DIM"]
