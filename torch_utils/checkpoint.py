"""Safe training snapshots: written atomically, loaded with torch.load(weights_only=True), modules rebuilt through
an explicit class registry from their constructor kwargs + a strict state_dict. Loading never runs code from the
file: anything that is not a plain gsgan snapshot is refused with SnapshotError.

Layout (docs/interfaces.md): {"format": "gsgan-snapshot", "version": 1, "G"|"D"|"G_ema"|"augment_pipe":
{"class", "init_kwargs", "state_dict"} (augment_pipe may be None), "optimizers": {"G", "D"}, "progress": {...},
"rng": {...}, "options": {...}, "checksum": "sha256:<hex>"}.

Every snapshot written through `atomic_torch_save` carries a checksum of its whole content (each tensor's dtype,
shape and bytes, and every other value), checked when it is read: a flipped byte inside a tensor, which torch.load
itself never notices, is refused with one line naming the file. Snapshots written before checksums existed (no
"checksum" key) still load.

A second kind, the reconstruction snapshot (reconstruct.py train), shares the safety rules and the class registry:
{"format": "gsgan-reconstruction-snapshot", "version": 1, "encoder": {"class", "init_kwargs", "state_dict"},
"optimizer", "scheduler", "progress": {"step", "examples_seen": [per rank]}, "rng": {"ranks": [...]},
"options": {...}, "densifier": {"class", "init_kwargs", "state_dict"} or None (absent in snapshots written before
generative densification: read as None)}. Its files are network-snapshot-SSSSSS.pt with SSSSSS = completed
optimizer steps.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import re

import torch
from torch import nn

from torch_utils.misc import atomic_file

FORMAT = "gsgan-snapshot"
VERSION = 1
MODULE_KEYS = ("G", "D", "G_ema", "augment_pipe")
# Class name -> "module:attribute". Only these classes can ever be constructed from a snapshot.
REGISTRY = {
    "GSGenerator": "training.generator:GSGenerator",
    "NaiveGenerator": "training.naive_generator:NaiveGenerator",
    "Discriminator": "training.discriminator:Discriminator",
    "AugmentPipe": "training.augment:AugmentPipe",
    "CostVolumeEncoder": "reconstruction.encoder:CostVolumeEncoder",
    "GaussianDensifier": "reconstruction.densify.model:GaussianDensifier",
}
RECON_FORMAT = "gsgan-reconstruction-snapshot"
RECON_VERSION = 1
RECON_KEYS = ("encoder", "optimizer", "scheduler", "progress", "rng", "options")
# network-snapshot-KKKKKK.pt, or network-snapshot-KKKKKK.FFF.pt when the image count is not a whole kimg.
SNAPSHOT_RE = re.compile(r"^network-snapshot-(\d+)(?:\.(\d{3}))?\.pt$")
CHECKSUM_KEY = "checksum"
# init_kwargs that are run-time choices rather than architecture: a resume may change them (the render backend
# old snapshots still carry, the augmentation probability that ADA adjusts and --p sets).
RUNTIME_KWARGS = ("rendering_backend", "p")


class SnapshotError(ValueError):
    """A file that is not a loadable gsgan snapshot (one-line message naming the file)."""


class SnapshotWriteError(SnapshotError, OSError):
    """A snapshot that could not be written (disk full, quota, read-only folder); nothing was left behind.

    Both a SnapshotError (the CLIs print it as one line) and an OSError with the system's `errno` / `strerror`, so
    callers that already catch OSError around a write keep working."""

    def __init__(self, message: str, errno: int | None = None, strerror: str | None = None):
        super().__init__(message)
        self.errno, self.strerror = errno, strerror

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.args[0], self.errno, self.strerror)


def kimg_label(cur_nimg: int) -> str:
    """KKKKKK (completed kimg) for a whole number of kimg, else KKKKKK.FFF (FFF = images mod 1000), so that runs
    shorter than 1 kimg, or snapshots that do not fall on a kimg boundary, never share a name."""
    kimg, rest = divmod(int(cur_nimg), 1000)
    return f"{kimg:06d}" if rest == 0 else f"{kimg:06d}.{rest:03d}"


def snapshot_filename(cur_nimg: int) -> str:
    """network-snapshot-<kimg_label>.pt: network-snapshot-000004.pt at 4000 images, -000000.512.pt at 512."""
    return f"network-snapshot-{kimg_label(cur_nimg)}.pt"


def registered_class(name: str) -> type:
    if name not in REGISTRY:
        raise KeyError(name)
    module_name, attribute = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), attribute)


def module_record(module: nn.Module) -> dict:
    """{"class", "init_kwargs", "state_dict"} of a registered module, tensors copied to CPU."""
    name = type(module).__name__
    if name not in REGISTRY:
        raise TypeError(f"cannot snapshot {name}: not in torch_utils.checkpoint.REGISTRY {sorted(REGISTRY)}")
    init_kwargs = getattr(module, "init_kwargs", None)
    if not isinstance(init_kwargs, dict):
        raise TypeError(f"cannot snapshot {name}: it has no init_kwargs dict")
    state = {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}
    return {"class": name, "init_kwargs": dict(init_kwargs), "state_dict": state}


def build_module(record, device="cpu", what: str = "module", path: str = "") -> nn.Module:
    """Construct a registered class from its record and load its state_dict strictly."""
    prefix = f"{path}: {what}" if path else what
    if not isinstance(record, dict) or set(record) != {"class", "init_kwargs", "state_dict"}:
        raise SnapshotError(f"{prefix}: expected a dict with keys class, init_kwargs, state_dict")
    name, init_kwargs, state = record["class"], record["init_kwargs"], record["state_dict"]
    if name not in REGISTRY:
        raise SnapshotError(f"{prefix}: class {name!r} is not one of {sorted(REGISTRY)}")
    if not isinstance(init_kwargs, dict) or not isinstance(state, dict):
        raise SnapshotError(f"{prefix}: init_kwargs and state_dict must be dicts")
    try:
        module = registered_class(name)(**init_kwargs)
    except (TypeError, ValueError) as error:  # a constructor refuses bad sizes with a ValueError
        raise SnapshotError(f"{prefix}: cannot construct {name} from its init_kwargs: {error}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise SnapshotError(f"{prefix}: state_dict does not match {name}: {' '.join(first[:3])}") from None
    return module.to(device).eval().requires_grad_(False)


def check_architecture(module: nn.Module, record, path: str, key: str, ignore=RUNTIME_KWARGS) -> None:
    """SnapshotError unless `record` describes `module`'s architecture: the same class and init_kwargs (except the
    `ignore`d run-time settings) and a state_dict with the same names and shapes. `module` may live on the meta
    device: nothing is loaded."""
    if not isinstance(record, dict) or not {"class", "init_kwargs", "state_dict"} <= set(record):
        raise SnapshotError(f"{path}: {key} is not a module record (expected class, init_kwargs, state_dict)")
    if record["class"] != type(module).__name__:
        raise SnapshotError(f"{path}: {key} is a {record['class']}, expected {type(module).__name__}")
    saved, current = record["init_kwargs"], module.init_kwargs
    if not isinstance(saved, dict) or not isinstance(record["state_dict"], dict):
        raise SnapshotError(f"{path}: {key}: init_kwargs and state_dict must be dicts")
    diff = sorted(k for k in set(saved) | set(current) if k not in ignore and saved.get(k) != current.get(k))
    if diff:
        details = ", ".join(f"{k}={saved.get(k)!r} (snapshot) vs {current.get(k)!r}" for k in diff)
        raise SnapshotError(f"{path}: {key} architecture differs from this run's options: {details}")
    state = record["state_dict"]
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise SnapshotError(f"{path}: {key}: state_dict holds values that are not tensors")
    check_state_dict(state, module, path, key)


def load_into(module: nn.Module, record: dict, path: str, key: str, ignore=RUNTIME_KWARGS) -> None:
    """Load a snapshot record into an existing module after checking it describes the same architecture
    (check_architecture); strict state_dict loading."""
    check_architecture(module, record, path, key, ignore)
    try:
        module.load_state_dict(record["state_dict"], strict=True)
    except RuntimeError as error:
        raise SnapshotError(f"{path}: {key} state_dict does not match: {str(error).splitlines()[0]}") from None


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _digest(value, h) -> None:
    """Feed a canonical encoding of `value` into hash `h`: tensors by dtype, shape and bytes, containers item by
    item (dicts in key order), anything else by type and repr. The same data always gives the same bytes."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"T{tensor.dtype}{list(value.shape)}:".encode())
        h.update(memoryview(tensor.view(torch.uint8).numpy()))
    elif isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: (type(item[0]).__name__, repr(item[0])))
        h.update(f"D{len(items)}:".encode())
        for key, item in items:
            _digest(key, h)
            _digest(item, h)
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__[0]}{len(value)}:".encode())
        for item in value:
            _digest(item, h)
    else:
        text = repr(value).encode()
        h.update(f"V{type(value).__name__}{len(text)}:".encode())
        h.update(text)


def content_checksum(snapshot: dict) -> str:
    """"sha256:<hex>" of everything in a snapshot dict except its own checksum entry."""
    h = hashlib.sha256()
    _digest({key: value for key, value in snapshot.items() if key != CHECKSUM_KEY}, h)
    return f"sha256:{h.hexdigest()}"


def verify_checksum(data, path: str) -> None:
    """SnapshotError when a snapshot dict carries a checksum that its content does not match (no checksum: a
    snapshot from before checksums existed, accepted)."""
    if not _is_snapshot(data) or CHECKSUM_KEY not in data:
        return
    stored = data[CHECKSUM_KEY]
    if not isinstance(stored, str) or not stored.startswith("sha256:"):
        raise SnapshotError(f"{path}: malformed checksum {str(stored)[:80]!r} (expected 'sha256:<hex>')")
    if content_checksum(data) != stored:
        raise SnapshotError(f"{path}: checksum mismatch: the file was altered or corrupted after it was written "
                            f"(bytes changed on disk or in transfer); use another copy or an earlier snapshot")


def _is_snapshot(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") in (FORMAT, RECON_FORMAT)


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error`: torch.save reports a failed write as a RuntimeError whose context is it."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def atomic_torch_save(obj, path: str) -> None:
    """torch.save into a temp file in the same directory, fsync, then os.replace: never a half-written file.

    A gsgan snapshot dict (GAN or reconstruction format marker) is written with its content checksum, whoever
    builds it. A write that fails in the operating system (disk full, quota, read-only folder) removes the temp
    file and raises SnapshotWriteError with one line naming `path`."""
    if _is_snapshot(obj):
        obj = dict(obj)
        obj[CHECKSUM_KEY] = content_checksum(obj)
    try:
        with atomic_file(path, "wb", fsync=True) as handle:
            torch.save(obj, handle)
    except (OSError, RuntimeError) as error:
        cause = _os_error(error)
        if cause is None:
            raise
        reason = cause.strerror or str(cause)
        raise SnapshotWriteError(f"{path}: cannot write the file ({reason}); no partial file was left",
                                 cause.errno, cause.strerror) from None
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def save_snapshot(path: str, modules: dict, **extra) -> str:
    """Write a snapshot. modules: {"G", "D", "G_ema", "augment_pipe"} (augment_pipe may be None);
    extra: plain data (optimizers, progress, rng, options ...). Returns path."""
    snapshot = {"format": FORMAT, "version": VERSION}
    for key in MODULE_KEYS:
        module = modules.get(key)
        snapshot[key] = None if module is None else module_record(module)
    for key, value in extra.items():
        if key in snapshot:
            raise ValueError(f"save_snapshot: extra key {key!r} collides with a reserved key")
        snapshot[key] = value
    atomic_torch_save(snapshot, path)
    return path


def _load_weights_only(path: str, what: str):
    """torch.load(weights_only=True) of `path` with its checksum verified, then dropped: it belongs to the file, and
    a dict read, changed and saved again must not carry a stale one. SnapshotError for anything else."""
    if not os.path.isfile(path):
        raise SnapshotError(f"{path}: no such {what} file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  arbitrary bytes raise arbitrary errors; nothing was executed
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SnapshotError(f"{path} is not a {what}: refused to load it safely ({reason[:200]})") from None
    verify_checksum(data, path)
    if _is_snapshot(data):
        data.pop(CHECKSUM_KEY, None)
    return data


def read_snapshot_dict(path: str) -> dict:
    """The raw snapshot dict (tensors on CPU) after format checks; never unpickles arbitrary objects."""
    if not os.path.isfile(path):
        raise SnapshotError(f"{path}: no such snapshot file")
    if path.lower().endswith(".pkl"):  # an official GSGAN network pickle: converted in memory, none of its code run
        import sys
        from training.official_import import import_network_pickle
        result = import_network_pickle(path)
        print(f"gsgan: {path} is an official network pickle, converted in memory (compat mode; "
              f"import_official.py writes it as a .pt once): " + "; ".join(result.summary_lines()),
              file=sys.stderr, flush=True)
        return result.snapshot
    data = _load_weights_only(path, "gsgan snapshot")
    if isinstance(data, dict) and data.get("format") == RECON_FORMAT:
        raise SnapshotError(f"{path} is a reconstruction snapshot (reconstruct.py), not a GSGAN generator snapshot")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotError(f"{path} is not a gsgan snapshot: missing format marker {FORMAT!r}")
    if data.get("version") != VERSION:
        raise SnapshotError(f"{path}: unsupported snapshot version {data.get('version')!r} (expected {VERSION})")
    for key in ("G", "D", "G_ema"):
        if not isinstance(data.get(key), dict):
            raise SnapshotError(f"{path} is not a gsgan snapshot: no {key} record")
    return data


def load_snapshot(path: str, device="cpu") -> dict:
    """Snapshot dict with G, D, G_ema (and augment_pipe when saved) rebuilt as modules on `device` (eval mode,
    requires_grad False); every other entry is returned as stored (tensors on CPU)."""
    data = read_snapshot_dict(path)
    for key in MODULE_KEYS:
        if data.get(key) is not None:
            data[key] = build_module(data[key], device=device, what=key, path=path)
    return data


def _check_optimizer_state(state, module: nn.Module, path: str, key: str) -> None:
    """SnapshotError unless `state` is an optimizer state_dict over exactly `module`'s parameters (in order) whose
    per-parameter tensors (Adam's moments) have those parameters' shapes."""
    where = f"{path}: optimizers.{key}"
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or not isinstance(state.get("state"), dict) or not all(
            isinstance(group, dict) and isinstance(group.get("params"), list) for group in groups):
        raise SnapshotError(f"{where}: expected an optimizer state_dict (state, param_groups with params)")
    ids = [index for group in groups for index in group["params"]]
    params = list(module.parameters())
    if len(ids) != len(params):
        raise SnapshotError(f"{where}: covers {len(ids)} parameters, {key} has {len(params)} (another architecture)")
    shapes = dict(zip(ids, (tuple(p.shape) for p in params)))
    for index, entry in state["state"].items():
        if index not in shapes or not isinstance(entry, dict):
            raise SnapshotError(f"{where}: state for unknown parameter {index!r}")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and tuple(value.shape) != shapes[index]:
                raise SnapshotError(f"{where}: {name} of parameter {index} has shape {list(value.shape)}, "
                                    f"expected {list(shapes[index])}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_training_snapshot(path: str, modules: dict) -> dict:
    """The snapshot dict at `path` after every check a resume needs, so a bad --resume is refused before a run
    folder exists: a readable gsgan snapshot (format, checksum), a record for each of `modules` ({"G", "D",
    "G_ema", "augment_pipe"}: the modules this run builds, None for one it does not use; the meta device is
    enough) with the same architecture and parameter shapes, optimizer states for G and D that fit them, and
    well-formed progress counters and RNG states. Nothing is loaded into the modules."""
    data = read_snapshot_dict(path)
    for key in MODULE_KEYS:
        module, record = modules.get(key), data.get(key)
        if (record is None) != (module is None):
            raise SnapshotError(f"{path}: {key} is {'missing' if record is None else 'present'} but this run "
                                f"{'uses' if module is not None else 'does not use'} it (--aug)")
        if module is not None:
            check_architecture(module, record, path, key)
    optimizers = data.get("optimizers")
    if optimizers is None:
        what = "an imported official checkpoint" if "imported_from" in data else "a snapshot"
        raise SnapshotError(f"{path}: {what} without optimizer states cannot be resumed (train.py --resume needs "
                            f"a snapshot written by train.py)")
    if not isinstance(optimizers, dict):
        raise SnapshotError(f"{path}: optimizers must be a dict with G and D optimizer states")
    for key in ("G", "D"):
        _check_optimizer_state(optimizers.get(key), modules[key], path, key)
    progress = data.get("progress")
    if not isinstance(progress, dict) or not all(_is_count(progress.get(k)) for k in ("cur_nimg", "cur_tick",
                                                                                     "batch_idx")):
        raise SnapshotError(f"{path}: progress must hold non-negative integers cur_nimg, cur_tick, batch_idx")
    rng = data.get("rng")
    if not isinstance(rng, dict) or not isinstance(rng.get("ranks"), list):
        raise SnapshotError(f"{path}: rng must be a dict with a list of per-rank states")
    if data.get("ada") is not None and not isinstance(data["ada"], dict):
        raise SnapshotError(f"{path}: ada must be the ADA controller's state dict or None")
    return data


def list_snapshots(run_dir: str) -> list[str]:
    """network-snapshot-*.pt files in run_dir, oldest (smallest kimg, then fraction, then mtime) first."""
    found = []
    for name in os.listdir(run_dir):
        match = SNAPSHOT_RE.match(name)
        if match:
            full = os.path.join(run_dir, name)
            found.append((int(match.group(1)), int(match.group(2) or 0), os.path.getmtime(full), full))
    return [full for *_, full in sorted(found)]


def resolve_snapshot(path: str) -> str:
    """A snapshot file as given, or the latest network-snapshot-*.pt of a run directory."""
    if os.path.isdir(path):
        snapshots = list_snapshots(path)
        if not snapshots:
            raise SnapshotError(f"{path}: run directory holds no network-snapshot-*.pt")
        return snapshots[-1]
    if not os.path.isfile(path):
        raise SnapshotError(f"{path}: no such snapshot file or run directory")
    return path


# ---------------------------------------------------------------------------------------------- reconstruction
def recon_snapshot_filename(step: int) -> str:
    """network-snapshot-SSSSSS.pt with SSSSSS = completed optimizer steps."""
    return f"network-snapshot-{int(step):06d}.pt"


def read_recon_snapshot_dict(path: str) -> dict:
    """The raw reconstruction snapshot dict (tensors on CPU) after format checks; a GSGAN snapshot or any other
    file is refused with a SnapshotError saying what it is."""
    data = _load_weights_only(path, "reconstruction snapshot")
    if isinstance(data, dict) and data.get("format") == FORMAT:
        raise SnapshotError(f"{path} is a GSGAN (GAN) snapshot, not a reconstruction snapshot (reconstruct.py "
                            f"train writes those)")
    if not isinstance(data, dict) or data.get("format") != RECON_FORMAT:
        raise SnapshotError(f"{path} is not a reconstruction snapshot: missing format marker {RECON_FORMAT!r}")
    if data.get("version") != RECON_VERSION:
        raise SnapshotError(f"{path}: unsupported reconstruction snapshot version {data.get('version')!r} "
                            f"(expected {RECON_VERSION})")
    missing = [key for key in RECON_KEYS if key not in data]
    if missing or not isinstance(data["encoder"], dict):
        raise SnapshotError(f"{path} is not a complete reconstruction snapshot: missing "
                            f"{', '.join(missing) or 'encoder'}")
    progress = data["progress"]
    if not isinstance(progress, dict) or not isinstance(progress.get("step"), int):
        raise SnapshotError(f"{path}: progress.step missing or not an integer")
    data.setdefault("densifier", None)
    if data["densifier"] is not None and not isinstance(data["densifier"], dict):
        raise SnapshotError(f"{path}: densifier must be a module record or None")
    kwargs = data["densifier"].get("init_kwargs") if data["densifier"] is not None else None
    if isinstance(kwargs, dict) and "opacity_split" not in kwargs:
        kwargs["opacity_split"] = "centre"  # densifiers saved before the choice existed split this way
    return data


def save_recon_snapshot(path: str, encoder: nn.Module, densifier: nn.Module | None = None, **extra) -> str:
    """Write a reconstruction snapshot atomically (extra: optimizer, scheduler, progress, rng, options)."""
    snapshot = {"format": RECON_FORMAT, "version": RECON_VERSION, "encoder": module_record(encoder),
                "densifier": None if densifier is None else module_record(densifier)}
    for key, value in extra.items():
        if key in snapshot:
            raise ValueError(f"save_recon_snapshot: extra key {key!r} collides with a reserved key")
        snapshot[key] = value
    atomic_torch_save(snapshot, path)
    return path


def load_recon_snapshot(path: str, device="cpu") -> dict:
    """Snapshot dict with "encoder" (and "densifier" when the run densified; else None) rebuilt as modules on
    `device` (eval mode, requires_grad False)."""
    data = read_recon_snapshot_dict(path)
    for key, expected in (("encoder", "CostVolumeEncoder"), ("densifier", "GaussianDensifier")):
        record = data[key]
        if record is None:
            continue
        if record.get("class") != expected:
            raise SnapshotError(f"{path}: {key} is a {record.get('class')!r}, expected {expected}")
        data[key] = build_module(record, device=device, what=key, path=path)
    return data


def read_state_dict_file(path: str, what: str = "--init") -> dict:
    """A plain state_dict (torch.load weights_only) from `path`; a reconstruction snapshot gives its encoder's."""
    data = _load_weights_only(path, "state_dict")
    if isinstance(data, dict) and data.get("format") == RECON_FORMAT and isinstance(data.get("encoder"), dict):
        data = data["encoder"].get("state_dict")
    elif isinstance(data, dict) and data.get("format") == FORMAT:
        raise SnapshotError(f"{path} ({what}): a GSGAN (GAN) snapshot holds no reconstruction encoder weights")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        raise SnapshotError(f"{path} ({what}): expected a state_dict (a dict of parameter name -> tensor)")
    return data


def check_state_dict(state: dict, module: nn.Module, path: str, what: str = "--init") -> None:
    """SnapshotError listing missing / unexpected keys and shape mismatches of `state` against `module` (which
    may live on the meta device: only names and shapes are compared)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))

    def listed(names):
        return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    problems = []
    if missing:
        problems.append(f"missing keys {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {listed(unexpected)}")
    if shapes:
        problems.append("shape mismatch in " + listed([f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}"
                                                        for k in shapes]))
    if problems:
        raise SnapshotError(f"{path} ({what}) does not match {type(module).__name__}: {'; '.join(problems)}")


def load_state_dict_file(path: str, module: nn.Module, what: str = "--init") -> None:
    """Load a plain state_dict file strictly into `module` (one-line SnapshotError on any mismatch)."""
    state = read_state_dict_file(path, what)
    check_state_dict(state, module, path, what)
    module.load_state_dict(state, strict=True)
