"""Which frames of a scene become context and target views: the training sampler and the fixed evaluation index.

BoundedViewSampler follows the official pixelSplat / MVSplat "bounded" sampler (RE10K defaults). Two official
behaviours are kept on purpose, so that training matches the published models:
- The context gap is always the *scheduled minimum* gap (the official code clips the maximum to the minimum, a
  known quirk it keeps "to follow the initial pixelSplat configs"); `uniform_gap=True` instead draws the gap
  uniformly between the scheduled minimum and maximum (the maximum clipped to the scene length).
- A scene is never shortened to fit: with fewer than gap + 1 frames it is rejected (ViewSamplerError), and the
  dataset counts and skips it.
"""
from __future__ import annotations

import json
import os

import torch
from torch import Tensor


class ViewSamplerError(ValueError):
    """A scene the sampler cannot draw from, or an evaluation index that is not well formed."""


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ViewSamplerError(f"BoundedViewSampler: {name} must be an int >= {minimum}, got {value!r}")
    return value


class BoundedViewSampler:
    """Two outermost context frames `gap` apart at a uniform random position; targets uniform between them.

    The gap bounds ramp linearly (integer steps, as officially) from (initial_min_gap, initial_max_gap) at step 0
    to (min_gap, max_gap) at `warmup_steps`. Targets are drawn with replacement from
    [left + min_target_distance, right - min_target_distance] (inclusive). The gap is raised to at least
    2 * min_target_distance so that range is never empty (the official code instead rejects every scene when
    min_target_distance exceeds half the scheduled minimum gap). With num_context > 2 the extra context frames are
    distinct frames drawn uniformly strictly between the outer two (the official sampler only supports two)."""

    def __init__(self, num_context: int = 2, num_target: int = 4, min_gap: int = 45, max_gap: int = 192,
                 initial_min_gap: int = 25, initial_max_gap: int = 45, warmup_steps: int = 150_000,
                 min_target_distance: int = 0, targets: str = "between", uniform_gap: bool = False):
        self.num_context = _check_int("num_context", num_context, 2)
        self.num_target = _check_int("num_target", num_target, 1)
        self.min_gap = _check_int("min_gap", min_gap, 1)
        self.max_gap = _check_int("max_gap", max_gap, 1)
        self.initial_min_gap = _check_int("initial_min_gap", initial_min_gap, 1)
        self.initial_max_gap = _check_int("initial_max_gap", initial_max_gap, 1)
        self.warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
        self.min_target_distance = _check_int("min_target_distance", min_target_distance, 0)
        if max_gap < min_gap or initial_max_gap < initial_min_gap:
            raise ViewSamplerError(f"BoundedViewSampler: gap bounds must satisfy min <= max, got "
                                   f"initial ({initial_min_gap}, {initial_max_gap}), final ({min_gap}, {max_gap})")
        if targets != "between":
            raise ViewSamplerError(f"BoundedViewSampler: targets must be 'between', got {targets!r}")
        self.targets = targets
        self.uniform_gap = bool(uniform_gap)

    def __repr__(self) -> str:
        return (f"BoundedViewSampler(num_context={self.num_context}, num_target={self.num_target}, "
                f"min_gap={self.min_gap}, max_gap={self.max_gap}, initial_min_gap={self.initial_min_gap}, "
                f"initial_max_gap={self.initial_max_gap}, warmup_steps={self.warmup_steps}, "
                f"min_target_distance={self.min_target_distance}, uniform_gap={self.uniform_gap})")

    def _ramp(self, initial: int, final: int, step: int) -> int:
        if self.warmup_steps == 0:
            return final
        return min(initial + int((final - initial) * (step / self.warmup_steps)), final)

    def schedule(self, step: int) -> tuple[int, int]:
        """(min_gap, max_gap) at training step `step`."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ViewSamplerError(f"BoundedViewSampler.schedule: step must be an int >= 0, got {step!r}")
        return (self._ramp(self.initial_min_gap, self.min_gap, step),
                self._ramp(self.initial_max_gap, self.max_gap, step))

    def gap_range(self, num_frames: int, step: int) -> tuple[int, int]:
        """The (lowest, highest) context gap sample() may use for this scene at this step; raises
        ViewSamplerError when the scene is too short."""
        low, high = self.schedule(step)
        low = max(low, 2 * self.min_target_distance, self.num_context - 1)
        high = min(num_frames - 1, max(high, low) if self.uniform_gap else low)
        if high < low:
            raise ViewSamplerError(f"scene has {num_frames} frames, but the context gap at step {step} needs at "
                                   f"least {low + 1}")
        return low, high

    def sample(self, num_frames: int, step: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(context LongTensor [num_context], target LongTensor [num_target]) frame indices of one scene."""
        low, high = self.gap_range(num_frames, step)
        gap = int(torch.randint(low, high + 1, (), generator=generator))
        left = int(torch.randint(num_frames - gap, (), generator=generator))
        right = left + gap
        context = [left]
        if self.num_context > 2:
            inner = torch.randperm(gap - 1, generator=generator)[:self.num_context - 2] + left + 1
            context += sorted(inner.tolist())
        context.append(right)
        d = self.min_target_distance
        target = torch.randint(left + d, right - d + 1, (self.num_target,), generator=generator)
        return torch.tensor(context, dtype=torch.int64), target.to(torch.int64)


# --------------------------------------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class EvaluationIndex:
    """A fixed evaluation protocol: JSON {key: null | {"context": [frames], "target": [frames]}}.

    Null entries (scenes the protocol leaves out) are skipped; `keys()` keeps the file order."""

    def __init__(self, path: str):
        self.path = str(path)
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise ViewSamplerError(f"{self.path}: no such evaluation index file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ViewSamplerError(f"{self.path}: not valid JSON ({str(error).splitlines()[0][:200]})") from None
        if not isinstance(data, dict):
            raise ViewSamplerError(f"{self.path}: expected a JSON object {{key: null | {{\"context\": [...], "
                                   f"\"target\": [...]}}}}, got {type(data).__name__}")
        self._views: dict[str, tuple[list[int], list[int]]] = {}
        for key, entry in data.items():
            if entry is None:
                continue
            self._views[key] = self._parse(key, entry)

    def _parse(self, key: str, entry) -> tuple[list[int], list[int]]:
        where = f"{self.path}: key {key!r}"
        if not isinstance(entry, dict):
            raise ViewSamplerError(f"{where}: expected null or an object with 'context' and 'target', "
                                   f"got {type(entry).__name__}")
        lists = []
        for field in ("context", "target"):
            value = entry.get(field)
            if not isinstance(value, list) or not value or not all(_is_int(v) for v in value):
                raise ViewSamplerError(f"{where}: field {field!r}: expected a non-empty list of frame indices "
                                       f"(ints), got {json.dumps(value)[:100]}")
            lists.append(list(value))
        context, target = lists
        if len(set(context)) != len(context):
            raise ViewSamplerError(f"{where}: field 'context' lists a frame more than once: {context}")
        repeated = sorted(set(context) & set(target))
        if repeated:
            raise ViewSamplerError(f"{where}: context frame {repeated[0]} is repeated as its own target")
        return context, target

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, key) -> bool:
        return key in self._views

    def keys(self) -> list[str]:
        return list(self._views)

    def views(self, key: str) -> tuple[Tensor, Tensor]:
        """(context LongTensor [V], target LongTensor [T]) of scene `key`."""
        if key not in self._views:
            raise ViewSamplerError(f"{self.path}: no (non-null) entry for key {key!r}")
        context, target = self._views[key]
        return torch.tensor(context, dtype=torch.int64), torch.tensor(target, dtype=torch.int64)

    def check(self, key: str, num_frames: int) -> None:
        """Raise ViewSamplerError unless every frame of `key`'s entry exists in a scene of num_frames frames."""
        context, target = self.views(key)
        for field, frames in (("context", context), ("target", target)):
            for frame in frames.tolist():
                if not 0 <= frame < num_frames:
                    raise ViewSamplerError(f"{self.path}: key {key!r}: {field} frame {frame} out of range "
                                           f"(scene has {num_frames} frames)")

    @property
    def name(self) -> str:
        return os.path.basename(self.path)
