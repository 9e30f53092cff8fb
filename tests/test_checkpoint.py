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
