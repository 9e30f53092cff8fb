"""Building blocks of the GSGAN networks (training/layers.py) against straightforward reference formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from training.layers import (AdaEdgeBlock, AdaMLP, AdaNorm, Attention, EdgeConv, EqConv1x1, EqLinear, LFF,
                             LocalEdgeBlock, ModFC, ModSubpixelUpsample, PlainMLP, SubpixelUpsample,
                             TransformerLayer, knn_indices)


def _perturb_(module, std=0.3):
    """Make zero-initialised scales and every weight non-trivial so residual branches matter."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


# --------------------------------------------------------------------------------------------------
def test_eqlinear_runtime_scaling_and_init():
    layer = EqLinear(64, 32, activation="lrelu", lr_multiplier=0.01, bias_init=0.5, weight_init=2.0)
    # Stored weight ~ N(0, 1) * weight_init / lr_mult.
    assert layer.weight.std().item() == pytest.approx(2.0 / 0.01, rel=0.1)
    x = torch.randn(5, 64)
    w = layer.weight * 0.01 / math.sqrt(64)
    b = layer.bias * 0.01
    ref = F.leaky_relu(x @ w.t() + b, 0.2) * math.sqrt(2)
    torch.testing.assert_close(layer(x), ref)
    torch.testing.assert_close(b, torch.full([32], 0.5))  # effective initial bias = bias_init
    lin = EqLinear(64, 32)
    torch.testing.assert_close(lin(x), x @ (lin.weight / 8).t() + lin.bias)
    with pytest.raises(ValueError, match="activation"):
        EqLinear(3, 4, activation="tanh")


def test_eqconv1x1_matches_linear_on_channels():
    conv = EqConv1x1(6, 4, activation="lrelu")
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 6, 5, 3)  # [B, C, N, k]
    ref = F.leaky_relu(torch.einsum("oc,bcnk->bonk", conv.weight[:, :, 0, 0] / math.sqrt(6), x)
                       + conv.bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)
    torch.testing.assert_close(conv(x), ref)
    torch.testing.assert_close(conv.apply_linear(x.permute(0, 2, 3, 1)), ref.permute(0, 2, 3, 1))


def test_lff_init_and_output():
    lff = LFF(3, 256)
    assert lff.linear.weight.abs().max() <= math.sqrt(3) + 1e-6
    assert lff.linear.weight.abs().max() > 0.9 * math.sqrt(3)  # uniform over the full +-sqrt 3 range
    assert lff.linear.bias.abs().max() <= 1 / math.sqrt(3) + 1e-6
    p = torch.rand(10, 3) * 2 - 1
    torch.testing.assert_close(lff(p), torch.sin(p @ lff.linear.weight.t() + lff.linear.bias))


def test_adanorm_formula():
    norm = AdaNorm(8, 16)
    x, w = torch.randn(3, 20, 8) * 5 + 2, torch.randn(3, 16)
    mean = x.mean(1, keepdim=True)
    std = ((x - mean) ** 2).mean(1, keepdim=True).sqrt()
    gamma = w @ (norm.gamma.weight / 4).t() + 1.0
    beta = w @ (norm.beta.weight / 4).t()
    ref = (x - mean) / (std + 1e-8) * gamma[:, None] + beta[:, None]
    torch.testing.assert_close(norm(x, w), ref, rtol=1e-4, atol=1e-5)


def test_attention_per_head_qkv_interleaving():
    torch.manual_seed(1)
    attn = Attention(32, 4).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    qkv = attn.qkv(x)  # [B, N, 96]: head h owns channels [24h, 24h + 24) = q | k | v
    heads = []
    for h in range(4):
        q, k, v = (qkv[..., 24 * h + 8 * i: 24 * h + 8 * (i + 1)] for i in range(3))
        a = torch.softmax((q * 8 ** -0.25) @ (k * 8 ** -0.25).transpose(1, 2), dim=-1)
        heads.append(a @ v)
    ref = attn.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x), ref)  # float64: explicit path
    attn32 = attn.float()
    torch.testing.assert_close(attn32(x.float()), ref.float(), rtol=1e-4, atol=1e-5)  # SDPA path


def test_zero_layer_scales_make_residual_blocks_identities():
    x, w = torch.randn(2, 16, 8), torch.randn(2, 12)
    torch.testing.assert_close(TransformerLayer(8, 2, 12)(x, w, w), x)
    torch.testing.assert_close(AdaMLP(8, 12)(x, w), x)
    torch.testing.assert_close(PlainMLP(8)(x), x)
    torch.testing.assert_close(AdaEdgeBlock(8, 12, k=4)(x, w), x)
    torch.testing.assert_close(LocalEdgeBlock(8, 4)(x), x)
    block = AdaMLP(8, 12)
    _perturb_(block)
    assert not torch.allclose(block(x, w), x)  # the check above can fail


def test_knn_indices_drop_self():
    h = torch.randn(2, 30, 5)
    idx = knn_indices(h, 4)
    dist = torch.cdist(h, h)
    ref = dist.argsort(dim=-1)[..., 1:5]
    assert torch.equal(idx.sort(-1).values, ref.sort(-1).values)
    assert not (idx == torch.arange(30).view(1, 30, 1)).any()


def _edge_conv_reference(edge: EdgeConv, h, neighbours):
    """Per-edge 1x1 convolutions on the [B, 2C, L, k] edge tensor, as the spec states them."""
    center = h.unsqueeze(2).expand_as(neighbours)
    delta = (neighbours - center).permute(0, 3, 1, 2)
    feat = torch.cat([center.permute(0, 3, 1, 2), delta], dim=1)
    weight = torch.softmax(edge.weight2(edge.weight1(delta)), dim=-1)
    value = edge.value2(edge.value1(feat))
    return (value * weight).sum(-1).transpose(1, 2)


def test_edge_blocks_match_per_edge_reference():
    torch.manual_seed(2)
    x, w = torch.randn(2, 12, 6, dtype=torch.float64), torch.randn(2, 10, dtype=torch.float64)
    block = AdaEdgeBlock(6, 10, k=3).double()
    _perturb_(block)
    h = block.norm(x, w)
    idx = torch.cdist(h, h).argsort(-1)[..., 1:4]
    neighbours = torch.stack([h[b][idx[b]] for b in range(2)])
    ref = x + _edge_conv_reference(block.edge, h, neighbours) * block.scale(w)
    torch.testing.assert_close(block(x, w), ref)

    local = LocalEdgeBlock(6, group_size=4).double()
    _perturb_(local)
    groups = torch.stack([x[:, (i // 4) * 4:(i // 4) * 4 + 4] for i in range(12)], dim=1)  # siblings, self incl.
    ref = x + _edge_conv_reference(local.edge, x, groups) * local.scale
    torch.testing.assert_close(local(x), ref)
    # A point only sees its own group.
    y = x.clone()
    y[:, 4:8] += 1.0
    out_x, out_y = local(x), local(y)
    torch.testing.assert_close(out_x[:, :4], out_y[:, :4])
    torch.testing.assert_close(out_x[:, 8:], out_y[:, 8:])


def test_edge_conv_gradcheck():
    edge = EdgeConv(4).double()
    h = torch.randn(1, 8, 4, dtype=torch.float64, requires_grad=True)
    idx = knn_indices(h, 3)
    fn = lambda t: edge(t, lambda u: torch.stack([u[0][idx[0]]]))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h,))


def test_subpixel_upsample_layout():
    up = SubpixelUpsample(6, 4, ratio=3)
    x = torch.randn(2, 5, 6)
    out = up(x)
    assert out.shape == (2, 15, 4)
    u = up.up(x)  # [B, L, 3 * 4]
    s = up.skip(x)
    for l in range(5):
        for j in range(3):
            torch.testing.assert_close(out[:, 3 * l + j], (u[:, l, 4 * j:4 * j + 4] + s[:, l]) / math.sqrt(2))
    same = SubpixelUpsample(4, 4, ratio=2)
    assert same.skip is None
    y = torch.randn(1, 3, 4)
    torch.testing.assert_close(same(y)[:, 1], (same.up(y)[:, 0, 4:] + y[:, 0]) / math.sqrt(2))


def test_modfc_formulas():
    torch.manual_seed(3)
    x, w = torch.randn(2, 9, 6), torch.randn(2, 5)
    demod = ModFC(6, 4, 5, activation="lrelu", demodulate=True)
    with torch.no_grad():
        demod.bias.normal_()
    s = demod.affine(w)
    torch.testing.assert_close(demod.affine.bias, torch.ones(6))
    wt = demod.weight[None] * s[:, None]  # [B, out, in]
    y = torch.einsum("bni,boi->bno", x, wt) / wt.square().sum(-1).add(1e-8).sqrt()[:, None]
    ref = (F.leaky_relu(y + demod.bias, 0.2) * math.sqrt(2)).clamp(-256, 256)
    torch.testing.assert_close(demod(x, w), ref, rtol=1e-4, atol=1e-5)

    plain = ModFC(6, 3, 5, demodulate=False, weight_init=0.01)
    assert plain.weight.std().item() == pytest.approx(0.01, rel=0.5)
    ref = (x * plain.affine(w)[:, None] / math.sqrt(6)) @ plain.weight.t() + plain.bias
    torch.testing.assert_close(plain(x, w), ref)

    res = ModFC(6, 6, 5, activation="lrelu", residual=True)
    torch.testing.assert_close(res.residual_scale, torch.full([6], 0.01))
    base = ModFC(6, 6, 5, activation="lrelu")
    base.load_state_dict({k: v for k, v in res.state_dict().items() if k != "residual_scale"})
    torch.testing.assert_close(res(x, w), base(x, w) * 0.01 + x)
    big = ModFC(6, 3, 5, demodulate=False)
    torch.testing.assert_close(big(x * 1e6, w).abs().max(), torch.tensor(256.0))  # clamp
    with pytest.raises(ValueError, match="residual"):
        ModFC(6, 4, 5, residual=True)


def test_mod_subpixel_upsample():
    up = ModSubpixelUpsample(4, 5, ratio=4)
    x, w = torch.randn(2, 3, 4), torch.randn(2, 5)
    out = up(x, w)
    u = up.up(x, w)
    torch.testing.assert_close(out[:, 4 * 2 + 3], (u[:, 2, 12:16] + x[:, 2]) / math.sqrt(2))


def test_fused_gaussian_heads_match_separate_layers():
    from training.point_generator import GaussianHeads

    heads = GaussianHeads(16, view_dim=4)
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_()
    x, e = torch.randn(2, 7, 16), torch.randn(2, 4)
    out = heads(x, e)
    for name in ("xyz", "scale", "rotation", "opacity"):
        torch.testing.assert_close(out[name], getattr(heads, name)(x))
    torch.testing.assert_close(out["color"], heads.color(torch.cat([x, e[:, None].expand(2, 7, 4)], -1)))
    plain = GaussianHeads(16)
    torch.testing.assert_close(plain(x)["color"], plain.color(x))
    fresh = GaussianHeads(64, view_dim=4)  # the heads' weight_init: N(0, 1) times 0.1 (scale, rotation) or 1
    assert fresh.scale.weight.std().item() == pytest.approx(0.1, rel=0.3)
    assert fresh.xyz.weight.std().item() == pytest.approx(1.0, rel=0.3)
    assert (fresh.opacity.bias == 0).all()


def test_folded_gains_match_the_layers_applied_one_by_one():
    """The fused forwards (gains folded into the next weight, broadcast skips) against the modules' own forwards."""
    torch.manual_seed(7)
    x, w = torch.randn(2, 8, 6, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    plain = PlainMLP(6).double()
    ada = AdaMLP(6, 5).double()
    _perturb_(plain)
    _perturb_(ada)
    torch.testing.assert_close(plain(x), x + plain.mlp.fc2(plain.mlp.fc1(x)) * plain.scale)
    torch.testing.assert_close(ada(x, w), x + ada.mlp.fc2(ada.mlp.fc1(ada.norm(x, w))) * ada.scale(w))


def test_plain_level_layers_gradcheck():
    """LocalEdgeBlock (broadcast sibling groups), SubpixelUpsample and PlainMLP: gradients of input and weights."""
    torch.manual_seed(8)
    edge, up, mlp = LocalEdgeBlock(4, group_size=2).double(), SubpixelUpsample(4, 6, ratio=2).double(), \
        PlainMLP(6).double()
    for m in (edge, up, mlp):
        _perturb_(m)
    x = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    params = [edge.edge.weight1.weight, edge.scale, up.up.weight, up.skip.bias, mlp.mlp.fc2.weight, mlp.scale]

    def fn(x, *p):
        return mlp(up(edge(x)))

    assert torch.autograd.gradcheck(fn, (x, *params))
