"""GSGAN generator networks: Gaussian counts, parameter counts, hierarchy invariants, gradients, serialization,
gs_params (training/{mapping,point_generator,background,generator}.py)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from splatting import Gaussians, render
from splatting.cameras import Cameras, eg3d_label, look_at
from training.discriminator import Discriminator
from training.generator import OPACITY_ONES_LOGIT_CLEAN, GSGenerator, GSParams
from training.mapping import MappingNetwork
from splatting.projection import quat_to_rotmat
from training.point_generator import ConstPE, PointGenerator, make_children

SMALL = dict(img_resolution=64, channel_max=128, num_points=64, res_end=32)
FOCAL = 4.2647


def _labels(batch, yaw_offsets=None):
    yaw = torch.linspace(-0.3, 0.3, batch) if yaw_offsets is None else torch.as_tensor(yaw_offsets)
    origin = torch.stack([2.7 * torch.sin(yaw), 0.1 * torch.ones_like(yaw), 2.7 * torch.cos(yaw)], dim=-1)
    return eg3d_label(look_at(origin, torch.zeros(batch, 3)), FOCAL)


def _perturb_(module, std):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


def _num_params(module):
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------------
# Counts.

# params_official: parameters of the authors' released GSGAN generator (their code instantiated with the official
# FFHQ-256 / FFHQ-512 script options and counted, dead parameters included; docs/model.md).
@pytest.mark.parametrize("kwargs, fg, anchors, params_official", [
    (dict(img_resolution=256, res_end=128), 87_296, 21_760, 40.76e6),
    (dict(img_resolution=512, res_end=256), 349_440, 87_296, 41.02e6),
])
def test_official_gaussian_and_parameter_counts(kwargs, fg, anchors, params_official):
    with torch.device("meta"):
        G = GSGenerator(**kwargs)
    counts = G.gaussian_counts()
    assert counts["foreground"] == fg and counts["anchors"] == anchors and counts["background"] == 10_000
    assert counts["total"] == fg + 10_000
    assert G.num_ws == 17
    n = _num_params(G)
    # Within 1% of the official count; ours lacks the official release's dead parameters
    # (docs/official-release.md, item 14).
    assert abs(n - params_official) / params_official < 0.01, n
    assert n < params_official


def test_channel_table_and_ada_rule():
    with torch.device("meta"):
        G = GSGenerator(img_resolution=512, res_end=256)
    widths = [G.points.render_heads[l].scale.in_features for l in range(6)]
    assert widths == [512, 512, 256, 128, 128, 128]  # ch[2i] for i = 4 ... 128
    assert G.points.level_ada == [False, True, True, False, False, False]


def test_small_or_degenerate_configs_do_not_crash():
    for res_end in (8, 16):
        G = GSGenerator(img_resolution=16, channel_max=32, num_points=16, res_end=res_end, num_transformer_layers=1,
                        bg_num_points=8)
        out = G(torch.randn(1, 512), _labels(1), neural_rendering_resolution=16)
        assert out["gaussians"].num_gaussians == G.gaussian_counts()["total"]


# --------------------------------------------------------------------------------------------------
# Hierarchy invariants.

def test_child_rule_on_hand_computed_values():
    """Three parents, values worked out by hand: percent_dense 0.05, split_ratio 2, scale deltas 0 (softmin(0, 0) =
    -log 2, i.e. half the base scale), position offsets tanh^-1(0.5, -0.5, 0) along the parent's axes."""
    parents = Gaussians(
        means=torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, -1.0]]], dtype=torch.float64),
        log_scales=torch.tensor([[[0.1, 0.02, 0.01],    # largest 0.1 > 0.05: split, base halved
                                  [0.04, 0.03, 0.02],   # largest 0.04 <= 0.05: not split
                                  [3.0, 1.0, 1.0]]],    # split: base (1.5, 0.5, 0.5) capped at scale 1
                                dtype=torch.float64).log(),
        quats=torch.tensor([[[1.0, 0.0, 0.0, 0.0]] * 3], dtype=torch.float64),
        opacity_logits=torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64),
        sh=torch.zeros(1, 3, 1, 3, dtype=torch.float64))
    deltas = {"xyz": torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64).atanh().expand(1, 3, 3),
              "scale": torch.zeros(1, 3, 3, dtype=torch.float64),
              "rotation": torch.tensor([0.0, 0.1, 0.0, 0.0], dtype=torch.float64).expand(1, 3, 4),
              "opacity": torch.full((1, 3, 1), 0.25, dtype=torch.float64),
              "color": torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).expand(1, 3, 3)}
    child = make_children(parents, deltas, percent_dense=0.05, split_ratio=2.0, scale_clamp_min=math.log(0.003))
    expect_scales = torch.tensor([[[0.025, 0.005, 0.003],   # 0.0025 raised to the floor exp(-5.81) = 0.003
                                   [0.02, 0.015, 0.01],
                                   [0.5, 0.25, 0.25]]], dtype=torch.float64)
    torch.testing.assert_close(child.log_scales.exp(), expect_scales, rtol=1e-12, atol=0)
    # Positions use the PRE-split scale: half of it along +x, half along -y.
    expect_means = torch.tensor([[[0.05, -0.01, 0.0], [1.02, 1.985, 3.0], [1.5, -0.5, -1.0]]], dtype=torch.float64)
    torch.testing.assert_close(child.means, expect_means, rtol=0, atol=1e-12)
    torch.testing.assert_close(child.quats, torch.tensor([[[1.0, 0.1, 0.0, 0.0]] * 3], dtype=torch.float64))
    torch.testing.assert_close(child.opacity_logits, torch.tensor([[0.75, -0.75, 2.25]], dtype=torch.float64))
    torch.testing.assert_close(child.sh, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).expand(1, 3, 1, 3))


def _box_coords(child: Gaussians, parent: Gaussians):
    """Child centre in the parent's box frame: R(q)^T (x - p) / exp(s); inside the box iff all |.| <= 1."""
    local = (quat_to_rotmat(parent.quats).transpose(-1, -2) @ (child.means - parent.means).unsqueeze(-1))[..., 0]
    return local / parent.log_scales.exp()


def test_hierarchy_invariants_on_random_weights():
    torch.manual_seed(5)
    P = PointGenerator(num_points=16, res_end=128, img_resolution=256, channel_max=64, num_transformer_layers=2)
    _perturb_(P, 0.3)
    with torch.no_grad():  # push level-0 anchors towards the cube's faces so the [-1, 1] clamp is exercised
        P.anchor_heads[0].xyz.weight.mul_(100.0)
    P.double()  # float64: children of tiny parents near |x| = 1 must be resolved to well below their box size
    ws = torch.randn(2, P.num_ws, 512, dtype=torch.float64)
    view = F.normalize(torch.randn(2, 3, dtype=torch.float64), dim=-1)
    with torch.no_grad():
        rendered, anchors = P(ws, view, clamp_xyz=False)
        clamped, _ = P(ws, view)
    r = P.up_ratio
    assert [g.num_gaussians for g in rendered] == [16 * r ** l for l in range(5)]
    assert [g.num_gaussians for g in anchors] == [16 * r ** l for l in range(4)]
    # Level 0: rendered Gaussian l lies in the box of anchor l.
    assert _box_coords(rendered[0], anchors[0]).abs().max() <= 1 + 1e-6
    outside_post_split = split_seen = unsplit_seen = 0
    for level in range(1, 5):
        parents = anchors[level - 1].map(lambda t: t.repeat_interleave(r, dim=1))
        split = parents.log_scales.exp().amax(-1) > P.percent_dense  # parents larger than percent_dense split
        split_seen += int(split.sum())
        unsplit_seen += int((~split).sum())
        children = [rendered[level]] + ([anchors[level]] if level < 4 else [])
        for child in children:
            local = _box_coords(child, parents)
            assert local.abs().max() <= 1 + 1e-6  # inside the pre-split box
            # ... and the pre-split scale matters: some split children leave the post-split box.
            outside_post_split += int((local.abs().amax(-1) > P.split_ratio ** -1 + 1e-3)[split].sum())
            # Never larger than the parent; a split parent's children at least split_ratio times smaller (down to the
            # floor). The exact rule is checked on hand-computed values in test_child_rule_on_hand_computed_values.
            assert (child.log_scales <= parents.log_scales.clamp(min=-8.0) + 1e-5).all()
            shrunk = (parents.log_scales - math.log(P.split_ratio)).clamp(min=-8.0)
            assert (child.log_scales <= shrunk + 1e-5)[split].all()
            assert (child.log_scales >= -8.0).all() and (child.log_scales <= 0.0).all()
    assert split_seen > 0 and unsplit_seen > 0 and outside_post_split > 0
    for g, u in zip(clamped, rendered):
        torch.testing.assert_close(g.means, u.means.clamp(-1, 1))
    assert max(g.means.abs().max() for g in rendered) > 1.0  # the clamp was exercised
    for g in rendered[:1] + anchors[:1]:
        assert (g.log_scales <= P.scale_init + 1e-6).all()  # softmin(., s_thr) stays below s_thr


def _reference_init_log_scales(point_gen):
    with torch.no_grad():
        rendered, _ = point_gen(torch.randn(1, point_gen.num_ws, 512), torch.tensor([[0.0, 0.0, -1.0]]))
    return [g.log_scales.mean().item() for g in rendered]


def test_init_log_scales_match_reference_values():
    # Depends on P0, img_resolution and res_end only (not on width/depth), so a narrow model suffices here.
    P = PointGenerator(num_points=256, res_end=128, img_resolution=256, channel_max=128, num_transformer_layers=1)
    got = _reference_init_log_scales(P)
    assert got == pytest.approx([-3.46, -4.84, -6.23, -6.93, -7.62], abs=0.08)


@pytest.mark.slow
def test_init_log_scales_full_ffhq256_model():
    got = _reference_init_log_scales(PointGenerator(num_points=256, res_end=128, img_resolution=256))
    assert got == pytest.approx([-3.46, -4.84, -6.23, -6.93, -7.62], abs=0.08)


def test_transformer_is_identity_at_init():
    P = PointGenerator(**{k: v for k, v in SMALL.items()}, num_transformer_layers=2)
    ws = torch.randn(2, P.num_ws, 512)
    p = P.initial_points()
    emb = torch.cat([P.lff(p), P.const_pe(p)], dim=-1)
    torch.testing.assert_close(P._level0_features(ws), emb.expand(2, -1, -1))


def test_initial_points_on_sphere():
    P = PointGenerator(**SMALL)
    torch.testing.assert_close(P._xyz.norm(dim=-1), torch.full([64], math.sqrt(3) / 2))


# --------------------------------------------------------------------------------------------------
# ConstPE.

def test_const_pe_compat_closed_form():
    pe = ConstPE(6, length=512, compat=True)
    p = torch.rand(40, 3) * 2 - 1
    lines = pe.lines[:, :, 0]  # [3, C, 512]
    mid = 0.5 * (lines[:, :, 255] + lines[:, :, 256])  # [3, C]
    ref = ((1 - p.abs() / 2).t().unsqueeze(-1) * mid.unsqueeze(1)).sum(0) / math.sqrt(3)
    torch.testing.assert_close(pe(p), ref)


def test_const_pe_clean_linear_interpolation():
    pe = ConstPE(5, length=16, compat=False)
    p = torch.rand(30, 3) * 2 - 1
    lines = pe.lines[:, :, 0]
    ref = torch.zeros(30, 5)
    for a in range(3):
        u = ((p[:, a] + 1) * 16 - 1) / 2  # align_corners=False pixel coordinate
        i0 = u.floor().long()
        frac = (u - i0).unsqueeze(-1)
        for idx, wgt in ((i0, 1 - frac), (i0 + 1, frac)):
            valid = ((idx >= 0) & (idx < 16)).unsqueeze(-1)  # zero padding
            ref += torch.where(valid, wgt * lines[a][:, idx.clamp(0, 15)].t(), torch.zeros(()))
    torch.testing.assert_close(pe(p), ref / math.sqrt(3))


# --------------------------------------------------------------------------------------------------
# Mapping.

def test_mapping_truncation_emas_and_pose_conditioning():
    M = MappingNetwork(512, 25, 512, num_ws=17)
    z, c = torch.randn(4, 512), _labels(4)
    ws = M(z, c)
    assert ws.shape == (4, 17, 512) and torch.equal(ws[:, 0], ws[:, 16])
    assert torch.equal(M.w_avg, torch.zeros(512))
    M(z, c, update_emas=True)
    torch.testing.assert_close(M.w_avg, ws[:, 0].mean(0) * (1 - 0.998))
    cut = M(z, c, truncation_psi=0.0, truncation_cutoff=14)
    torch.testing.assert_close(cut[:, :14], M.w_avg.expand(4, 14, 512))
    torch.testing.assert_close(cut[:, 14:], ws[:, 14:])
    assert not torch.allclose(M(z, _labels(4, [0.4, 0.2, 0.0, -0.2])), ws)  # the label matters
    M.pose_cond = False
    torch.testing.assert_close(M(z, c), M(z, torch.zeros_like(c)))
    G = GSGenerator(**SMALL, compat=True, bg_num_points=8)
    G.mapping_network.w_avg.normal_()
    out = G.mapping(z, c, truncation_psi=0.0)  # compat without a cutoff truncates every ws, as the official code
    torch.testing.assert_close(out, G.mapping_network.w_avg.expand(4, 17, 512))
    cut = G.mapping(z, c, truncation_psi=0.0, truncation_cutoff=14)  # the official video script's cutoff
    torch.testing.assert_close(cut[:, :14], G.mapping_network.w_avg.expand(4, 14, 512))
    assert not torch.allclose(cut[:, 14], G.mapping_network.w_avg)


# --------------------------------------------------------------------------------------------------
# End to end: gradients (through the discriminator) and serialization.

@pytest.mark.parametrize("background", [False, True])
def test_forward_backward_reaches_every_parameter(background):
    torch.manual_seed(7)
    G = GSGenerator(**SMALL, bg_num_points=500)
    _perturb_(G, 0.05)  # zero-initialised layer scales would otherwise block gradients to their branches
    z, c = torch.randn(2, 512), _labels(2)
    out = G(z, c, background=background)
    assert out["image"].shape == (2, 3, 64, 64) and out["image_depth"].shape == (2, 1, 64, 64)
    assert out["image_alpha"].shape == (2, 1, 64, 64)
    D = Discriminator(img_resolution=64, channel_max=128)
    logits, feat_pose, cam_emb = D(out["image"], c)
    loss = F.softplus(-logits).sum() + feat_pose.square().sum() + cam_emb.square().sum()
    loss = loss + out["image_depth"].mean() + out["image_alpha"].mean()
    loss.backward()
    for name, p in G.named_parameters():
        if name.startswith("background.") and not background:
            assert p.grad is None, name
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())


def test_rebuild_from_json_kwargs_and_state_dict_is_identical():
    G = GSGenerator(**SMALL, bg_num_points=100, compat=True)
    _perturb_(G, 0.05)
    G2 = GSGenerator(**json.loads(json.dumps(G.init_kwargs)))
    G2.load_state_dict(G.state_dict(), strict=True)
    z, c = torch.randn(2, 512), _labels(2)
    with torch.no_grad():
        a, b = G(z, c, neural_rendering_resolution=32), G2(z, c, neural_rendering_resolution=32)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["gaussians"].means, b["gaussians"].means)
    # compat depth: sum of w z, empty pixels replaced by the image's max depth.
    assert (a["image_depth"] > 0).all()
    empty = a["image_alpha"] == 0
    if empty.any():
        maxd = a["image_depth"].flatten(1).amax(1).view(-1, 1, 1, 1).expand_as(empty)
        torch.testing.assert_close(a["image_depth"][empty], maxd[empty])


def test_image_is_render_of_returned_gaussians():
    G = GSGenerator(**SMALL, bg_num_points=100)
    c = _labels(2)
    with torch.no_grad():
        out = G(torch.randn(2, 512), c, neural_rendering_resolution=24)
        ref = render(out["gaussians"], Cameras.from_eg3d_labels(c, 24, 24, near=0.2))
    torch.testing.assert_close(out["image"], ref.color[:, 0] * 2 - 1)
    torch.testing.assert_close(out["image_depth"], ref.depth[:, 0])
    assert out["gaussians"].num_gaussians == G.gaussian_counts()["total"]


# --------------------------------------------------------------------------------------------------
# gs_params.

@pytest.fixture(scope="module")
def small_g():
    torch.manual_seed(11)
    G = GSGenerator(**SMALL, bg_num_points=100)
    _perturb_(G, 0.05)
    return G


def _synth(G, ws, c, **gp):
    with torch.no_grad():
        return G.synthesis(ws, c, neural_rendering_resolution=16, gs_params=GSParams(**gp))


def test_gs_params_levels_anchors_and_points(small_g):
    G = small_g
    c = _labels(2)
    ws = G.mapping(torch.randn(2, 512), c)
    with torch.no_grad():
        levels, anchors = G.points(ws[:, :-1], Cameras.from_eg3d_labels(c, 16, 16).forward[:, 0])
    out = _synth(G, ws, c, res_visualize=[0], disable_background=True)
    torch.testing.assert_close(out["gaussians"].means, levels[0].means)
    assert _synth(G, ws, c, res_visualize=[0])["gaussians"].num_gaussians == 64 + 500  # background still appended

    out = _synth(G, ws, c, visualize_anchor=True, disable_background=True)
    assert out["gaussians"].num_gaussians == G.gaussian_counts()["anchors"]
    torch.testing.assert_close(out["gaussians"].means, torch.cat([a.means for a in anchors], dim=1))
    assert (out["gaussians"].opacity_logits == OPACITY_ONES_LOGIT_CLEAN).all()

    out = _synth(G, ws, c, res_visualize=[0, 1, 2], point_index=[3, 5], disable_background=True)
    expected = torch.cat([levels[l].means[:, i * 4 ** l:(i + 1) * 4 ** l] for l in range(3) for i in (3, 5)], 1)
    torch.testing.assert_close(out["gaussians"].means, expected)

    out = _synth(G, ws, c, res_visualize=[1], point_index=[5], num_init_near_point=3, disable_background=True)
    d = (G.points._xyz - G.points._xyz[5]).norm(dim=-1)
    near = d.argsort()[:3]
    assert 5 in near.tolist()
    got = out["gaussians"].means.reshape(2, 3, 4, 3)
    ref = levels[1].means.reshape(2, 64, 4, 3)
    found = [int((ref[0, :, 0] == g[0, 0]).all(-1).nonzero()[0, 0]) for g in got.unbind(1)]
    assert sorted(found) == sorted(near.tolist())

    base = _synth(G, ws, c, disable_background=True)["gaussians"].log_scales
    torch.testing.assert_close(_synth(G, ws, c, disable_background=True, rendering_scale=-1.5)["gaussians"].log_scales,
                               base - 1.5)
    with pytest.raises(ValueError, match="res_visualize"):
        _synth(G, ws, c, res_visualize=[3])


def test_gs_params_camera_cond_fixes_colour(small_g):
    G = small_g
    c = _labels(2, [-0.5, 0.5])
    ws = G.mapping(torch.randn(1, 512), c[:1]).expand(2, -1, -1)
    free = _synth(G, ws, c, disable_background=True)["gaussians"].sh
    fixed = _synth(G, ws, c, disable_background=True, camera_cond=True)["gaussians"].sh
    assert not torch.allclose(free[0], free[1])  # colour depends on the view direction ...
    torch.testing.assert_close(fixed[0], fixed[1])  # ... unless it is fixed


def test_gs_params_validation():
    with pytest.raises(ValueError, match="num_init_near_point"):
        GSParams(num_init_near_point=3)
    with pytest.raises(ValueError, match="point_index"):
        GSParams(point_index=[-1])


def test_no_background_generator():
    """bg_num_points=0 builds no background (black-background data): fewer ws, no parameters, same foreground."""
    torch.manual_seed(3)
    G = GSGenerator(**SMALL, bg_num_points=0)
    assert G.background is None and not any(n.startswith("background.") for n, _ in G.named_parameters())
    assert G.num_ws == G.points.num_ws and G.gaussian_counts()["background"] == 0
    z, c = torch.randn(2, 512), _labels(2)
    out = G(z, c)
    assert out["gaussians"].means.shape[1] == G.gaussian_counts()["foreground"]
    assert torch.isfinite(out["image"]).all()
    with pytest.raises(ValueError, match="bg_num_points"):
        GSGenerator(**SMALL, bg_num_points=-1)


def test_head_weight_init_scales_the_initial_colour_spread():
    """head_weight_init={"color": 0.1} shrinks the per-Gaussian colour spread ~10x; unknown heads are refused."""
    z, c = torch.randn(2, 512, generator=torch.Generator().manual_seed(0)), _labels(2)

    def colour_std(**kwargs):
        torch.manual_seed(5)
        G = GSGenerator(**SMALL, bg_num_points=0, **kwargs)
        with torch.no_grad():
            return G(z, c)["gaussians"].sh.std().item()

    ratio = colour_std() / colour_std(head_weight_init={"color": 0.1})
    assert 5.0 < ratio < 20.0, ratio
    with pytest.raises(ValueError, match="head_weight_init"):
        GSGenerator(**SMALL, head_weight_init={"colour": 0.1})


# --------------------------------------------------------------------------------------------------
# Inference fast paths: plain levels in row slices without autograd, the view colour term split off, cached scenes
# rendered for many cameras. Each must give what the plain computation gives.

def test_sliced_plain_levels_match_the_autograd_path(monkeypatch):
    import training.point_generator as pg

    torch.manual_seed(5)
    P = PointGenerator(num_points=16, res_end=32, channel_base=256, channel_min=16, channel_max=32,
                       num_heads=2, num_transformer_layers=1, ada_max_points_factor=1).double()
    assert P.level_ada == [False, False, False]  # both upsampling levels are plain, i.e. sliced
    _perturb_(P, 0.1)
    ws, view = torch.randn(2, P.num_ws, 512, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    ref_levels, ref_anchors = P(ws, view)  # autograd on: one slice
    monkeypatch.setattr(pg, "INFERENCE_CHUNK_ROWS", 32)  # 8 parent rows per slice: 2 and 8 slices per level
    with torch.no_grad():
        levels, anchors = P(ws, view)
    for got, ref in zip(levels + anchors, ref_levels + ref_anchors):
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
            torch.testing.assert_close(getattr(got, name), getattr(ref, name).detach(), rtol=1e-12, atol=1e-12)


def test_view_colour_term_is_a_per_level_offset(small_g):
    G = small_g
    ws = G.mapping(torch.randn(2, 512), _labels(2))[:, :G.points.num_ws]
    view = torch.nn.functional.normalize(torch.randn(2, 3), dim=-1)
    with torch.no_grad():
        seen, _ = G.points(ws, view)
        plain, _ = G.points(ws, None)
        offsets = G.points.view_color_offsets(view)
        e = G.points.view_embed(view)
    assert offsets.shape == (2, len(seen), 3) and offsets.abs().min() > 0
    for level, (a, b) in enumerate(zip(seen, plain)):
        torch.testing.assert_close(a.sh, b.sh + offsets[:, level, None, None])
        torch.testing.assert_close(a.means, b.means)
        head = G.points.render_heads[level].color  # the e-part of the colour head's weight, applied directly
        ref = e @ (head.weight[:, head.in_features - G.points.render_heads[level].view_dim:] * head.weight_gain).t()
        torch.testing.assert_close(offsets[:, level], ref)


@pytest.mark.parametrize("gp", [dict(), dict(camera_cond=True), dict(res_visualize=[1], point_index=[2]),
                                dict(visualize_anchor=True)])
def test_scene_rendered_for_many_cameras_matches_synthesis(small_g, gp):
    G = small_g
    ws = G.mapping(torch.randn(2, 512), _labels(2))
    views = torch.stack([_labels(2, [-0.4, 0.1]), _labels(2, [0.3, 0.5]), _labels(2, [0.0, -0.2])], dim=1)
    with torch.no_grad():
        scene = G.generate_scene(ws, GSParams(**gp))
        many = G.render_scene(scene, views, 16)
    assert many["image"].shape == (2, 3, 3, 16, 16) and many["image_alpha"].shape == (2, 3, 1, 16, 16)
    for v in range(3):
        one = _synth(G, ws, views[:, v], **gp)
        for key in ("image", "image_depth", "image_alpha"):
            torch.testing.assert_close(many[key][:, v], one[key], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(many["gaussians"].sh[v::3], one["gaussians"].sh)
        torch.testing.assert_close(many["gaussians"].means[v::3], one["gaussians"].means)


def test_render_scene_rejects_bad_cameras(small_g):
    with torch.no_grad():
        scene = small_g.generate_scene(small_g.mapping(torch.randn(2, 512), _labels(2)))
    for bad in (torch.zeros(3, 25), torch.zeros(2, 24), torch.zeros(2, 2, 2, 25)):
        with pytest.raises(ValueError, match=r"render_scene: c must be \[B, 25\] or \[B, V, 25\]"):
            small_g.render_scene(scene, bad)
