"""The rasterizer backend is chosen at render time: never saved in snapshots, old snapshots that carry it load,
per-call > G.backend > GSGAN_BACKEND > auto, and a model saved while rendering with one backend renders with
another (reference vs cpu here)."""
import pytest
import torch

import splatting.backends.cpu as cpu_backend
import splatting.backends.reference as reference_backend
from splatting.backends import unavailable_reason
from torch_utils import checkpoint
from training.discriminator import Discriminator
from training.generator import MAX_GAUSSIANS_PER_SAMPLE, GSGenerator
from training import video_utils as vu

TINY_G = dict(img_resolution=16, z_dim=16, w_dim=16, num_points=16, res_end=16, channel_base=64, channel_min=16,
              channel_max=16, num_heads=2, num_transformer_layers=1, knn_k=4, view_dim=8, const_pe_length=16,
              bg_num_points=32, bg_channels=16)
needs_cpu = pytest.mark.skipif(unavailable_reason("cpu") is not None, reason="C++ cpu backend not built here")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    return GSGenerator(**TINY_G).eval().requires_grad_(False)


def _inputs(G, batch=2):
    ws = vu.compute_ws(G, list(range(batch)), vu.CAMERA_PRESETS["ffhq"])
    c = vu.trajectory_labels("orbit", batch, vu.CAMERA_PRESETS["ffhq"])
    return ws, c


@pytest.fixture
def calls(monkeypatch):
    """Counts the rasterize() calls each backend receives."""
    counts = {"reference": 0, "cpu": 0}
    for name, module in (("reference", reference_backend), ("cpu", cpu_backend)):
        original = module.rasterize

        def counting(*args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, "rasterize", counting)
    return counts


def test_backend_is_not_part_of_the_model(G):
    assert G.backend == "auto" and "rendering_backend" not in G.init_kwargs
    legacy = GSGenerator(**TINY_G, rendering_backend="gsplat")  # what old snapshots pass: accepted, ignored
    assert legacy.backend == "auto" and legacy.init_kwargs == G.init_kwargs


def test_old_snapshot_record_with_a_backend_loads_and_renders_here(G, calls, monkeypatch):
    monkeypatch.delenv("GSGAN_BACKEND", raising=False)
    record = checkpoint.module_record(G)
    record["init_kwargs"]["rendering_backend"] = "gsplat"  # trained on CUDA: no gsplat on this machine
    loaded = checkpoint.build_module(record, what="G_ema")
    assert loaded.backend == "auto"
    ws, c = _inputs(G)
    out = loaded.synthesis(ws, c, backend="reference")
    assert torch.equal(out["image"], G.synthesis(ws, c, backend="reference")["image"])
    assert calls["reference"] == 2


@needs_cpu
def test_saved_while_rendering_with_reference_renders_with_cpu(G, tmp_path, calls):
    trained = GSGenerator(**TINY_G).eval().requires_grad_(False)
    trained.load_state_dict(G.state_dict())
    trained.backend = "reference"
    ws, c = _inputs(G)
    expected = trained.synthesis(ws, c)
    assert calls == {"reference": 1, "cpu": 0}
    D = Discriminator(img_resolution=16, channel_base=64, channel_max=16, cam_hidden=16, pose_feat_dim=8,
                      num_fp16_res=0)
    path = checkpoint.save_snapshot(str(tmp_path / "network-snapshot-000000.pt"),
                                    {"G": trained, "D": D, "G_ema": trained})
    loaded = checkpoint.load_snapshot(path)["G_ema"]
    assert loaded.backend == "auto"  # the training-time choice did not travel with the weights
    loaded.backend = "cpu"
    got = loaded.synthesis(ws, c)
    assert calls == {"reference": 1, "cpu": 1}
    # The two rasterizers agree to float32 rounding on these small scenes (the parity suite's bound is 1e-4).
    for key in ("image", "image_alpha", "image_depth"):
        assert torch.allclose(got[key], expected[key], atol=1e-4), key
    assert float(expected["image_alpha"].max()) > 0.1  # something was actually drawn


@needs_cpu
def test_precedence_per_call_then_attribute_then_environment(G, calls, monkeypatch):
    ws, c = _inputs(G, batch=1)
    monkeypatch.setenv("GSGAN_BACKEND", "reference")
    G.synthesis(ws, c)  # backend 'auto' follows the environment
    assert calls == {"reference": 1, "cpu": 0}
    G.backend = "cpu"
    try:
        G.synthesis(ws, c)  # an explicit attribute beats the environment
        assert calls == {"reference": 1, "cpu": 1}
        G(torch.zeros(1, G.z_dim), c, backend="reference")  # and a per-call choice beats the attribute
        assert calls == {"reference": 2, "cpu": 1}
    finally:
        G.backend = "auto"


def test_bad_backend_names_are_refused(G):
    ws, c = _inputs(G, batch=1)
    with pytest.raises(ValueError, match="backend: unknown name 'fast'; valid: 'auto', 'reference'"):
        G.backend = "fast"
    with pytest.raises(ValueError, match="unknown name 'bogus'"):
        G.synthesis(ws, c, backend="bogus")
    assert G.backend == "auto"


def test_generator_refuses_absurd_sizes_before_allocating():
    with pytest.raises(ValueError, match=r"1,000,000,000,000 Gaussians per sample; at most 16,777,216"):
        GSGenerator(**dict(TINY_G, num_points=10 ** 12, res_end=8, bg_num_points=0))
    with pytest.raises(ValueError, match="Gaussians per sample"):
        GSGenerator(**dict(TINY_G, res_end=2 ** 30))
    # The count is the one gaussian_counts() reports: just at the limit is accepted (checked without building).
    from training.generator import _configured_gaussians

    G = GSGenerator(**TINY_G)
    assert _configured_gaussians(16, 16, 4, 32, 4) == G.gaussian_counts()["total"]
    assert _configured_gaussians(MAX_GAUSSIANS_PER_SAMPLE, 8, 4, 0, 4) == MAX_GAUSSIANS_PER_SAMPLE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_render_refuses_half_precision_with_the_field_named(dtype):
    from splatting import Cameras, Gaussians, render

    g = Gaussians(means=torch.zeros(1, 4, 3), log_scales=torch.full((1, 4, 3), -3.0), quats=torch.randn(1, 4, 4),
                  opacity_logits=torch.zeros(1, 4), sh=torch.zeros(1, 4, 1, 3))
    w2c = torch.eye(4).expand(1, 1, 4, 4).clone()
    w2c[..., 2, 3] = 2.0
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]).expand(1, 1, 3, 3)
    cams = Cameras(w2c, K, width=16, height=16)
    with pytest.raises(ValueError, match=rf"gaussians.means: {dtype} is not supported; render\(\) needs float32"):
        render(g.map(lambda t: t.to(dtype)), cams, backend="reference")
    with pytest.raises(ValueError, match=rf"cameras.world_to_cam: {dtype} is not supported"):
        render(g, cams.to(dtype=dtype), backend="reference")
    assert render(g.map(torch.Tensor.double), cams.to(dtype=torch.float64), backend="reference").color.dtype == \
        torch.float64


def test_calc_metrics_backend_option(G, tmp_path):
    from click.testing import CliRunner

    import calc_metrics

    D = Discriminator(img_resolution=16, channel_base=64, channel_max=16, cam_hidden=16, pose_feat_dim=8,
                      num_fp16_res=0)
    path = checkpoint.save_snapshot(str(tmp_path / "network-snapshot-000000.pt"), {"G": G, "D": D, "G_ema": G})
    _, loaded = calc_metrics.load_generator(path, "cpu", "reference")
    assert loaded.backend == "reference"
    result = CliRunner().invoke(calc_metrics.main, ["--network", path, "--device", "cpu", "--backend", "gsplat"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len([line for line in lines if line.startswith("Error")]) == 1
    assert "--backend" in lines[-1] and ("cannot render cpu" in lines[-1] or "not available" in lines[-1])
