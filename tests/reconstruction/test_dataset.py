"""SceneStream (order, resume, ranks, workers, skips, flip) and EvaluationSet over tiny generated chunk folders."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from reconstruction.chunks import ChunkError, ChunkStore, decode_image, flip_views, parse_cameras, rescale_and_crop, \
    write_chunks
from reconstruction.dataset import SKIP_REASONS, DatasetError, EvaluationSet, SceneStream
from reconstruction.view_sampler import BoundedViewSampler, EvaluationIndex
from reconstruction.views import VIEW_FIELDS
from tests.reconstruction.test_chunks import make_example

IMAGE_SHAPE = (6, 6)


def small_sampler(**overrides) -> BoundedViewSampler:
    options = dict(num_target=2, min_gap=4, max_gap=6, initial_min_gap=2, initial_max_gap=4, warmup_steps=20)
    options.update(overrides)
    return BoundedViewSampler(**options)


def build_split(root, examples, split="train", per_chunk=2) -> None:
    size = sum(im.numel() for im in examples[0]["images"])
    write_chunks(root, split, examples, max_chunk_bytes=int(size * per_chunk * 1.3))


@pytest.fixture
def scenes(tmp_path):
    examples = [make_example(f"scene{i:02d}", 8 + i % 4, seed=i) for i in range(9)]
    build_split(tmp_path, examples)
    return tmp_path, examples


def stream(root, **overrides) -> SceneStream:
    options = dict(sampler=small_sampler(), image_shape=IMAGE_SHAPE, near=1.0, far=100.0, flip=False, seed=7)
    options.update(overrides)
    return SceneStream(root, "train", **options)


def assert_same(a: dict, b: dict) -> None:
    assert a["key"] == b["key"]
    for part in ("context", "target"):
        assert set(a[part]) == set(b[part])
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (a["key"], part, name)


def expected_views(example: dict, frames: torch.Tensor) -> dict:
    extrinsics, intrinsics = parse_cameras(example["cameras"])
    images, k = [], []
    for frame in frames.tolist():
        image, kk = rescale_and_crop(decode_image(example["images"][frame], "t")[None], intrinsics[frame][None],
                                     IMAGE_SHAPE)
        images.append(image[0])
        k.append(kk[0])
    return {"image": torch.stack(images), "intrinsics": torch.stack(k), "extrinsics": extrinsics[frames]}


# --------------------------------------------------------------------------------------------------------------
# SceneStream.

def test_items_follow_the_views_layout(scenes):
    root, examples = scenes
    by_key = {e["key"]: e for e in examples}
    data = stream(root)
    for item in itertools.islice(iter(data), 4):
        assert set(item) == {"key", "context", "target"}
        for part, count in (("context", 2), ("target", 2)):
            views = item[part]
            assert tuple(views) == VIEW_FIELDS
            assert views["image"].shape == (count, 3, *IMAGE_SHAPE) and views["image"].dtype == torch.float32
            assert 0 <= float(views["image"].min()) and float(views["image"].max()) <= 1
            assert views["intrinsics"].shape == (count, 3, 3) and views["extrinsics"].shape == (count, 4, 4)
            assert views["intrinsics"].dtype == views["extrinsics"].dtype == torch.float32
            assert torch.equal(views["near"], torch.ones(count)) and torch.equal(views["far"], torch.full((count,),
                                                                                                       100.0))
            assert views["index"].dtype == torch.int64
            expected = expected_views(by_key[item["key"]], views["index"])
            for name, value in expected.items():
                assert torch.equal(views[name], value), name


def test_epoch_order_is_chunk_friendly_and_seeded(scenes):
    root, examples = scenes
    data = stream(root)
    store = ChunkStore(root, "train")
    for epoch in range(3):
        order = data.epoch_order(epoch)
        assert sorted(order) == sorted(e["key"] for e in examples)
        chunks = [store.chunk_of(k) for k in order]
        runs = [name for name, _ in itertools.groupby(chunks)]
        assert len(runs) == len(set(chunks))  # each chunk's keys are contiguous
    assert data.epoch_order(0) != data.epoch_order(1) or data.epoch_order(1) != data.epoch_order(2)
    assert stream(root, seed=8).epoch_order(0) != data.epoch_order(0) or \
        stream(root, seed=9).epoch_order(0) != data.epoch_order(0)
    assert stream(root).epoch_order(4) == data.epoch_order(4)  # computed from index.json alone
    assert data.key_at(len(examples) + 2) == data.epoch_order(1)[2]


def test_resume_matches_skipping(scenes):
    root, _ = scenes
    full = list(itertools.islice(iter(stream(root, flip=True)), 12))
    resumed = list(itertools.islice(iter(stream(root, flip=True, start=5)), 7))
    for a, b in zip(full[5:], resumed):
        assert_same(a, b)
    assert len({item["key"] for item in full}) > 3


def test_ranks_split_the_global_stream(scenes):
    root, _ = scenes
    single = stream(root, flip=True)
    for rank in range(2):
        ranked = list(itertools.islice(iter(stream(root, flip=True, rank=rank, world_size=2, start=1)), 5))
        for k, item in enumerate(ranked, start=1):
            assert_same(item, single.example_at(2 * k + rank))


def test_batches_do_not_depend_on_the_number_of_workers(scenes):
    root, _ = scenes
    results = []
    for workers in (0, 1, 2):
        loader = torch.utils.data.DataLoader(stream(root, flip=True, batch_size=3, start=2), batch_size=3,
                                             num_workers=workers)
        results.append(list(itertools.islice(iter(loader), 4)))
    for batches in results[1:]:
        for a, b in zip(results[0], batches):
            assert a["key"] == b["key"]
            for part in ("context", "target"):
                for name in VIEW_FIELDS:
                    assert torch.equal(a[part][name], b[part][name])
    first = stream(root, flip=True, start=2)
    assert results[0][1]["key"] == [first.example_at(p)["key"] for p in (5, 6, 7)]


def test_step_drives_the_gap_schedule(scenes):
    root, _ = scenes
    sampler = small_sampler()
    data = stream(root, examples_per_step=3, sampler=sampler)
    gaps = []
    for position, item in enumerate(itertools.islice(iter(data), 66)):
        gap = int(item["context"]["index"][1] - item["context"]["index"][0])
        assert gap == sampler.schedule(position // 3)[0]
        gaps.append(gap)
    assert gaps[0] == 2 and gaps[-1] == 4


def test_flip_is_a_seeded_coin_per_position(scenes):
    root, _ = scenes
    flipped = list(itertools.islice(iter(stream(root, flip=True)), 24))
    plain = list(itertools.islice(iter(stream(root, flip=False)), 24))
    outcomes = []
    for a, b in zip(flipped, plain):
        assert a["key"] == b["key"]
        same = torch.equal(a["context"]["image"], b["context"]["image"])
        if not same:
            for part in ("context", "target"):
                mirrored = flip_views(b[part])
                for name in VIEW_FIELDS:
                    assert torch.equal(a[part][name], mirrored[name])
        outcomes.append(same)
    assert any(outcomes) and not all(outcomes)


def test_unusable_examples_are_skipped_and_counted(tmp_path):
    good = [make_example(f"good{i}", 9, seed=i) for i in range(3)]
    bad = [make_example("short", 2, seed=10),                 # the sampler needs >= 3 frames at step 0
           make_example("wide", 9, seed=11, fx=0.3),           # horizontal FoV 118 degrees
           make_example("tall", 9, seed=12, fy=0.35),          # vertical FoV 110 degrees
           make_example("odd", 9, height=10, seed=13)]         # 10x12 frames, not 8x12
    examples = [bad[0], good[0], bad[1], bad[3], good[1], bad[2], good[2]]
    build_split(tmp_path, examples)
    data = stream(tmp_path, frame_shape=(8, 12), report_skips=True)
    items = list(itertools.islice(iter(data), 21))
    assert {item["key"] for item in items} <= {e["key"] for e in good}
    assert data.skipped["frames"] > 0 and data.skipped["fov"] > 0 and data.skipped["frame_shape"] > 0
    total = torch.stack([item["skipped"] for item in items]).sum(0)
    assert total.tolist() == [data.skipped[r] for r in SKIP_REASONS]
    # Every position still yields one example, so resuming stays exact with skips.
    resumed = list(itertools.islice(iter(stream(tmp_path, frame_shape=(8, 12), report_skips=True, start=9)), 12))
    for a, b in zip(items[9:], resumed):
        assert_same(a, b)
    # Without frame_shape, the odd-shaped scene is used (cropped like the others).
    keys = {item["key"] for item in itertools.islice(iter(stream(tmp_path)), 40)}
    assert "odd" in keys and "wide" not in keys and "short" not in keys


def test_no_usable_example(tmp_path):
    build_split(tmp_path, [make_example(f"s{i}", 2, seed=i) for i in range(3)])
    with pytest.raises(DatasetError, match=r"train: no usable example \(3 skipped: 3 frames"):
        next(iter(stream(tmp_path)))
    empty = tmp_path / "empty"
    write_chunks(empty, "train", [])
    with pytest.raises(DatasetError, match="no usable example"):
        stream(empty)


def test_undecodable_image_is_a_hard_error(tmp_path):
    broken = make_example("broken", 9, seed=1)
    broken["images"] = [torch.tensor([1, 2, 3], dtype=torch.uint8)] * 9
    build_split(tmp_path, [broken])
    with pytest.raises(ChunkError, match=r"000000.torch: key 'broken': frame \d: image does not decode"):
        next(iter(stream(tmp_path)))


@pytest.mark.parametrize("overrides, message", [
    ({"image_shape": (0, 6)}, "image_shape: expected two positive ints"),
    ({"frame_shape": (8,)}, "frame_shape"),
    ({"near": 5.0, "far": 2.0}, "expected near < far"),
    ({"near": float("nan")}, "near: expected a finite number"),
    ({"rank": 2, "world_size": 2}, "rank: expected 0 <= rank < world_size"),
    ({"start": -1}, "start"),
    ({"examples_per_step": 0}, "examples_per_step"),
    ({"max_fov_deg": 0}, "max_fov_deg"),
    ({"sampler": None}, "sampler: expected a BoundedViewSampler"),
])
def test_stream_option_errors(scenes, overrides, message):
    root, _ = scenes
    with pytest.raises(DatasetError, match=message):
        stream(root, **overrides)


# --------------------------------------------------------------------------------------------------------------
# EvaluationSet.

def _index(tmp_path, entries) -> EvaluationIndex:
    path = tmp_path / "evaluation_index.json"
    path.write_text(json.dumps(entries))
    return EvaluationIndex(str(path))


def evaluation_set(root, index, **overrides) -> EvaluationSet:
    options = dict(image_shape=IMAGE_SHAPE, near=0.5, far=50.0)
    options.update(overrides)
    return EvaluationSet(root, "train", index, **options)


def test_evaluation_set_items_and_chunk_order(scenes, tmp_path):
    root, examples = scenes
    by_key = {e["key"]: e for e in examples}
    entries = {"scene07": {"context": [0, 6], "target": [3, 2]}, "scene00": {"context": [1, 5], "target": [4]},
               "scene04": None, "scene05": {"context": [0, 7], "target": [1, 6, 5]},
               "scene01": {"context": [2, 4], "target": [3]}}
    index = _index(tmp_path, entries)
    data = evaluation_set(root, index, cache_chunks=1)
    store = ChunkStore(root, "train")
    chunks = [store.chunk_of(k) for k in data.keys]
    assert sorted(data.keys) == sorted(index.keys()) and chunks == sorted(chunks)
    for i in range(len(data)):
        item = data[i]
        context, target = index.views(item["key"])
        for part, frames in (("context", context), ("target", target)):
            views = item[part]
            assert torch.equal(views["index"], frames)
            assert torch.equal(views["near"], torch.full((len(frames),), 0.5))
            expected = expected_views(by_key[item["key"]], frames)
            for name, value in expected.items():
                assert torch.equal(views[name], value)
    assert data.store.loads == len(set(chunks))  # grouped by chunk: each chunk loaded once


def test_evaluation_set_rank_share(scenes, tmp_path):
    root, _ = scenes
    index = _index(tmp_path, {f"scene{i:02d}": {"context": [0, 4], "target": [2]} for i in range(7)})
    shares = [evaluation_set(root, index, rank=r, world_size=3).keys for r in range(3)]
    assert sorted(sum(shares, [])) == sorted(index.keys())
    assert sorted(shares[1]) == sorted(index.keys()[1::3])


def test_evaluation_set_errors(scenes, tmp_path):
    root, _ = scenes
    index = _index(tmp_path, {"scene00": {"context": [0, 4], "target": [2]}, "ghost": {"context": [0, 1],
                                                                                       "target": [2]}})
    with pytest.raises(DatasetError, match=r"evaluation_index.json: key 'ghost' is not in .*train"):
        evaluation_set(root, index)
    index = _index(tmp_path, {"scene00": {"context": [0, 8], "target": [30]}})  # scene00 has 8 frames
    data = evaluation_set(root, index)
    with pytest.raises(DatasetError, match=r"key 'scene00': context frame 8 out of range \(scene has 8 frames\)"):
        data[0]
    with pytest.raises(DatasetError, match="index: expected an EvaluationIndex"):
        evaluation_set(root, "index.json")
