"""reconstruction.encoder: output layout, gradients through a render, the Gaussian adapter's rules, SH rotation,
presets and the errors for bad input."""
import json
import math

import pytest
import torch

from reconstruction.encoder import ENCODER_PRESETS, CostVolumeEncoder, EncoderError, build_encoder, rotate_sh
from reconstruction.encoder.gaussian_head import adapt_gaussians, raw_channels, scale_multiplier
from reconstruction.geometry import project
from reconstruction.views import to_cameras
from splatting import render
from splatting.cameras import look_at
from splatting.projection import quat_to_rotmat
from splatting.sh import sh_basis
from torch_utils.misc import count_parameters

RE10K_PARAMETERS = 11_940_997  # our exact count for the re10k preset (the MVSplat paper reports 12.0 M)


def make_views(b, v, h, w, seed=0, near=1.0, far=50.0):
    """Views of cameras on a short horizontal line looking down +z, with random images."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.stack([torch.tensor([0.25 * i - 0.125 * (v - 1), 0.05 * i, 0.0]) for i in range(v)])
    c2w = look_at(origins, origins + torch.tensor([0.02, 0.0, 5.0]), up=(0.0, -1.0, 0.0))
    k = torch.tensor([[0.9, 0, 0.5], [0, 0.9 * w / h, 0.48], [0, 0, 1]])
    return dict(image=torch.rand(b, v, 3, h, w, generator=g), intrinsics=k.expand(b, v, 3, 3).clone(),
                extrinsics=c2w.expand(b, v, 4, 4).clone(), near=torch.full((b, v), near),
                far=torch.full((b, v), far), index=torch.arange(v).expand(b, v).clone())


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_encoder("small")


@pytest.mark.parametrize("views, height, width", [(2, 32, 32), (3, 32, 32), (2, 24, 40)])
def test_output_layout(small, views, height, width):
    context = make_views(2, views, height, width)
    with torch.no_grad():
        out = small(context)
    n = small.gaussians_per_scene(views, height, width)
    assert n == views * height * width
    g = out.gaussians
    assert g.means.shape == (2, n, 3) and g.log_scales.shape == (2, n, 3) and g.quats.shape == (2, n, 4)
    assert g.opacity_logits.shape == (2, n) and g.sh.shape == (2, n, (small.sh_degree + 1) ** 2, 3)
    assert out.features.shape == (2, views, small.feature_dim, height, width)
    assert out.depth.shape == (2, views, 1, height, width)
    assert out.confidence.shape == (2, views, 1, height // 4, width // 4)
    assert out.disparity_probs.shape == (2, views, small.num_candidates, height // 4, width // 4)
    g.validate()
    # Gaussian v*H*W + y*W + x sits on the ray of pixel (x, y) of view v, at that pixel's depth.
    means = g.means.reshape(2, views, height * width, 3)
    uv, z = project(means, context["intrinsics"], context["extrinsics"], width, height)
    torch.testing.assert_close(z, out.depth.reshape(2, views, -1), rtol=1e-4, atol=1e-4)
    pixel = torch.stack(torch.meshgrid(torch.arange(width) + 0.5, torch.arange(height) + 0.5, indexing="xy"), -1)
    assert ((uv - pixel.reshape(-1, 2)).abs() <= 0.5 + 1e-3).all()  # sub-pixel offsets stay within the pixel


def test_initialization_is_sensible(small):
    """Opacities ~0.7, depths spread inside [near, far], scales about the pixel footprint."""
    context = make_views(2, 2, 32, 32, near=1.0, far=50.0)
    with torch.no_grad():
        out = small(context)
    opacities = out.gaussians.opacities()
    assert 0.5 < float(opacities.min()) and float(opacities.max()) < 0.9
    assert float(out.depth.min()) >= 1.0 - 1e-4 and float(out.depth.max()) <= 50.0 + 1e-3
    assert float(out.depth.std()) > 0.1
    footprint = out.depth.reshape(2, -1) / (0.9 * 32)  # pixel size at the Gaussian's depth
    ratio = out.gaussians.scales().mean(-1) / footprint
    assert 0.3 < float(ratio.median()) < 5


def test_gradients_reach_the_backbone_through_a_render(small):
    small.zero_grad()
    context = make_views(1, 2, 32, 32)
    target = make_views(1, 2, 32, 32, seed=1)
    out = small(context)
    image = render(out.gaussians, to_cameras(target), backend="reference").color
    loss = ((image - target["image"]) ** 2).mean()
    loss.backward()
    stem = small.backbone.stem[0].weight.grad
    assert stem is not None and torch.isfinite(stem).all() and stem.abs().sum() > 0
    missing = [name for name, p in small.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    small.zero_grad()


def test_transformer_windows_match_full_attention_shapes():
    """attn_splits 2 (with shifted windows on the second layer) runs for V = 3 and keeps the map size."""
    from reconstruction.encoder.transformer import MultiViewTransformer
    net = MultiViewTransformer(channels=16, num_layers=2, num_heads=2, attn_splits=2)
    x = torch.randn(1, 3, 16, 8, 12)
    y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_shifted_window_mask_blocks_wrapped_tokens():
    """A token may attend only to tokens that were its spatial neighbours before the roll."""
    from reconstruction.encoder.transformer import Windows
    win = Windows(8, 8, 2, shifted=True, device="cpu")
    coords = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij"), -1).float()
    parts = win.split(coords[None, None])                        # [4, 16, 2] original (row, col) of each token
    mask = win.attention_mask(1, 1, 1)[:, 0]                     # [4, 16, 16]
    distance = (parts[:, :, None, :] - parts[:, None, :, :]).abs().amax(-1)
    assert torch.equal(mask, distance < 4)                       # window of 4: wrapped tokens are >= 4 apart
    round_trip = win.merge(parts, 1, 1)
    assert torch.equal(round_trip[0, 0], coords)


def test_adapter_scale_rule_depth_and_offsets():
    """Raw zeros: the Gaussian sits at the pixel centre at exactly the given depth, with scale
    (0.5 + 14.5 / 2) * depth * 0.1 * (1/fx + 1/fy) and the camera's rotation."""
    h, w = 4, 6
    views = make_views(1, 2, h, w)
    k, c2w = views["intrinsics"], views["extrinsics"]
    depth = 2 + torch.rand(1, 2, 1, h, w)
    raw = torch.zeros(1, 2, raw_channels(0), h, w)
    raw[:, :, 5] = 1.0  # quaternion (1, 0, 0, 0): identity in camera space
    g = adapt_gaussians(raw, depth, torch.zeros(1, 2, 1, h, w), k, c2w, sh_degree=0)
    uv, z = project(g.means.reshape(1, 2, h * w, 3), k, c2w, w, h)
    torch.testing.assert_close(z, depth.reshape(1, 2, -1))
    pixel = torch.stack(torch.meshgrid(torch.arange(w) + 0.5, torch.arange(h) + 0.5, indexing="xy"), -1)
    torch.testing.assert_close(uv, pixel.reshape(-1, 2).expand(1, 2, -1, 2), atol=1e-4, rtol=0)
    fx, fy = k[0, 0, 0, 0] * w, k[0, 0, 1, 1] * h
    expected = 7.75 * depth.reshape(1, 2, -1) * 0.1 * (1 / fx + 1 / fy)
    torch.testing.assert_close(g.scales(), expected[..., None].expand(1, 2, h * w, 3).reshape(1, -1, 3))
    torch.testing.assert_close(scale_multiplier(k, w, h), 0.1 * (1 / fx + 1 / fy).expand(1, 2))
    rot = quat_to_rotmat(g.quats).reshape(1, 2, h * w, 3, 3)
    torch.testing.assert_close(rot, c2w[:, :, None, :3, :3].expand_as(rot), atol=1e-6, rtol=0)
    # Offsets: sigmoid(raw) - 0.5 pixels; the largest raw values move the mean by almost half a pixel.
    raw[:, :, 0], raw[:, :, 1] = 20.0, -20.0
    g = adapt_gaussians(raw, depth, torch.zeros(1, 2, 1, h, w), k, c2w, sh_degree=0)
    uv, z = project(g.means.reshape(1, 2, h * w, 3), k, c2w, w, h)
    torch.testing.assert_close(z, depth.reshape(1, 2, -1))
    torch.testing.assert_close(uv - pixel.reshape(-1, 2), torch.tensor([0.5, -0.5]).expand_as(uv), atol=1e-4, rtol=0)


def test_adapter_rotates_camera_space_quaternions():
    views = make_views(1, 2, 2, 2)
    raw = torch.zeros(1, 2, raw_channels(0), 2, 2)
    q_cam = torch.tensor([0.3, -0.5, 0.2, 0.8])
    raw[:, :, 5:9] = q_cam[None, None, :, None, None]
    g = adapt_gaussians(raw, torch.full((1, 2, 1, 2, 2), 3.0), torch.zeros(1, 2, 1, 2, 2), views["intrinsics"],
                        views["extrinsics"], sh_degree=0)
    expected = views["extrinsics"][0, :, :3, :3] @ quat_to_rotmat(q_cam)
    torch.testing.assert_close(quat_to_rotmat(g.quats).reshape(2, 4, 3, 3), expected[:, None].expand(2, 4, 3, 3),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_rotate_sh_colour_at_rotated_direction_is_unchanged(degree):
    g = torch.Generator().manual_seed(degree)
    rot = quat_to_rotmat(torch.randn(5, 4, generator=g, dtype=torch.float64))
    sh = torch.randn(5, (degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(5, 20, 3, generator=g, dtype=torch.float64), dim=-1)
    rotated = rotate_sh(sh, rot)
    before = torch.einsum("bdk,bkc->bdc", sh_basis(degree, dirs), sh)
    after = torch.einsum("bdk,bkc->bdc", sh_basis(degree, dirs @ rot.transpose(1, 2)), rotated)
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(rotate_sh(sh, torch.eye(3, dtype=torch.float64).expand(5, 3, 3)), sh)
    assert torch.equal(rotated[:, 0], sh[:, 0])


def test_rotate_sh_float32_and_broadcast():
    g = torch.Generator().manual_seed(7)
    rot = quat_to_rotmat(torch.randn(2, 1, 4, generator=g))
    sh = torch.randn(2, 10, 16, 3, generator=g)
    out = rotate_sh(sh, rot)  # rot [2, 1, 3, 3] broadcasts over the 10 Gaussians
    assert out.shape == sh.shape and out.dtype == torch.float32
    reference = rotate_sh(sh.double(), rot.double().expand(2, 10, 3, 3))
    torch.testing.assert_close(out.double(), reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="K = 1, 4, 9 or 16"):
        rotate_sh(torch.zeros(2, 5, 3), torch.eye(3))


def test_re10k_parameter_count_and_small_forward():
    torch.manual_seed(0)
    model = build_encoder("re10k")
    count = count_parameters(model)
    print(f"re10k encoder parameters: {count:,}")
    assert count == RE10K_PARAMETERS
    assert abs(count - 12.0e6) / 12.0e6 < 0.01  # within 1% of the size the MVSplat paper reports
    assert model.feature_dim == 163
    assert model.gaussians_per_scene(2, 256, 256) == 131_072
    with torch.no_grad():
        out = model(make_views(1, 2, 64, 64))
    assert out.features.shape == (1, 2, 163, 64, 64) and out.gaussians.sh.shape == (1, 2 * 64 * 64, 16, 3)
    out.gaussians.validate()


def test_init_kwargs_rebuild_the_same_module(small):
    kwargs = json.loads(json.dumps(small.init_kwargs))
    clone = CostVolumeEncoder(**kwargs)
    clone.load_state_dict(small.state_dict(), strict=True)
    context = make_views(1, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(clone(context).gaussians.means, small(context).gaussians.means)


def test_presets_and_overrides():
    assert set(ENCODER_PRESETS) == {"re10k", "small"}
    model = build_encoder("small", sh_degree=0, num_candidates=8)
    assert model.sh_degree == 0 and model.num_candidates == 8
    with pytest.raises(EncoderError, match="unknown name 'huge'; valid: re10k, small"):
        build_encoder("huge")
    with pytest.raises(EncoderError, match="unknown key.*depth_planes.*valid: num_candidates"):
        build_encoder("small", depth_planes=3)
    with pytest.raises(EncoderError, match="sh_degree"):
        build_encoder("small", sh_degree=4)
    with pytest.raises(EncoderError, match="num_heads: 3 attention heads do not divide the 64 channels"):
        build_encoder("small", transformer_heads=3)
    for key, value in (("num_candidates", 1), ("attn_splits", 0), ("initial_opacity", 1.0)):
        with pytest.raises(EncoderError, match=key):
            build_encoder("small", **{key: value})


def _broken(field, value):
    views = make_views(1, 2, 16, 16)
    views[field] = value
    return views


@pytest.mark.parametrize("context, match", [
    ([1, 2], "expected a dict"),
    ({k: v for k, v in make_views(1, 2, 16, 16).items() if k != "far"}, "missing field.*far"),
    (_broken("image", torch.rand(1, 2, 1, 16, 16)), r"context.image: expected shape \[B, V, 3, H, W\]"),
    (make_views(1, 1, 16, 16), "at least 2 views"),
    (make_views(1, 2, 18, 16), "multiples of 4"),
    (_broken("intrinsics", torch.eye(3).expand(1, 3, 3, 3)), r"context.intrinsics: expected shape \[1, 2, 3, 3\]"),
    (_broken("near", torch.full((1, 2), 60.0)), "near < far"),
])
def test_bad_context_raises_one_line_errors(small, context, match):
    with pytest.raises(EncoderError, match=match):
        small(context)


def test_window_splits_require_matching_image_size():
    model = build_encoder("small", attn_splits=2)
    with pytest.raises(EncoderError, match="multiples of 8"):
        model(make_views(1, 2, 20, 16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    model = build_encoder("small").cuda()
    context = {k: v.cuda() for k, v in make_views(2, 3, 32, 48).items()}
    out = model(context)
    out.gaussians.opacity_logits.mean().backward()
    assert out.gaussians.device.type == "cuda" and torch.isfinite(out.gaussians.means).all()
