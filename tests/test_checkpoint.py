"""Snapshots: atomic writes, safe loading (no code execution), strict rebuild; RNG state and data sampler resume."""
import os
import pickle
import random

import numpy as np
import pytest
import torch

from torch_utils import checkpoint, misc
from torch_utils.checkpoint import SnapshotError
from training.augment import AugmentPipe
from training.discriminator import Discriminator
from training.generator import GSGenerator

TINY_G = dict(img_resolution=16, z_dim=32, w_dim=32, num_points=16, res_end=16, channel_base=64, channel_max=32,
              num_transformer_layers=1, num_heads=2, bg_num_points=50, bg_channels=16, view_dim=8,
              const_pe_length=16, rendering_backend="reference")
TINY_D = dict(img_resolution=16, channel_base=512, channel_max=32, mbstd_group_size=2, cam_hidden=32, pose_feat_dim=16)


@pytest.fixture(scope="module")
def modules():
    torch.manual_seed(1)
    return {"G": GSGenerator(**TINY_G), "D": Discriminator(**TINY_D), "G_ema": GSGenerator(**TINY_G),
            "augment_pipe": AugmentPipe(p=0.25)}


def test_round_trip_rebuilds_modules_strictly(modules, tmp_path):
    path = str(tmp_path / "network-snapshot-000004.pt")
    checkpoint.save_snapshot(path, modules, progress={"cur_nimg": 4096}, options={"seed": 0})
    assert os.listdir(tmp_path) == ["network-snapshot-000004.pt"]
    data = checkpoint.load_snapshot(path)
    assert data["format"] == "gsgan-snapshot" and data["progress"] == {"cur_nimg": 4096}
    for key, module in modules.items():
        rebuilt = data[key]
        assert type(rebuilt) is type(module) and rebuilt.init_kwargs == module.init_kwargs
        for (name, a), (_, b) in zip(module.state_dict().items(), rebuilt.state_dict().items()):
            assert torch.equal(a, b), f"{key}.{name}"
    assert float(data["augment_pipe"].p) == 0.25


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_without_running_it(writer, tmp_path):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.pt")
    payload = {"format": "gsgan-snapshot", "version": 1, "G": _WritesMarker(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(SnapshotError, match="is not a gsgan snapshot"):
        checkpoint.load_snapshot(path)
    assert not os.path.exists(marker)


def test_non_snapshot_files_are_refused(modules, tmp_path):
    plain = str(tmp_path / "plain.pt")
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(SnapshotError, match="is not a gsgan snapshot"):
        checkpoint.load_snapshot(plain)
    text = str(tmp_path / "text.pt")
    with open(text, "w") as handle:
        handle.write("hello")
    with pytest.raises(SnapshotError, match="is not a gsgan snapshot"):
        checkpoint.load_snapshot(text)
    with pytest.raises(SnapshotError, match="no such snapshot"):
        checkpoint.load_snapshot(str(tmp_path / "missing.pt"))


def test_unknown_class_and_mismatched_weights_are_refused(modules, tmp_path):
    record = checkpoint.module_record(modules["D"])
    base = {"format": "gsgan-snapshot", "version": 1, "G": checkpoint.module_record(modules["G"]),
            "G_ema": checkpoint.module_record(modules["G_ema"])}
    path = str(tmp_path / "x.pt")
    torch.save(dict(base, D=dict(record, **{"class": "os.system"})), path)
    with pytest.raises(SnapshotError, match="not one of"):
        checkpoint.load_snapshot(path)
    broken = dict(record, state_dict={k: v for k, v in record["state_dict"].items() if "b4" not in k})
    torch.save(dict(base, D=broken), path)
    with pytest.raises(SnapshotError, match="state_dict does not match"):
        checkpoint.load_snapshot(path)
    torch.save(dict(base, D=record, version=99), path)
    with pytest.raises(SnapshotError, match="version"):
        checkpoint.load_snapshot(path)


def test_failed_write_leaves_nothing_behind(tmp_path):
    path = str(tmp_path / "network-snapshot-000000.pt")
    with pytest.raises(Exception):
        checkpoint.atomic_torch_save({"bad": lambda: None}, path)  # lambdas cannot be pickled
    assert os.listdir(tmp_path) == []
    checkpoint.atomic_torch_save({"ok": torch.ones(2)}, path)
    before = open(path, "rb").read()
    with pytest.raises(Exception):
        checkpoint.atomic_torch_save({"bad": lambda: None}, path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["network-snapshot-000000.pt"]


def test_resolve_snapshot_picks_latest(tmp_path):
    for kimg in (0, 200, 40):
        checkpoint.atomic_torch_save({}, str(tmp_path / f"network-snapshot-{kimg:06d}.pt"))
    assert checkpoint.resolve_snapshot(str(tmp_path)).endswith("network-snapshot-000200.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SnapshotError, match="no network-snapshot"):
        checkpoint.resolve_snapshot(str(empty))


def test_snapshot_names_below_one_kimg_never_collide():
    assert checkpoint.snapshot_filename(0) == "network-snapshot-000000.pt"
    assert checkpoint.snapshot_filename(4000) == "network-snapshot-000004.pt"
    assert checkpoint.snapshot_filename(7) == "network-snapshot-000000.007.pt"
    assert checkpoint.snapshot_filename(512) == "network-snapshot-000000.512.pt"
    assert checkpoint.snapshot_filename(12_345_678) == "network-snapshot-012345.678.pt"
    names = {checkpoint.snapshot_filename(n) for n in range(0, 3001, 8)}  # a batch-8 run of 3 kimg
    assert len(names) == len(range(0, 3001, 8))
    for name in names:
        assert checkpoint.SNAPSHOT_RE.match(name), name
    for bad in ("network-snapshot-000000.5.pt", "network-snapshot-000000.pt.tmp", "network-snapshot-.512.pt",
                "network-snapshot-000000.5123.pt"):
        assert not checkpoint.SNAPSHOT_RE.match(bad), bad


def test_list_snapshots_orders_by_kimg_then_fraction_then_mtime(tmp_path):
    names = ["network-snapshot-000001.pt", "network-snapshot-000000.512.pt", "network-snapshot-000000.pt",
             "network-snapshot-000000.064.pt", "network-snapshot-000001.008.pt", "network-snapshot-000000.996.pt"]
    for age, name in enumerate(reversed(names)):  # written newest-name-first: the mtime disagrees with the names
        path = tmp_path / name
        checkpoint.atomic_torch_save({}, str(path))
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
    (tmp_path / "network-snapshot-000009.pt.tmp-1").write_bytes(b"")  # not a snapshot
    listed = [os.path.basename(p) for p in checkpoint.list_snapshots(str(tmp_path))]
    assert listed == ["network-snapshot-000000.pt", "network-snapshot-000000.064.pt", "network-snapshot-000000.512.pt",
                      "network-snapshot-000000.996.pt", "network-snapshot-000001.pt", "network-snapshot-000001.008.pt"]
    assert checkpoint.resolve_snapshot(str(tmp_path)).endswith("network-snapshot-000001.008.pt")
    # Equal kimg and fraction (a copy under another zero padding): the newer file is the later one.
    older, newer = tmp_path / "network-snapshot-0000001.008.pt", tmp_path / "network-snapshot-000001.008.pt"
    checkpoint.atomic_torch_save({}, str(older))
    os.utime(older, (900_000, 900_000))
    assert checkpoint.list_snapshots(str(tmp_path))[-2:] == [str(older), str(newer)]


def test_rng_state_survives_weights_only_round_trip(tmp_path):
    misc.set_seed(5)
    state = misc.capture_rng_state()
    path = str(tmp_path / "rng.pt")
    checkpoint.atomic_torch_save(state, path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    misc.set_seed(99)
    misc.restore_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_infinite_sampler_resumes_and_shards():
    stream = iter(misc.InfiniteSampler(10, rank=0, num_replicas=1, seed=3))
    first = [next(stream) for _ in range(25)]
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    resumed = iter(misc.InfiniteSampler(10, rank=0, num_replicas=1, seed=3, start=13))
    assert [next(resumed) for _ in range(12)] == first[13:25]
    ranks = [iter(misc.InfiniteSampler(10, rank=r, num_replicas=2, seed=3)) for r in range(2)]
    shards = [[next(it) for _ in range(5)] for it in ranks]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    assert shards[0] == first[0:10:2] and shards[1] == first[1:10:2]


# ---------------------------------------------------------------------------------------------- checksums
def _flip_tensor_byte(path: str) -> None:
    """Overwrite one byte in the middle of the largest tensor's data inside a torch.save zip (uncompressed)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        position = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x5A]))


def test_snapshots_carry_a_checksum_that_catches_changed_tensor_bytes(modules, tmp_path):
    path = str(tmp_path / "network-snapshot-000000.pt")
    checkpoint.save_snapshot(path, modules, progress={"cur_nimg": 0})
    raw = torch.load(path, weights_only=True)
    assert raw["checksum"] == checkpoint.content_checksum(raw) and raw["checksum"].startswith("sha256:")
    _flip_tensor_byte(path)
    torch.load(path, weights_only=True)  # torch itself does not notice ...
    with pytest.raises(SnapshotError) as info:  # ... the checksum does, in one line naming the file
        checkpoint.load_snapshot(path)
    message = str(info.value)
    assert message.startswith(f"{path}: checksum mismatch") and "\n" not in message


def test_snapshots_without_checksum_still_load(modules, tmp_path):
    path = str(tmp_path / "old.pt")
    old = {"format": "gsgan-snapshot", "version": 1, "augment_pipe": None,
           **{key: checkpoint.module_record(modules[key]) for key in ("G", "D", "G_ema")}}
    torch.save(old, path)  # as written before checksums existed
    assert "checksum" not in torch.load(path, weights_only=True)
    assert isinstance(checkpoint.load_snapshot(path)["G"], GSGenerator)
    torch.save(dict(old, checksum=12), path)
    with pytest.raises(SnapshotError, match="malformed checksum"):
        checkpoint.read_snapshot_dict(path)


def test_checksum_covers_values_dtypes_shapes_and_plain_data():
    base = {"format": "gsgan-snapshot", "t": torch.arange(6, dtype=torch.float32), "progress": {"cur_nimg": 4}}
    digest = checkpoint.content_checksum(base)
    assert checkpoint.content_checksum(dict(reversed(list(base.items())))) == digest  # key order is irrelevant
    assert checkpoint.content_checksum(dict(base, checksum="sha256:x")) == digest  # its own entry is excluded
    changed = [dict(base, t=base["t"].clone().index_fill_(0, torch.tensor([3]), 3.5)),
               dict(base, t=base["t"].reshape(2, 3)), dict(base, t=base["t"].double()),
               dict(base, t=torch.arange(6, dtype=torch.int32).view(torch.float32)),
               dict(base, progress={"cur_nimg": 5}), dict(base, progress={"cur_nimg": 4.0}),
               dict(base, progress=[("cur_nimg", 4)])]
    digests = {checkpoint.content_checksum(c) for c in changed}
    assert len(digests) == len(changed) and digest not in digests


def test_reconstruction_snapshots_are_checked_too(tmp_path):
    from reconstruction.encoder import build_encoder

    torch.manual_seed(0)
    path = str(tmp_path / "network-snapshot-000001.pt")
    encoder = build_encoder("small", num_candidates=8, backbone_channels=[16, 16, 32], feature_channels=32,
                            cost_unet_channels=16, refine_channels=8, head_hidden_channels=16)
    checkpoint.save_recon_snapshot(path, encoder, optimizer={}, scheduler={}, progress={"step": 1}, rng={"ranks": []},
                                   options={})
    assert "checksum" in torch.load(path, weights_only=True)
    checkpoint.read_recon_snapshot_dict(path)
    _flip_tensor_byte(path)
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        checkpoint.read_recon_snapshot_dict(path)


# ---------------------------------------------------------------------------------------------- failed writes
_FULL_DISK_SCRIPT = """
import os, resource, signal, sys, torch
from torch_utils import checkpoint
folder = sys.argv[1]
path = os.path.join(folder, "network-snapshot-000000.pt")
checkpoint.atomic_torch_save({"format": "gsgan-snapshot", "w": torch.zeros(10)}, path)  # a good earlier snapshot
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))  # the disk is 'full' past 200 kB
try:
    checkpoint.atomic_torch_save({"format": "gsgan-snapshot", "w": torch.zeros(1_000_000)}, path)
except checkpoint.SnapshotWriteError as error:
    print("ERROR", error.errno, error)
"""


def test_a_full_disk_leaves_the_previous_snapshot_and_no_temp_file(tmp_path):
    import errno
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_SCRIPT, str(tmp_path)], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    path = str(tmp_path / "network-snapshot-000000.pt")
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ERROR {errno.EFBIG} {path}: cannot write the file ({os.strerror(errno.EFBIG)})")
    assert os.listdir(tmp_path) == ["network-snapshot-000000.pt"]  # no .tmp-* left
    assert torch.load(path, weights_only=True)["w"].shape == (10,)  # the earlier snapshot is intact


def test_write_errors_are_snapshot_errors_and_os_errors():
    error = checkpoint.SnapshotWriteError("x.pt: cannot write the file (No space left on device)", 28,
                                          "No space left on device")
    assert isinstance(error, SnapshotError) and isinstance(error, OSError)  # old `except OSError` callers still work
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is checkpoint.SnapshotWriteError and str(clone) == str(error)
    assert (clone.errno, clone.strerror) == (28, "No space left on device")
