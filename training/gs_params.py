"""GSParams: the official `gs_params` visualization controls of GSGenerator.synthesis, and every rule about
their values in one place (construction checks the values, check_for what depends on a generator's sizes), so the
generator and the CLIs refuse the same values with the same message."""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass


class GSParamsError(ValueError):
    """A GSParams value that is malformed or does not fit the generator. `field` is the GSParams field, named
    like the gen_videos.py option (--point_index ...); `reason` is the message without the field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"GSParams.{field}: {reason}")
        self.field, self.reason = field, reason


def _index_tuple(field: str, value) -> tuple[int, ...] | None:
    """None, an integer or a list/tuple of integers >= 0 -> a non-empty tuple of ints (GSParamsError otherwise)."""
    if value is None:
        return None
    values = tuple(value) if isinstance(value, (list, tuple, range)) else (value,)
    try:
        if any(isinstance(v, bool) for v in values):
            raise TypeError("bool")
        values = tuple(operator.index(v) for v in values)
    except TypeError:
        raise GSParamsError(field, f"expected non-negative integers, got {value!r}") from None
    if not values or min(values) < 0:
        raise GSParamsError(field, f"expected one or more non-negative integers, got {list(values)}")
    return values


@dataclass(frozen=True)
class GSParams:
    """Visualization controls for GSGenerator.synthesis (the official gs_params).

    res_visualize: foreground levels to keep (None = all). point_index: keep only the descendants of these
    initial points (level l: indices [i * r^l, (i + 1) * r^l)). num_init_near_point: replace the single
    point_index by its k nearest initial points (raw _xyz, itself included). visualize_anchor: render the anchors
    (with opacity_ones) instead of the rendered Gaussians. opacity_ones, rendering_scale (added to log-scales)
    and the anchor switch act on the foreground only. camera_cond: colour direction fixed to (0, 0, -1).

    Every rule about these values lives here: construction checks the values themselves, check_for the rules
    that depend on a generator's sizes; the generator and the CLIs both call check_for, so they refuse the same
    values with the same message (GSParamsError).
    """

    res_visualize: tuple[int, ...] | None = None
    point_index: tuple[int, ...] | None = None
    num_init_near_point: int | None = None
    visualize_anchor: bool = False
    opacity_ones: bool = False
    rendering_scale: float = 0.0
    disable_background: bool = False
    camera_cond: bool = False

    def __post_init__(self) -> None:
        for name in ("res_visualize", "point_index"):
            object.__setattr__(self, name, _index_tuple(name, getattr(self, name)))
        k = self.num_init_near_point
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise GSParamsError("num_init_near_point", f"expected an integer k >= 1, got {k!r}")
            if self.point_index is None or len(self.point_index) != 1:
                raise GSParamsError("num_init_near_point", "needs exactly one point_index (the centre point), got "
                                    f"{None if self.point_index is None else list(self.point_index)}")
        scale = self.rendering_scale
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise GSParamsError("rendering_scale", f"expected a finite number (added to the log-scales), got "
                                f"{scale!r}")

    def check_for(self, counts: dict) -> None:
        """GSParamsError unless these values fit a generator with `counts` (its gaussian_counts()): the levels
        (anchor levels with visualize_anchor) it has, its number of initial points, anchors at all."""
        points = counts["levels"][0]
        if self.visualize_anchor and not counts["anchor_levels"]:  # only NaiveGenerator has none
            raise GSParamsError("visualize_anchor", "the naive generator has no anchors (only the hierarchical "
                                "generator has them)")
        levels = counts["anchor_levels"] if self.visualize_anchor else counts["levels"]
        what = "anchor levels (visualize_anchor)" if self.visualize_anchor else "levels"
        if self.res_visualize is not None and max(self.res_visualize) >= len(levels):
            raise GSParamsError("res_visualize", f"level {max(self.res_visualize)} out of range: this generator "
                                f"has {len(levels)} {what}, 0-{len(levels) - 1}")
        if self.point_index is not None and max(self.point_index) >= points:
            raise GSParamsError("point_index", f"{max(self.point_index)} out of range: this generator has "
                                f"{points} initial points, 0-{points - 1}")
        if self.num_init_near_point is not None and self.num_init_near_point > points:
            raise GSParamsError("num_init_near_point", f"expected 1..{points} (the number of initial points), "
                                f"got {self.num_init_near_point}")
