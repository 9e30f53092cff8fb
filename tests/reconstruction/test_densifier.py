"""GaussianDensifier and its parts: counts (official numbers and a forward), parent boxes, the learned mask,
gradients into the encoder, determinism, seeded training, V = 3, tokens, presets and bad input."""
import json
import math

import pytest
import torch

from reconstruction.densify.decoder import (OPACITY_INDEX, DecoderStage, gaussians_from_raw, raw_attributes, raw_dim,
                                          split_opacity_logit, stage_geometry)
from reconstruction.densify.model import GaussianDensifier, densified_counts
from reconstruction.densify.presets import DENSIFIER_PRESETS, build_densifier
from reconstruction.densify.segment import DensifyError
from reconstruction.densify.selection import CoarseRender
from reconstruction.densify.tokens import detail_tokens
from reconstruction.densify.upsample import ChildUpsampler, drop_path, offset_encoding
from reconstruction.encoder import ENCODER_PRESETS, build_encoder
from reconstruction.views import to_cameras
from splatting import render
from splatting.cameras import look_at
from torch_utils.misc import count_parameters

RE10K_DENSIFIER_PARAMETERS = 15_829_852  # our exact count for the official scene preset (GDM reports ~15.8 M)
SIZE = 32
K_NUM = 128


def make_views(b, v, h=SIZE, w=SIZE, seed=0):
    """Views from cameras on a short line looking down +z at a random-image scene, depth range 1..20."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.stack([torch.tensor([0.3 * i - 0.15 * (v - 1), 0.05 * i, 0.0]) for i in range(v)])
    c2w = look_at(origins, origins + torch.tensor([0.02, 0.0, 5.0]), up=(0.0, -1.0, 0.0))
    k = torch.tensor([[0.9, 0, 0.5], [0, 0.9 * w / h, 0.5], [0, 0, 1]])
    return dict(image=torch.rand(b, v, 3, h, w, generator=g), intrinsics=k.expand(b, v, 3, 3).clone(),
                extrinsics=c2w.expand(b, v, 4, 4).clone(), near=torch.full((b, v), 1.0),
                far=torch.full((b, v), 20.0), index=torch.arange(v).expand(b, v).clone())


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder("small", num_candidates=8)


def small_densifier(**overrides):
    torch.manual_seed(1)
    return build_densifier("small", 83, **{"k_num": K_NUM, **overrides})


@pytest.fixture(scope="module")
def densifier():
    return small_densifier()


def encode(encoder, context):
    with torch.no_grad():
        return encoder(context)


def test_official_counts_formula():
    counts = densified_counts(2, 256, 256, 30_000, [0.5, 0.8, 1.0], [2, 2, 2])
    assert [s["parents"] for s in counts["stages"]] == [30_000, 30_000, 48_000]
    assert [s["children"] for s in counts["stages"]] == [60_000, 60_000, 96_000]
    assert [s["leaves"] for s in counts["stages"]] == [30_000, 12_000, 96_000]
    assert [s["continuing"] for s in counts["stages"]] == [30_000, 48_000, 0]
    assert counts["fine_per_view"] == 138_000 and counts["coarse_kept_per_view"] == 35_536
    assert counts["per_view"] == 173_536 and counts["per_scene"] == 347_072
    # ceil, per view: 0.8 * 2050 = 1640 exactly, 0.8 * 2051 = 1640.8 -> 1641
    assert densified_counts(1, 64, 64, 1025, [0.8, 1.0], [2, 2])["stages"][0]["continuing"] == 1640
    assert densified_counts(1, 64, 64, 1025, [0.8, 1.0], [2, 1])["stages"][1]["children"] == 1640
    assert densified_counts(3, 64, 64, 1000, [0.7, 1.0], [3, 2])["stages"][0]["continuing"] == 2100
    with pytest.raises(DensifyError, match=r"k_num=4097 exceeds the H\*W=4096"):
        densified_counts(2, 64, 64, 4097, [0.5, 1.0], [2, 2])


def test_official_preset_parameter_count():
    torch.manual_seed(0)
    model = build_densifier("re10k", 163)
    assert count_parameters(model) == RE10K_DENSIFIER_PARAMETERS
    assert model.k_num == 30_000 and model.counts(2, 256, 256)["per_scene"] == 347_072


def test_forward_counts_layout_and_children_start_as_parent_copies(encoder, densifier):
    context = make_views(2, 2)
    coarse = encode(encoder, context)
    densifier.eval()
    with torch.no_grad():
        out = densifier(context, coarse)
    counts = densifier.counts(2, SIZE, SIZE)
    assert out.counts == counts
    n = counts["per_scene"]
    g = out.gaussians
    assert g.means.shape == (2, n, 3) and g.sh.shape == (2, n, 4, 3) and out.stage_ids.shape == (2, n)
    per_view = out.stage_ids.reshape(2, 2, -1)
    expected = [counts["coarse_kept_per_view"]] + [s["leaves"] for s in counts["stages"]]
    for b in range(2):
        for v in range(2):
            assert torch.bincount(per_view[b, v], minlength=4).tolist() == expected
    assert set(out.timings) == {"selection", "tokens", "decoder", "union", "total"}
    # Unselected coarse Gaussians pass through unchanged, in index order.
    raw = raw_attributes(coarse.gaussians)
    union_raw = raw_attributes(g).reshape(2, 2, counts["per_view"], -1)
    selected = torch.zeros(2, 2 * SIZE * SIZE, dtype=torch.bool)
    selected.scatter_(1, out.selection.index.reshape(2, -1), True)
    for v in range(2):
        rest = (~selected[:, v * SIZE * SIZE:(v + 1) * SIZE * SIZE]).nonzero()
        kept = raw[:, v * SIZE * SIZE:][rest[:, 0], rest[:, 1]].reshape(2, -1, raw.shape[-1])
        torch.testing.assert_close(union_raw[:, v, counts["fine_per_view"]:], kept)
    # The head's last layer starts at zero: every densified Gaussian copies the raw values of a selected parent
    # of its own view (all but the opacity, which is split among the children).
    keep_columns = [i for i in range(raw.shape[-1]) if i != OPACITY_INDEX]
    for b in range(2):
        for v in range(2):
            parents = raw[b, out.selection.index[b, v]][:, keep_columns]
            fine = union_raw[b, v, :counts["fine_per_view"]][:, keep_columns]
            assert float((fine[:, None] - parents[None]).abs().amax(-1).min(dim=1).values.max()) == 0.0


def test_split_children_cover_the_alpha_of_their_parent():
    """Stacked at one place, the children of a split cover as much alpha over the image plane as the parent:
    integral of 1 - (1 - x G)^r against a times the integral of G, G a 2D Gaussian profile (radial quadrature)."""
    rho = torch.linspace(0, 12, 24001, dtype=torch.float64)
    profile = torch.exp(-0.5 * rho ** 2)

    def plane_integral(values):  # values [..., len(rho)] of a radial function -> its integral over the plane
        return torch.trapezoid(values * 2 * math.pi * rho, rho, dim=-1)

    logits = torch.linspace(-8, 8, 33, dtype=torch.float64)
    parent = torch.sigmoid(logits)
    for parts in (2, 3, 4):
        child = torch.sigmoid(split_opacity_logit(logits, parts))
        stacked = plane_integral(1 - (1 - child[:, None] * profile) ** parts)
        torch.testing.assert_close(stacked, parent * plane_integral(profile), rtol=1e-6, atol=0)
        assert bool((child < parent).all()) and bool((child * parts > parent).all())
    torch.testing.assert_close(split_opacity_logit(logits, 1), logits, rtol=0, atol=0)


def test_split_opacity_gradient():
    logits = torch.randn(16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: split_opacity_logit(z, 2), (logits,))
    assert torch.autograd.gradcheck(lambda z: split_opacity_logit(z, 3), (logits,))
    extreme = split_opacity_logit(torch.tensor([-200.0, 0.0, 60.0]), 2)  # float32 in, finite out
    assert extreme.dtype == torch.float32 and bool(torch.isfinite(extreme).all())


def test_centre_split_lets_through_what_the_parent_did():
    logits = torch.linspace(-8, 8, 33, dtype=torch.float64)
    for parts in (2, 3, 4):
        child = torch.sigmoid(split_opacity_logit(logits, parts, "centre"))
        torch.testing.assert_close((1 - child) ** parts, 1 - torch.sigmoid(logits), rtol=1e-9, atol=1e-12)
    with pytest.raises(DensifyError, match="opacity_split: expected one of coverage, centre"):
        split_opacity_logit(logits, 2, "median")
    with pytest.raises(DensifyError, match="opacity_split"):
        small_densifier(opacity_split="median")


def test_densifier_saved_before_the_split_choice_loads_with_the_centre_rule(encoder, tmp_path):
    from torch_utils import checkpoint

    path = str(tmp_path / "network-snapshot-000001.pt")
    old = small_densifier()
    checkpoint.save_recon_snapshot(path, encoder, old, optimizer={}, scheduler={}, progress={"step": 1},
                                   rng={"ranks": []}, options={"steps": 1})
    assert checkpoint.load_recon_snapshot(path)["densifier"].init_kwargs["opacity_split"] == "coverage"
    data = torch.load(path, weights_only=True)
    del data["densifier"]["init_kwargs"]["opacity_split"]  # what an older version wrote
    checkpoint.atomic_torch_save(data, path)  # with a fresh checksum
    loaded = checkpoint.load_recon_snapshot(path)["densifier"]
    assert loaded.init_kwargs["opacity_split"] == "centre"
    assert {stage.opacity_split for stage in loaded.decoder.stages} == {"centre"}


def test_fresh_densifier_renders_like_the_coarse_gaussians(encoder, densifier):
    """A tree of opacity-split copies of a parent covers what the parent covered: before any training the fine
    render is close to the coarse one (not brighter or more opaque), so fine-tuning starts from the base. Measured
    here: mean |alpha difference| 2.1e-5, mean |colour difference| 0.0093 (0.0158 when the split matched the
    parent's opacity at the centre instead of its integrated alpha)."""
    context = make_views(1, 2, seed=3)
    coarse = encode(encoder, context)
    densifier.eval()
    with torch.no_grad():
        fine = densifier(context, coarse).gaussians
        cams = to_cameras(context)
        a, b = render(coarse.gaussians, cams), render(fine, cams)
    assert float((a.alpha - b.alpha).abs().mean()) < 1e-4
    assert float((a.color - b.color).abs().mean()) < 0.012


def test_children_stay_inside_their_parents_box(encoder, densifier):
    up = ChildUpsampler(8, 6, factor=3, n_frequencies=4, offset_scale=0.1)
    with torch.no_grad():
        up.offset[-1].weight.mul_(500.0)  # saturate tanh: offsets reach the box faces
    coords, feats = torch.randn(50, 3), torch.randn(50, 8)
    with torch.no_grad():
        child_coords, child_feats, offsets = up(coords, feats, grid_size=0.02)
    assert child_coords.shape == (150, 3) and child_feats.shape == (150, 6)
    delta = child_coords - coords.repeat_interleave(3, dim=0)
    torch.testing.assert_close(delta, offsets, rtol=0, atol=1e-6)
    assert float(offsets.abs().max()) <= 0.1 * 0.02 * (1 + 1e-6)
    assert float(offsets.abs().max()) > 0.1 * 0.02 * 0.99
    # In the whole module every densified Gaussian lies within the sum of its ancestors' boxes.
    context = make_views(1, 2)
    coarse = encode(encoder, context)
    densifier.eval()
    with torch.no_grad():
        out = densifier(context, coarse)
    reach = 0.1 * sum(densifier.decoder.stage_grid_size(s) for s in range(3))
    counts = out.counts
    means = out.gaussians.means.reshape(2, counts["per_view"], 3)
    for v in range(2):
        parents = coarse.gaussians.means[0, out.selection.index[0, v]]
        fine = means[v, :counts["fine_per_view"]]
        chebyshev = (fine[:, None] - parents[None]).abs().max(-1).values.min(1).values
        assert float(chebyshev.max()) <= reach * (1 + 1e-4)


def _stage_inputs(n_per_cloud, clouds, channels, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.rand(clouds * n_per_cloud, 3, generator=gen)
    feats = torch.randn(clouds * n_per_cloud, channels, generator=gen)
    raw = torch.randn(clouds * n_per_cloud, raw_dim(0), generator=gen)
    batch = torch.arange(clouds).repeat_interleave(n_per_cloud)
    return coords, feats, raw, batch


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.8])
def test_mask_keeps_ceil_ratio_of_each_cloud_by_score(ratio):
    torch.manual_seed(0)
    stage = DecoderStage(16, 12, 2, 1, 48, 2.0, [0.0], 2, ratio, 3, 0.1, raw_dim(0)).eval()
    coords, feats, raw, batch = _stage_inputs(37, 3, 16)
    geometry = stage_geometry(coords, batch, 0.1, ("z", "hilbert"), 48, False, None)
    with torch.no_grad():
        result = stage(coords, feats, raw, batch, geometry, 0.1)
    assert result.coords.shape == (3 * 74, 3)
    for cloud in range(3):
        member = result.batch == cloud
        keep = result.non_leaf[member]
        assert int(keep.sum()) == math.ceil(ratio * 74)
        scores = result.scores[member]
        assert float(scores[keep].min()) > float(scores[~keep].max())
    assert result.next_feats.shape == (3 * math.ceil(ratio * 74), 12)


def test_mask_and_decoder_receive_gradients_through_the_render(encoder):
    densifier = small_densifier()
    densifier.train()
    context = make_views(1, 2)
    coarse = encode(encoder, context)
    out = densifier(context, coarse, generator=torch.Generator().manual_seed(0))
    color = render(out.gaussians, to_cameras(context)).color
    (color - context["image"]).square().mean().backward()
    for s in (0, 1):
        grads = [p.grad for p in densifier.decoder.stages[s].scorer.parameters()]
        assert all(g is not None and float(g.abs().sum()) > 0 for g in grads), f"stage {s} scorer"
    assert densifier.decoder.stages[2].scorer is None  # the last stage keeps all of its children
    for name in ("detail.embed.0.weight", "detail.attention.k_proj_weight", "decoder.stages.0.blocks.0.cpe_conv.weight",
                 "decoder.stages.2.head.2.weight", "decoder.stages.1.upsample.offset.2.weight"):
        grad = dict(densifier.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_gradients_reach_the_encoder_through_the_fine_branch(encoder):
    densifier = small_densifier()
    densifier.eval()
    context = make_views(1, 2)
    encoder.zero_grad()
    coarse = encoder(context)
    coarse.features.retain_grad()
    out = densifier(context, coarse)
    fine_only = out.gaussians.select(out.stage_ids[0] > 0)
    color = render(fine_only, to_cameras(context)).color
    (color - context["image"]).square().mean().backward()
    assert float(coarse.features.grad.abs().sum()) > 0  # features feed only the densifier
    stem = next(encoder.backbone.parameters()).grad
    assert stem is not None and float(stem.abs().sum()) > 0
    encoder.zero_grad()


def test_eval_is_deterministic_and_seeded_training_reproduces(encoder):
    densifier = small_densifier()
    context = make_views(1, 2, seed=3)
    coarse = encode(encoder, context)
    densifier.eval()
    with torch.no_grad():
        first, second = densifier(context, coarse), densifier(context, coarse)
    assert torch.equal(first.gaussians.means, second.gaussians.means)
    assert torch.equal(first.gaussians.sh, second.gaussians.sh)
    densifier.train()
    runs = []
    for seed in (5, 5, 6):
        with torch.no_grad():
            runs.append(densifier(context, coarse, generator=torch.Generator().manual_seed(seed)).gaussians.means)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], first.gaussians.means)  # drop path and shuffled orders act in training


def test_three_context_views(encoder):
    densifier = small_densifier(k_num=64)
    densifier.eval()
    context = make_views(1, 3, seed=4)
    with torch.no_grad():
        out = densifier(context, encoder(context))
    counts = densified_counts(3, SIZE, SIZE, 64, [0.5, 0.8, 1.0], [2, 2, 2])
    assert out.counts == counts and out.gaussians.num_gaussians == counts["per_scene"]
    assert out.selection.index.shape == (1, 3, 64)
    for v in range(3):
        chosen = out.selection.index[0, v]
        assert bool(((chosen >= v * SIZE * SIZE) & (chosen < (v + 1) * SIZE * SIZE)).all())


def test_tokens_sample_the_projected_pixel():
    h, w = 8, 12
    b, v = 1, 2
    context = make_views(b, v, h, w)
    gen = torch.Generator().manual_seed(0)
    coarse = CoarseRender(color=torch.rand(b, v, 3, h, w, generator=gen),
                          alpha=torch.rand(b, v, 1, h, w, generator=gen),
                          depth=1 + torch.rand(b, v, 1, h, w, generator=gen))
    # A point on the centre ray of view 0's pixel (row 3, column 7), 4.5 units deep.
    k = context["intrinsics"][0, 0]
    x_cam = ((7.5 / w - k[0, 2]) / k[0, 0]) * 4.5
    y_cam = ((3.5 / h - k[1, 2]) / k[1, 1]) * 4.5
    c2w = context["extrinsics"][0, 0]
    point = c2w[:3, :3] @ torch.tensor([x_cam, y_cam, 4.5]) + c2w[:3, 3]
    tokens = detail_tokens(point[None, None], context, coarse)
    assert tokens.shape == (1, 1, 2, 8)
    expected = torch.cat([context["image"][0, 0, :, 3, 7], coarse.color[0, 0, :, 3, 7], coarse.alpha[0, 0, :, 3, 7],
                          (coarse.depth[0, 0, :, 3, 7] - 4.5).abs()])
    torch.testing.assert_close(tokens[0, 0, 0], expected)


def test_raw_attribute_round_trip_and_offset_encoding(encoder):
    coarse = encode(encoder, make_views(1, 2, 16, 16)).gaussians
    back = gaussians_from_raw(coarse.means, raw_attributes(coarse))
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert torch.equal(getattr(back, name), getattr(coarse, name))
    offsets = torch.tensor([[0.1, -0.2, 0.3]])
    frequencies = torch.tensor([1.0, 2.0])
    expected = torch.tensor([[math.sin(0.1), math.sin(-0.2), math.sin(0.3), math.sin(0.2), math.sin(-0.4),
                              math.sin(0.6), math.cos(0.1), math.cos(-0.2), math.cos(0.3), math.cos(0.2),
                              math.cos(-0.4), math.cos(0.6)]])
    torch.testing.assert_close(offset_encoding(offsets, frequencies), expected)


def test_drop_path_is_per_point_seeded_and_off_in_eval():
    x = torch.ones(1000, 4)
    assert drop_path(x, 0.5, training=False) is x
    a = drop_path(x, 0.5, True, torch.Generator().manual_seed(0))
    b = drop_path(x, 0.5, True, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0.0, 2.0}
    assert bool((a == a[:, :1]).all())  # whole rows
    assert 400 < int((a[:, 0] == 0).sum()) < 600


def test_init_kwargs_rebuild_the_same_module(encoder, densifier):
    kwargs = json.loads(json.dumps(densifier.init_kwargs))
    clone = GaussianDensifier(**kwargs)
    clone.load_state_dict(densifier.state_dict(), strict=True)
    context = make_views(1, 2, seed=7)
    coarse = encode(encoder, context)
    densifier.eval()
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(context, coarse).gaussians.means, densifier(context, coarse).gaussians.means)


def test_presets_and_bad_input(encoder, densifier):
    assert set(DENSIFIER_PRESETS) == {"re10k", "small"}
    assert DENSIFIER_PRESETS["small"]["feature_dim"] == encoder.feature_dim
    re10k = ENCODER_PRESETS["re10k"]
    assert DENSIFIER_PRESETS["re10k"]["feature_dim"] == re10k["refine_channels"] + 3 + re10k["feature_channels"]
    assert DENSIFIER_PRESETS["re10k"]["sh_degree"] == re10k["sh_degree"]
    assert DENSIFIER_PRESETS["small"]["sh_degree"] == ENCODER_PRESETS["small"]["sh_degree"]
    with pytest.raises(DensifyError, match=r"preset 're10k': takes feature_dim=163 .* encoder gives feature_dim=83"):
        build_densifier("re10k", 83)
    with pytest.raises(DensifyError, match="unknown name 'huge'; valid: re10k, small"):
        build_densifier("huge", 83)
    with pytest.raises(DensifyError, match="unknown key"):
        build_densifier("small", 83, k_number=3)
    with pytest.raises(DensifyError, match="2 x detail_dim = 64 channels"):
        build_densifier("small", 83, channels=[48, 48, 32])
    with pytest.raises(DensifyError, match="its ratio must be 1.0"):
        build_densifier("small", 83, non_leaf_ratios=[0.5, 0.8, 0.9])
    with pytest.raises(DensifyError, match="one entry per stage"):
        build_densifier("small", 83, upscale=[2, 2])
    with pytest.raises(DensifyError, match="not divisible"):
        build_densifier("small", 83, num_heads=[5, 4, 2])
    context = make_views(1, 2)
    coarse = encode(encoder, context)
    too_many = small_densifier(k_num=SIZE * SIZE + 1)
    with pytest.raises(DensifyError, match=r"k_num=1025 exceeds the H\*W=1024 Gaussians of a context view"):
        too_many(context, coarse)
    narrow = type(coarse)(gaussians=coarse.gaussians, features=coarse.features[:, :, :80], depth=coarse.depth,
                          confidence=coarse.confidence)
    with pytest.raises(DensifyError, match="takes feature_dim=83 per-pixel features, the encoder gives 80"):
        densifier(context, narrow)
    with pytest.raises(DensifyError, match="built for sh_degree=3"):
        small_densifier(sh_degree=3)(context, coarse)
    with pytest.raises(DensifyError, match="expected an EncoderOutput"):
        densifier(context, coarse.gaussians)
