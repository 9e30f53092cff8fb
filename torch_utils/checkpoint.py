"""Safe training snapshots: written atomically, loaded with torch.load(weights_only=True), modules rebuilt through
an explicit class registry from their constructor kwargs + a strict state_dict. Loading never runs code from the
file: anything that is not a plain gsgan snapshot is refused with SnapshotError.

Layout (docs/interfaces.md): {"format": "gsgan-snapshot", "version": 1, "G"|"D"|"G_ema"|"augment_pipe":
{"class", "init_kwargs", "state_dict"} (augment_pipe may be None), "optimizers": {"G", "D"}, "progress": {...},
"rng": {...}, "options": {...}}.

A second kind, the reconstruction snapshot (reconstruct.py train), shares the safety rules and the class registry:
{"format": "gsgan-reconstruction-snapshot", "version": 1, "encoder": {"class", "init_kwargs", "state_dict"},
"optimizer", "scheduler", "progress": {"step", "examples_seen": [per rank]}, "rng": {"ranks": [...]},
"options": {...}, "densifier": {"class", "init_kwargs", "state_dict"} or None (absent in snapshots written before
generative densification: read as None)}. Its files are network-snapshot-SSSSSS.pt with SSSSSS = completed
optimizer steps.
"""
from __future__ import annotations

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
    "Discriminator": "training.discriminator:Discriminator",
    "AugmentPipe": "training.augment:AugmentPipe",
    "CostVolumeEncoder": "reconstruction.encoder:CostVolumeEncoder",
    "GaussianDensifier": "reconstruction.densify.model:GaussianDensifier",
}
RECON_FORMAT = "gsgan-reconstruction-snapshot"
RECON_VERSION = 1
RECON_KEYS = ("encoder", "optimizer", "scheduler", "progress", "rng", "options")
SNAPSHOT_RE = re.compile(r"^network-snapshot-(\d+)\.pt$")


class SnapshotError(ValueError):
    """A file that is not a loadable gsgan snapshot (one-line message naming the file)."""


def snapshot_filename(cur_nimg: int) -> str:
    """network-snapshot-KKKKKK.pt with KKKKKK = completed kimg (integer part)."""
    return f"network-snapshot-{int(cur_nimg) // 1000:06d}.pt"


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


def load_into(module: nn.Module, record: dict, path: str, key: str, ignore=()) -> None:
    """Load a snapshot record into an existing module after checking it describes the same architecture
    (init_kwargs equal except `ignore`d runtime settings); strict state_dict loading."""
    if record["class"] != type(module).__name__:
        raise SnapshotError(f"{path}: {key} is a {record['class']}, expected {type(module).__name__}")
    saved, current = record["init_kwargs"], module.init_kwargs
    diff = sorted(k for k in set(saved) | set(current) if k not in ignore and saved.get(k) != current.get(k))
    if diff:
        details = ", ".join(f"{k}={saved.get(k)!r} (snapshot) vs {current.get(k)!r}" for k in diff)
        raise SnapshotError(f"{path}: {key} architecture differs from this run's options: {details}")
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


def atomic_torch_save(obj, path: str) -> None:
    """torch.save into a temp file in the same directory, fsync, then os.replace: never a half-written file."""
    with atomic_file(path, "wb", fsync=True) as handle:
        torch.save(obj, handle)
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
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  arbitrary bytes raise arbitrary errors; nothing was executed
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SnapshotError(f"{path} is not a gsgan snapshot: refused to load it safely ({reason[:200]})") from None
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


def list_snapshots(run_dir: str) -> list[str]:
    """network-snapshot-*.pt files in run_dir, oldest (smallest kimg, then mtime) first."""
    found = []
    for name in os.listdir(run_dir):
        match = SNAPSHOT_RE.match(name)
        if match:
            full = os.path.join(run_dir, name)
            found.append((int(match.group(1)), os.path.getmtime(full), full))
    return [full for _, _, full in sorted(found)]


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


def _load_weights_only(path: str, what: str):
    if not os.path.isfile(path):
        raise SnapshotError(f"{path}: no such {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  arbitrary bytes raise arbitrary errors; nothing was executed
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SnapshotError(f"{path} is not a {what}: refused to load it safely ({reason[:200]})") from None


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
