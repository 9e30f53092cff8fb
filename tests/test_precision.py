"""bf16 feature networks (training/precision.py, G.inference_dtype, --dtype): what runs in bf16 and what stays
fp32, closeness to fp32, the native-support rule and its override, and the CLIs' one-line refusals."""
import json

import pytest
import torch
from click.testing import CliRunner

import calc_metrics
import gen_videos
from tests.test_metrics import TinyNvidiaDetector, save_detector, write_dataset
from torch_utils.checkpoint import save_snapshot
from training import precision
from training import video_utils as vu
from training.discriminator import Discriminator
from training.generator import GSGenerator
from training.naive_generator import NaiveGenerator

RES = 16
TINY = dict(img_resolution=RES, num_points=16, res_end=32, channel_base=256, channel_min=16, channel_max=32,
            num_heads=2, num_transformer_layers=1, knn_k=4, view_dim=8, const_pe_length=16, bg_num_points=8,
            bg_channels=16, w_dim=32, z_dim=32)
FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    return GSGenerator(**TINY).eval().requires_grad_(False)


@pytest.fixture
def emulated(monkeypatch):
    """A CPU without native bf16, and no override."""
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.delenv(precision.FORCE_ENV, raising=False)


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv(precision.FORCE_ENV, "1")


def ws_of(G, seeds=(0, 1)):
    return vu.compute_ws(G, list(seeds), vu.CAMERA_PRESETS["ffhq"])


def no_hooks_left(points):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in precision.feature_modules(points))


# --------------------------------------------------------------------------------------------------
# Names and the native-support rule.

def test_dtype_names(G):
    assert [precision.check_dtype_name(n) for n in precision.DTYPES] == ["fp32", "bf16"]
    for bad in ("fp16", "float32", "BF16", None, 16):
        with pytest.raises(precision.PrecisionError, match="valid: 'fp32', 'bf16'"):
            precision.check_dtype_name(bad)
    fresh = GSGenerator(**TINY)
    assert fresh.inference_dtype == "fp32"
    with pytest.raises(ValueError, match="unknown name 'half'"):
        fresh.inference_dtype = "half"
    assert fresh.inference_dtype == "fp32"


def test_native_detection_from_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    for flags, native in (({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True), ({"fp", "asimd", "bf16"}, True),
                          ({"avx2", "avx512f", "avx512_vnni"}, False)):
        monkeypatch.setattr(precision, "_cpu_flags", lambda flags=flags: frozenset(flags))
        assert precision.native_bf16("cpu") is native, flags
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset())  # no /proc/cpuinfo: torch's probe decides
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert precision.native_bf16("cpu")
    assert not precision.native_bf16("meta")


def test_emulated_bf16_refused_unless_forced(G, emulated, monkeypatch):
    assert precision.check_dtype_usable("fp32", "cpu") == "fp32"
    with pytest.raises(precision.PrecisionError) as error:
        precision.check_dtype_usable("bf16", "cpu")
    message = str(error.value)
    assert "\n" not in message and "AVX-512 BF16" in message and f"{precision.FORCE_ENV}=1" in message
    with pytest.raises(precision.PrecisionError, match="not native"):  # the Python API follows the same rule
        G.generate_scene(ws_of(G), dtype="bf16")
    assert no_hooks_left(G.points)
    monkeypatch.setenv(precision.FORCE_ENV, "1")
    assert precision.check_dtype_usable("bf16", "cpu") == "bf16"


# --------------------------------------------------------------------------------------------------
# What runs in bf16, and how close it stays.

def record_input_dtypes(modules):
    seen = {}
    def hook(name):
        def record(module, args, output):
            seen.setdefault(name, args[0].dtype)
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    return seen, handles


def test_bf16_feature_networks_fp32_gaussians(G, forced):
    ws = ws_of(G)
    points = G.points
    inner = {"transformer qkv": points.transformer[0].attn.qkv, "level-1 upsample": points.blocks[0].up,
             "last-level mlp": points.blocks[-1].mlp, "render head 0": points.render_heads[0],
             "last render head": points.render_heads[-1], "anchor head 0": points.anchor_heads[0]}
    seen, handles = record_input_dtypes(inner)
    try:
        reference = G.generate_scene(ws, dtype="fp32").gaussians
        assert set(seen.values()) == {torch.float32}
        seen.clear()
        scene = G.generate_scene(ws, dtype="bf16")
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {"transformer qkv": torch.bfloat16, "level-1 upsample": torch.bfloat16,
                    "last-level mlp": torch.bfloat16, "render head 0": torch.float32,
                    "last render head": torch.float32, "anchor head 0": torch.float32}
    assert no_hooks_left(points)
    g = scene.gaussians
    assert all(getattr(g, name).dtype == torch.float32 for name in FIELDS)
    assert all(a.dtype == torch.float32 for anchor in scene.anchors for a in (anchor.means, anchor.sh))
    # bf16 really ran (the result differs) and stays close: positions within ~1e-3 of a unit-sized scene.
    means = (g.means - reference.means).abs()
    assert 0 < float(means.max()) < 5e-3 and float(means.mean()) < 1e-3
    assert float((g.log_scales - reference.log_scales).abs().max()) < 2e-2
    assert float((g.opacities() - reference.opacities()).abs().max()) < 2e-2
    assert float((g.sh - reference.sh).abs().max()) < 5e-2
    background = G.gaussian_counts()["background"]  # fp32 in both modes: identical
    assert torch.equal(g.means[:, -background:], reference.means[:, -background:])


def test_attribute_and_per_call_choice(G, forced):
    z = torch.randn(2, G.z_dim)
    c = vu.trajectory_labels("ffhq", 2, vu.CAMERA_PRESETS["ffhq"])
    fp32 = G(z, c)["image"]
    G.inference_dtype = "bf16"
    try:
        bf16 = G(z, c)["image"]
        per_call_fp32 = G(z, c, dtype="fp32")["image"]
    finally:
        G.inference_dtype = "fp32"
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert not torch.equal(bf16, fp32) and float((bf16 - fp32).abs().mean()) < 2e-2
    assert torch.equal(per_call_fp32, fp32)


def test_hooks_removed_when_the_block_raises(G, forced):
    with pytest.raises(RuntimeError, match="inside"):
        with precision.feature_precision(G.points, "bf16", "cpu"):
            assert not no_hooks_left(G.points)
            raise RuntimeError("inside")
    assert no_hooks_left(G.points)


def test_naive_generator_blocks_in_bf16(forced):
    torch.manual_seed(0)
    naive = NaiveGenerator(**dict(TINY, res_end=16)).eval().requires_grad_(False)
    ws = ws_of(naive)
    seen, handles = record_input_dtypes({"block mlp": naive.points.blocks[0].mlp, "heads": naive.points.heads})
    try:
        reference = naive.generate_scene(ws).gaussians
        seen.clear()
        g = naive.generate_scene(ws, dtype="bf16").gaussians
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {"block mlp": torch.bfloat16, "heads": torch.float32}
    assert g.means.dtype == torch.float32 and 0 < float((g.means - reference.means).abs().max()) < 5e-3


# --------------------------------------------------------------------------------------------------
# CLIs: --dtype.

@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("precision")
    data = write_dataset(str(root / "data16.zip"), 10, resolution=RES)
    G = GSGenerator(**TINY)
    D = Discriminator(img_resolution=RES, channel_max=32)
    path = save_snapshot(str(root / "network-snapshot-000000.pt"), {"G": G, "D": D, "G_ema": G},
                         options={"cfg": "ffhq"}, progress={"cur_nimg": 0},
                         training_set_kwargs={"path": data, "resolution": RES, "xflip": False, "use_labels": True})
    return dict(path=path, detector=save_detector(TinyNvidiaDetector(), str(root / "tiny-detector.pt")))


def refused(result, hint):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and hint in errors[0] and f"{precision.FORCE_ENV}=1" in errors[0], result.output
    assert "Traceback" not in result.output


def test_cli_refuse_emulated_bf16_before_loading(emulated, tmp_path):
    missing = str(tmp_path / "no-such-snapshot.pt")  # refused before the snapshot is even looked for
    refused(CliRunner().invoke(gen_videos.cli, ["--network", missing, "--outdir", str(tmp_path / "out"),
                                                "--device", "cpu", "--dtype", "bf16"]), "'--dtype'")
    assert not (tmp_path / "out").exists()
    refused(CliRunner().invoke(calc_metrics.main, [f"--network={missing}", "--device=cpu", "--dtype=bf16"]),
            "--dtype")
    for cli, args in ((gen_videos.cli, ["--network", missing, "--outdir", str(tmp_path)]),
                      (calc_metrics.main, [f"--network={missing}"])):
        result = CliRunner().invoke(cli, args + ["--dtype", "fp16"])
        assert result.exit_code == 2 and "'fp16' is not one of 'fp32', 'bf16'" in result.output, result.output


def test_gen_videos_dry_run_reports_dtype(snapshot, forced, tmp_path):
    result = CliRunner().invoke(gen_videos.cli, ["--network", snapshot["path"], "--outdir", str(tmp_path / "out"),
                                                 "--device", "cpu", "--dtype", "bf16", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dtype bf16" in result.output


def test_calc_metrics_generates_in_bf16(snapshot, forced, monkeypatch, tmp_path):
    calls = []
    original = precision._features_in_bf16

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(precision, "_features_in_bf16", counting)
    result = CliRunner().invoke(calc_metrics.main, ["--metrics=fid8_full", f"--network={snapshot['path']}",
                                                    f"--detector={snapshot['detector']}", "--device=cpu",
                                                    "--dtype=bf16", f"--cache-dir={tmp_path}"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["results"]["fid8_full"] > 0
    assert calls, "no feature network ran in bf16"
    _, G = calc_metrics.load_generator(snapshot["path"], "cpu", "auto", "bf16")
    assert G.inference_dtype == "bf16" and G.backend == "auto"


def test_bench_deviation_in_user_units(monkeypatch):
    """bench/precision.py reports |bf16 - fp32| of the foreground only, scales relative, colours as RGB."""
    import math
    import os

    from splatting.gaussians import SH_C0, Gaussians

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import precision as bench_precision  # bench/precision.py

    base = Gaussians(means=torch.zeros(1, 6, 3), log_scales=torch.full((1, 6, 3), -3.0), quats=torch.ones(1, 6, 4),
                     opacity_logits=torch.zeros(1, 6), sh=torch.zeros(1, 6, 1, 3))
    moved = Gaussians(means=base.means.clone(), log_scales=base.log_scales + math.log(1.02), quats=base.quats,
                      opacity_logits=base.opacity_logits.clone(), sh=base.sh + 0.1)
    moved.means[0, 1, 2] = 1e-3
    moved.opacity_logits[0, 5] = 10.0  # outside the foreground (the first 4): ignored
    out = bench_precision.gaussian_deviation(base, moved, foreground=4)
    assert out["means"]["max"] == pytest.approx(1e-3) and out["means"]["mean"] == pytest.approx(1e-3 / 12)
    assert out["scales_relative"]["max"] == pytest.approx(0.02, rel=1e-4)  # bf16 / fp32 - 1
    assert out["opacity"]["max"] == 0.0
    assert out["color_rgb"]["max"] == pytest.approx(0.1 * SH_C0, rel=1e-5)
