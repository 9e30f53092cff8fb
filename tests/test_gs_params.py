"""GSParams: every rule about its values, each refused once with its message (value rules at construction,
generator-dependent rules in check_for), and the generators refusing through the same check."""
import math
import re

import pytest
import torch

from training.generator import GSGenerator
from training.gs_params import GSParams, GSParamsError
from training.naive_generator import NaiveGenerator

pytestmark = pytest.mark.usefixtures("one_thread")

# gaussian_counts() of a hierarchical generator with 16 initial points, 3 levels, 2 anchor levels.
COUNTS = {"levels": [16, 64, 256], "anchor_levels": [16, 64]}
NAIVE_COUNTS = {"levels": [336], "anchor_levels": []}
TINY = dict(img_resolution=16, num_points=16, res_end=32, channel_base=256, channel_min=16, channel_max=32,
            num_heads=2, num_transformer_layers=1, knn_k=4, view_dim=8, const_pe_length=16, bg_num_points=8,
            bg_channels=16, w_dim=32, z_dim=32)


@pytest.mark.parametrize("kwargs, field, message", [
    (dict(point_index=[-1]), "point_index", "expected one or more non-negative integers, got [-1]"),
    (dict(point_index=[]), "point_index", "expected one or more non-negative integers, got []"),
    (dict(res_visualize=[0.5]), "res_visualize", "expected non-negative integers, got [0.5]"),
    (dict(res_visualize=True), "res_visualize", "expected non-negative integers, got True"),
    (dict(num_init_near_point=3), "num_init_near_point", "needs exactly one point_index (the centre point), got None"),
    (dict(num_init_near_point=3, point_index=[1, 2]), "num_init_near_point", "needs exactly one point_index"),
    (dict(num_init_near_point=0, point_index=[1]), "num_init_near_point", "expected an integer k >= 1, got 0"),
    (dict(rendering_scale=math.nan), "rendering_scale", "expected a finite number (added to the log-scales), got nan"),
    (dict(rendering_scale="1"), "rendering_scale", "expected a finite number"),
])
def test_value_rules(kwargs, field, message):
    with pytest.raises(GSParamsError) as caught:
        GSParams(**kwargs)
    assert caught.value.field == field and message in caught.value.reason
    assert str(caught.value) == f"GSParams.{field}: {caught.value.reason}"
    assert isinstance(caught.value, ValueError)


def test_values_are_normalized():
    gp = GSParams(res_visualize=1, point_index=range(2, 3), num_init_near_point=2)
    assert gp.res_visualize == (1,) and gp.point_index == (2,)
    assert GSParams(point_index=[torch.tensor(3)]).point_index == (3,)  # integer tensors index fine


@pytest.mark.parametrize("kwargs, counts, field, message", [
    (dict(res_visualize=[3]), COUNTS, "res_visualize", "level 3 out of range: this generator has 3 levels, 0-2"),
    (dict(res_visualize=[2], visualize_anchor=True), COUNTS, "res_visualize",
     "level 2 out of range: this generator has 2 anchor levels (visualize_anchor), 0-1"),
    (dict(point_index=[3, 16]), COUNTS, "point_index", "16 out of range: this generator has 16 initial points, 0-15"),
    (dict(point_index=[0], num_init_near_point=17), COUNTS, "num_init_near_point",
     "expected 1..16 (the number of initial points), got 17"),
    (dict(visualize_anchor=True), NAIVE_COUNTS, "visualize_anchor", "the naive generator has no anchors"),
])
def test_generator_rules(kwargs, counts, field, message):
    gp = GSParams(**kwargs)
    with pytest.raises(GSParamsError) as caught:
        gp.check_for(counts)
    assert caught.value.field == field and message in caught.value.reason


def test_values_at_the_limits_fit():
    GSParams(res_visualize=[2], point_index=[15]).check_for(COUNTS)
    GSParams(res_visualize=[1], visualize_anchor=True, point_index=[0], num_init_near_point=16).check_for(COUNTS)
    GSParams(point_index=[335]).check_for(NAIVE_COUNTS)


@pytest.mark.parametrize("cls, kwargs, message", [
    (GSGenerator, dict(point_index=[16]), "GSParams.point_index: 16 out of range"),
    (GSGenerator, dict(res_visualize=[1], visualize_anchor=True, point_index=[0], num_init_near_point=17),
     "GSParams.num_init_near_point: expected 1..16"),
    (NaiveGenerator, dict(visualize_anchor=True), "GSParams.visualize_anchor: the naive generator has no anchors"),
])
def test_generators_refuse_through_check_for(cls, kwargs, message):
    torch.manual_seed(0)
    G = cls(**TINY).eval()
    ws = torch.zeros(1, G.num_ws, G.w_dim)
    with pytest.raises(GSParamsError, match=re.escape(message)):
        G.generate_scene(ws, GSParams(**kwargs))
