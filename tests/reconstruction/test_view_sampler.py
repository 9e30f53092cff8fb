"""The bounded training sampler (official semantics, bounds, ramp, determinism) and the evaluation index."""
from __future__ import annotations

import json

import pytest
import torch

from reconstruction.view_sampler import BoundedViewSampler, EvaluationIndex, ViewSamplerError


def test_schedule_ramp():
    sampler = BoundedViewSampler()  # RE10K defaults
    assert sampler.schedule(0) == (25, 45)
    assert sampler.schedule(75_000) == (25 + 10, 45 + 73)  # integer steps of the linear ramp
    assert sampler.schedule(150_000) == (45, 192)
    assert sampler.schedule(10**7) == (45, 192)
    assert BoundedViewSampler(warmup_steps=0).schedule(0) == (45, 192)
    lows = [sampler.schedule(s)[0] for s in range(0, 160_000, 5_000)]
    assert lows == sorted(lows)
    with pytest.raises(ViewSamplerError, match="step"):
        sampler.schedule(-1)


@pytest.mark.parametrize("step", [0, 40_000, 150_000])
def test_official_gap_is_the_scheduled_minimum(step):
    sampler = BoundedViewSampler()
    generator = torch.Generator().manual_seed(step)
    low, _ = sampler.schedule(step)
    for num_frames in (low + 1, 80, 300):
        for _ in range(200):
            context, target = sampler.sample(num_frames, step, generator)
            assert context.dtype == target.dtype == torch.int64
            assert context.shape == (2,) and target.shape == (4,)
            assert int(context[1] - context[0]) == low
            assert 0 <= int(context[0]) and int(context[1]) < num_frames
            assert bool((target >= context[0]).all() and (target <= context[1]).all())


def test_uniform_gap_stays_within_schedule_and_scene():
    sampler = BoundedViewSampler(uniform_gap=True, num_target=3)
    generator = torch.Generator().manual_seed(0)
    for step, num_frames in ((0, 300), (75_000, 300), (150_000, 300), (150_000, 100)):
        low, high = sampler.schedule(step)
        high = min(high, num_frames - 1)
        gaps = set()
        for _ in range(300):
            context, target = sampler.sample(num_frames, step, generator)
            gap = int(context[1] - context[0])
            gaps.add(gap)
            assert low <= gap <= high and 0 <= int(context[0]) and int(context[1]) < num_frames
            assert target.shape == (3,) and bool((target >= context[0]).all() and (target <= context[1]).all())
        assert len(gaps) > 5  # really drawn, not fixed
        assert min(gaps) >= low and max(gaps) <= high


def test_targets_cover_the_whole_inclusive_range_and_left_is_uniform():
    sampler = BoundedViewSampler(min_gap=4, max_gap=4, initial_min_gap=4, initial_max_gap=4, num_target=8)
    generator = torch.Generator().manual_seed(1)
    offsets, lefts = set(), set()
    for _ in range(300):
        context, target = sampler.sample(10, 0, generator)
        offsets.update((target - context[0]).tolist())
        lefts.add(int(context[0]))
    assert offsets == {0, 1, 2, 3, 4}
    assert lefts == set(range(6))  # every position where the pair fits


def test_min_target_distance():
    sampler = BoundedViewSampler(min_gap=6, max_gap=6, initial_min_gap=6, initial_max_gap=6, min_target_distance=2)
    generator = torch.Generator().manual_seed(2)
    seen = set()
    for _ in range(300):
        context, target = sampler.sample(20, 0, generator)
        seen.update((target - context[0]).tolist())
    assert seen == {2, 3, 4}
    wide = BoundedViewSampler(min_gap=2, max_gap=3, initial_min_gap=2, initial_max_gap=3, min_target_distance=3)
    context, target = wide.sample(30, 0, generator)
    assert int(context[1] - context[0]) == 6 and bool((target == context[0] + 3).all())


def test_too_few_frames():
    sampler = BoundedViewSampler()
    with pytest.raises(ViewSamplerError, match="scene has 25 frames, but the context gap at step 0 needs at least 26"):
        sampler.sample(25, 0)
    context, _ = sampler.sample(26, 0)
    assert context.tolist() == [0, 25]
    with pytest.raises(ViewSamplerError, match="needs at least 46"):
        sampler.sample(45, 150_000)
    with pytest.raises(ViewSamplerError):
        BoundedViewSampler(uniform_gap=True).sample(10, 0)


def test_more_context_views():
    sampler = BoundedViewSampler(num_context=4, min_gap=5, max_gap=5, initial_min_gap=5, initial_max_gap=5)
    generator = torch.Generator().manual_seed(3)
    for _ in range(100):
        context, _ = sampler.sample(12, 0, generator)
        values = context.tolist()
        assert len(values) == 4 and values == sorted(values) and len(set(values)) == 4
        assert values[-1] - values[0] == 5


def test_determinism():
    sampler = BoundedViewSampler(uniform_gap=True)
    draws = [[sampler.sample(200, 1000, torch.Generator().manual_seed(s)) for s in (5, 5, 6)] for _ in range(2)]
    for a, b in zip(*draws):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    first, second, other = draws[0]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not (torch.equal(first[0], other[0]) and torch.equal(first[1], other[1]))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_context": 1}, "num_context must be an int >= 2"),
    ({"num_target": 0}, "num_target"),
    ({"min_gap": 50, "max_gap": 40}, "min <= max"),
    ({"initial_min_gap": 50, "initial_max_gap": 40}, "min <= max"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"min_gap": 2.5}, "min_gap must be an int"),
    ({"targets": "all"}, "targets must be 'between'"),
])
def test_sampler_option_errors(kwargs, message):
    with pytest.raises(ViewSamplerError, match=message):
        BoundedViewSampler(**kwargs)


# --------------------------------------------------------------------------------------------------------------
# Evaluation index.

def _write(tmp_path, data, name="index.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_evaluation_index(tmp_path):
    path = _write(tmp_path, {"b": {"context": [3, 5], "target": [4, 6, 2]}, "skip": None,
                             "a": {"context": [0, 20], "target": [10]}})
    index = EvaluationIndex(path)
    assert index.keys() == ["b", "a"] and len(index) == 2 and "skip" not in index
    context, target = index.views("b")
    assert context.tolist() == [3, 5] and target.tolist() == [4, 6, 2] and context.dtype == torch.int64
    index.check("a", 21)
    with pytest.raises(ViewSamplerError, match=r"index.json: key 'a': context frame 20 out of range "
                                               r"\(scene has 20 frames\)"):
        index.check("a", 20)
    with pytest.raises(ViewSamplerError, match=r"key 'b': target frame 6 out of range \(scene has 6 frames\)"):
        index.check("b", 6)
    with pytest.raises(ViewSamplerError, match="no .* entry for key 'skip'"):
        index.views("skip")


@pytest.mark.parametrize("data, message", [
    ("{oops", "not valid JSON"),
    ([1, 2], "expected a JSON object"),
    ({"k": 5}, "key 'k': expected null or an object"),
    ({"k": {"target": [1]}}, "key 'k': field 'context': expected a non-empty list"),
    ({"k": {"context": [0, 2], "target": []}}, "key 'k': field 'target': expected a non-empty list"),
    ({"k": {"context": [0, 2.5], "target": [1]}}, "field 'context'"),
    ({"k": {"context": [0, True], "target": [1]}}, "field 'context'"),
    ({"k": {"context": [0, 8], "target": "3"}}, "field 'target'"),
    ({"k": {"context": [0, 8], "target": [3, 8]}}, "key 'k': context frame 8 is repeated as its own target"),
    ({"k": {"context": [4, 4], "target": [3]}}, "lists a frame more than once"),
])
def test_evaluation_index_errors(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(ViewSamplerError, match=message) as info:
        EvaluationIndex(path)
    assert str(info.value).startswith(path)


def test_evaluation_index_missing_file(tmp_path):
    with pytest.raises(ViewSamplerError, match="no such evaluation index file"):
        EvaluationIndex(str(tmp_path / "nope.json"))
