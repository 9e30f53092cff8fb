"""Discriminator: shapes, parameter counts, FIR down-sampling against a scipy reference, minibatch std,
gradients, independence of the logits from the label, rebuild from JSON kwargs."""
import json

import numpy as np
import pytest
import scipy.signal
import torch

from training.conv_layers import EqConv2d, MinibatchStd, bias_act, blur_filter_2d
from training.discriminator import Discriminator

SMALL = dict(img_resolution=32, channel_base=512, channel_max=32, cam_hidden=32, pose_feat_dim=16)


def _labels(batch, seed=0):
    return torch.randn(batch, 25, generator=torch.Generator().manual_seed(seed))


def _count(module):
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------- building blocks

def _reference_down_conv(x, w, b, kernel_size):
    """numpy/scipy: zero pad, 2D [1,3,3,1] blur, then a strided valid cross-correlation; one image, all channels."""
    f = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    pad = kernel_size // 2 + 1 if kernel_size > 1 else 1
    blurred = []
    for ch in x:
        xp = np.pad(ch, pad)
        blurred.append(scipy.signal.convolve2d(xp, f, mode="valid"))
    blurred = np.stack(blurred)
    if kernel_size == 1:
        blurred = blurred[:, ::2, ::2]
    out = []
    for o in range(w.shape[0]):
        acc = sum(scipy.signal.correlate2d(blurred[i], w[o, i], mode="valid") for i in range(w.shape[1]))
        if kernel_size > 1:
            acc = acc[::2, ::2]
        out.append(acc + (b[o] if b is not None else 0.0))
    return np.stack(out)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_down_conv_matches_scipy_reference(kernel_size):
    torch.manual_seed(1)
    conv = EqConv2d(3, 2, kernel_size, bias=True, down=2).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    out = conv(x)
    assert out.shape == (1, 2, 4, 4)
    w = (conv.weight * conv.weight_gain).detach().numpy()
    ref = _reference_down_conv(x[0].numpy(), w, conv.bias.detach().numpy(), kernel_size)
    np.testing.assert_allclose(out[0].detach().numpy(), ref, rtol=1e-12, atol=1e-12)


def test_blur_filter_and_equalized_gain():
    f = blur_filter_2d()
    assert f.shape == (4, 4) and torch.isclose(f.sum(), torch.tensor(1.0))
    assert torch.allclose(f[0], torch.tensor([1.0, 3.0, 3.0, 1.0]) / 64)
    conv = EqConv2d(16, 8, 3)
    assert conv.weight_gain == pytest.approx(1 / np.sqrt(16 * 9))
    # Unit-variance input -> roughly unit-variance output (equalized learning rate).
    y = conv(torch.randn(8, 16, 16, 16))
    assert 0.7 < y[:, :, 1:-1, 1:-1].std().item() < 1.3


def test_bias_act_lrelu_gain_and_clamp():
    x = torch.tensor([-2.0, 0.5, 300.0])
    y = bias_act(x[None, :, None, None], None, "lrelu", gain=0.5, clamp=256 * 0.5)
    expect = torch.tensor([-2.0 * 0.2, 0.5, 300.0]) * np.sqrt(2) * 0.5
    expect = expect.clamp(-128, 128)
    assert torch.allclose(y.flatten(), expect)
    with pytest.raises(ValueError, match="activation"):
        bias_act(x, None, "relu")


def test_minibatch_std_reference_and_grouping():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 3, 3, dtype=torch.float64)
    layer = MinibatchStd(group_size=4, num_channels=2)
    y = layer(x)
    assert y.shape == (8, 8, 3, 3)
    assert torch.equal(y[:, :6], x)
    # Reference: group of sample i = {i % 2, i % 2 + 2, ...}; per channel slice, mean over (c, h, w) of the std.
    for i in range(8):
        members = x[i % 2::2]
        std = (members.var(dim=0, unbiased=False) + 1e-8).sqrt()
        for f in range(2):
            expect = std[3 * f:3 * (f + 1)].mean()
            assert torch.allclose(y[i, 6 + f], expect.expand(3, 3))


def test_minibatch_std_identical_images_and_divisibility():
    img = torch.randn(1, 4, 4, 4).repeat(4, 1, 1, 1)
    y = MinibatchStd(4, 1)(img)
    assert torch.allclose(y[:, 4], torch.full((4, 4, 4), 1e-4), atol=1e-6)  # sqrt(0 + 1e-8)
    with pytest.raises(ValueError, match="must divide the batch size 6"):
        MinibatchStd(4, 1)(torch.randn(6, 4, 4, 4))
    assert MinibatchStd(4, 1)(torch.randn(2, 4, 4, 4)).shape == (2, 5, 4, 4)   # group min(4, 2) = 2
    assert MinibatchStd(None, 1)(torch.randn(6, 4, 4, 4)).shape == (6, 5, 4, 4)  # whole batch


# ----------------------------------------------------------------------------------------------- discriminator

@pytest.mark.parametrize("res", [256, 512])
def test_parameter_count_matches_reference(res):
    # expected: parameters of the authors' released discriminator (their code instantiated with the official
    # 256 / 512 script options and counted; docs/model.md); exact: ours, the same architecture.
    expected = {256: 38.12e6, 512: 38.24e6}[res]
    exact = {256: 38_119_681, 512: 38_238_401}[res]
    n = _count(Discriminator(res))
    assert abs(n - expected) / expected < 0.01
    assert n == exact


@pytest.mark.parametrize("res,kwargs", [(32, dict(channel_max=128)), (64, dict(channel_max=128))])
def test_shapes_small_resolutions(res, kwargs):
    D = Discriminator(res, **kwargs)
    logits, feat_pose, cam_emb = D(torch.randn(4, 3, res, res), _labels(4))
    assert logits.shape == (4, 1) and feat_pose.shape == (4, 64) and cam_emb.shape == (4, 64)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in (logits, feat_pose, cam_emb))
    assert D.block_resolutions == [2 ** i for i in range(int(np.log2(res)), 2, -1)]
    assert D.b8_pose.conv0.weight.shape == D.b8.conv0.weight.shape


def test_channel_layout_256():
    D = Discriminator(256)
    assert D.b256.fromrgb.weight.shape == (128, 3, 1, 1)
    assert D.b256.conv1.weight.shape == (256, 128, 3, 3)
    assert D.b128.conv1.weight.shape == (512, 256, 3, 3)
    assert D.b128.skip.bias is None and not hasattr(D.b128, "fromrgb")
    assert D.b4.conv.weight.shape == (512, 513, 3, 3)
    assert D.b4.fc.weight.shape == (512, 8192) and D.b4.out.weight.shape == (1, 512)
    assert D.pose_fc.weight.shape == (512, 8192) and D.pose_out.weight.shape == (64, 512)
    assert D.cam_fc.weight.shape == (512, 25) and D.cam_out.weight.shape == (64, 512)
    assert D.fp16_resolution == 32 and Discriminator(512, channel_max=64).fp16_resolution == 64
    assert [r for r in D.block_resolutions if getattr(D, f"b{r}").use_fp16] == [256, 128, 64, 32]


def test_gradients_reach_every_parameter_and_input():
    D = Discriminator(**SMALL)
    img = torch.randn(4, 3, 32, 32, requires_grad=True)
    c = _labels(4).requires_grad_(True)
    logits, feat_pose, cam_emb = D(img, c)
    (logits.sum() + feat_pose.square().sum() + cam_emb.square().sum()).backward()
    for name, p in D.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert img.grad.abs().sum() > 0 and c.grad.abs().sum() > 0


def test_label_only_feeds_the_camera_encoder():
    D = Discriminator(**SMALL)
    img = torch.randn(4, 3, 32, 32)
    out1 = D(img, _labels(4, seed=1))
    out2 = D(img, _labels(4, seed=2))
    assert torch.equal(out1[0], out2[0])          # logits: unconditional
    assert torch.equal(out1[1], out2[1])          # feat_pose: from the image only
    assert not torch.allclose(out1[2], out2[2])   # cam_emb: from the label
    img2 = img.clone()
    img2[0] += 1.0
    out3 = D(img2, _labels(4, seed=1))
    assert torch.equal(out3[2], out1[2])          # cam_emb does not see the image
    assert not torch.allclose(out3[1][0], out1[1][0])


def test_deterministic_and_json_rebuild():
    torch.manual_seed(3)
    D1 = Discriminator(**SMALL)
    torch.manual_seed(3)
    D2 = Discriminator(**SMALL)
    img, c = torch.randn(2, 3, 32, 32), _labels(2)
    for a, b in zip(D1(img, c), D2(img, c)):
        assert torch.equal(a, b)
    kwargs = json.loads(json.dumps(D1.init_kwargs))
    D3 = Discriminator(**kwargs)
    D3.load_state_dict(D1.state_dict(), strict=True)
    for a, b in zip(D1(img, c), D3(img, c)):
        assert torch.equal(a, b)
    assert not any("resample_filter" in k for k in D1.state_dict())  # constant filters are not checkpointed


def test_clear_errors():
    D = Discriminator(**SMALL)
    with pytest.raises(ValueError, match=r"img must be \[B, 3, 32, 32\]"):
        D(torch.randn(2, 3, 64, 64), _labels(2))
    with pytest.raises(ValueError, match=r"c must be \[B=2, 25\]"):
        D(torch.randn(2, 3, 32, 32), torch.randn(2, 16))
    with pytest.raises(ValueError, match="group size 4 must divide the batch size 6"):
        D(torch.randn(6, 3, 32, 32), _labels(6))
    with pytest.raises(ValueError, match="img_resolution must be a power of two"):
        Discriminator(48)
    with pytest.raises(ValueError, match="architecture"):
        Discriminator(32, architecture="skip")


def test_orig_architecture_has_no_skip():
    D = Discriminator(**SMALL, architecture="orig")
    assert not hasattr(D.b32, "skip")
    logits, _, _ = D(torch.randn(2, 3, 32, 32), _labels(2))
    assert logits.shape == (2, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_blocks_close_to_fp32_on_cuda():
    D = Discriminator(64, channel_max=128, num_fp16_res=2).cuda()
    img, c = torch.randn(4, 3, 64, 64, device="cuda"), _labels(4).cuda()
    mixed = D(img, c)
    full = D(img, c, force_fp32=True)
    assert all(t.dtype == torch.float32 for t in mixed)
    for a, b in zip(mixed, full):
        assert torch.allclose(a, b, rtol=0.05, atol=0.05)
