"""The naive Gaussian generator (train.py --arch naive): the hierarchy's Gaussian count and mapping network, none of
its constraints, snapshots, videos, metrics and a training run through the CLIs."""
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import calc_metrics
import dataset_tool
import gen_videos
import train
from tests.test_metrics import TinyNvidiaDetector, save_detector, write_dataset
from torch_utils import checkpoint
from training.config import CFG_DEFAULTS, ConfigError, TrainConfig
from training.discriminator import Discriminator
from training.generator import GSGenerator, GSParams
from training.naive_generator import NaiveGenerator

RES = 16
TINY = dict(img_resolution=RES, num_points=16, res_end=16, channel_base=256, channel_min=16, channel_max=32,
            num_heads=2, num_transformer_layers=1, knn_k=4, view_dim=8, const_pe_length=16, bg_num_points=8,
            bg_channels=16, w_dim=32, z_dim=32)
# The camera of an FFHQ-like frontal view (EG3D label: cam2world at (0, 0, 2.7) looking at the origin, intrinsics).
FRONT = torch.tensor([[1.0, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def naive():
    torch.manual_seed(0)
    return NaiveGenerator(**TINY).eval().requires_grad_(False)


def shapes_kwargs():
    """GSGenerator kwargs of the `shapes` preset (the quickstart's model)."""
    preset = CFG_DEFAULTS["shapes"]
    return dict(img_resolution=16, num_points=preset["gaussian_num_pts"], res_end=preset["res_end"],
                channel_base=preset["cbase"] // 4, channel_max=preset["cmax"], **preset["G_extra"])


@pytest.mark.parametrize("kwargs", [TINY, shapes_kwargs(), dict(img_resolution=256, res_end=128),
                                    dict(img_resolution=512, res_end=256, bg_num_points=0)],
                         ids=["tiny", "shapes", "ffhq256", "ffhq512-no-background"])
def test_same_gaussians_and_mapping_as_the_hierarchy(kwargs):
    with torch.device("meta"):
        hierarchical, flat = GSGenerator(**kwargs), NaiveGenerator(**kwargs)
    h, n = hierarchical.gaussian_counts(), flat.gaussian_counts()
    assert n["total"] == h["total"] and n["foreground"] == h["foreground"] and n["background"] == h["background"]
    assert n["levels"] == [h["foreground"]] and n["anchors"] == 0 and n["anchor_levels"] == []
    assert flat.num_ws == hierarchical.num_ws
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(flat.mapping_network) == shapes(hierarchical.mapping_network)
    if hierarchical.background is not None:
        assert shapes(flat.background) == shapes(hierarchical.background)
    assert not any(name.startswith("points.") and "anchor" in name for name in flat.state_dict())


def test_forward_renders_all_gaussians_without_anchors(naive):
    z = torch.randn(2, naive.z_dim, generator=torch.Generator().manual_seed(1))
    out = naive(z, FRONT.repeat(2, 1))
    assert out["image"].shape == (2, 3, RES, RES) and torch.isfinite(out["image"]).all()
    assert out["gaussians"].num_gaussians == naive.gaussian_counts()["total"] and out["anchors"] == []
    assert out["image_alpha"].mean() > 0.05  # the Gaussians start in view


def test_no_constraints_on_positions_or_scales():
    """Head outputs pass straight through: positions leave the [-1, 1] box the hierarchy clamps to, log-scales go
    above the hierarchy's maximum 0; nothing depends on another Gaussian (no parent)."""
    torch.manual_seed(0)
    G = NaiveGenerator(**dict(TINY, bg_num_points=0)).eval()
    heads = G.points.heads
    with torch.no_grad():
        heads.xyz.bias.fill_(100.0 / (G.points.xyz_output_scale * heads.xyz.lr_multiplier))
        heads.scale.bias.fill_(5.0 / heads.scale.lr_multiplier)
    ws = G.mapping(torch.randn(1, G.z_dim), FRONT)
    g = G.generate_scene(ws).gaussians
    assert (g.means > 50).all() and (g.log_scales > 0).all()
    # Gaussian i's position depends on point i alone: the Jacobian w.r.t. the learned points is block-diagonal.
    xyz = G.points._xyz
    means = G.generate_scene(ws).gaussians.means[0]
    grad = torch.autograd.grad(means[3].sum(), xyz, retain_graph=True)[0]
    others = torch.ones(xyz.shape[0], dtype=torch.bool)
    others[3] = False
    # AdaNorm's instance statistics are the only coupling (all points' mean and std): tiny, not parent-sized.
    assert grad[3].abs().sum() > 100 * grad[others].abs().max()


def test_every_parameter_learns(naive):
    G = NaiveGenerator(**TINY).train()
    out = G(torch.randn(2, G.z_dim), FRONT.repeat(2, 1))
    out["image"].square().mean().backward()
    missing = [name for name, p in G.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_multi_view_rendering_and_gs_params(naive):
    ws = naive.mapping(torch.randn(1, naive.z_dim), FRONT)
    scene = naive.generate_scene(ws)
    views = naive.render_scene(scene, FRONT.repeat(3, 1)[None], neural_rendering_resolution=24)
    single = naive.synthesis(ws, FRONT, neural_rendering_resolution=24)
    assert views["image"].shape == (1, 3, 3, 24, 24)
    torch.testing.assert_close(views["image"][0, 0], single["image"][0], atol=1e-5, rtol=0)
    picked = naive.generate_scene(ws, GSParams(point_index=(0, 5), disable_background=True))
    assert picked.gaussians.num_gaussians == 2
    torch.testing.assert_close(picked.gaussians.means[0, 1], scene.gaussians.means[0, 5])
    with pytest.raises(ValueError, match="the naive generator has no anchors"):
        naive.generate_scene(ws, GSParams(visualize_anchor=True))


def test_config_arch_field_and_old_option_files():
    old = TrainConfig().to_dict()
    del old["G"]["arch"]  # training_options.json written before the field existed
    assert TrainConfig.from_dict(old).G.arch == "hierarchical"
    assert TrainConfig.from_dict(old).generator_class() is GSGenerator
    naive = TrainConfig.from_dict({**old, "G": {**old["G"], "arch": "naive"}})
    assert naive.generator_class() is NaiveGenerator and TrainConfig.from_json(naive.to_json()) == naive
    with pytest.raises(ConfigError, match="TrainConfig.G.arch: expected one of \\('hierarchical', 'naive'\\), got 'x'"):
        TrainConfig.from_dict({"G": {"arch": "x"}})
    with pytest.raises(ConfigError, match="TrainConfig.G.arch: expected a string"):
        TrainConfig.from_dict({"G": {"arch": 1}})


def test_train_dry_run_and_bad_arch(tmp_path):
    result = CliRunner().invoke(train.main, ["--outdir", str(tmp_path), "--cfg=shapes", "--arch=naive", "--dry-run"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.split("Model summary:\n", 1)[1].split("\n\n", 1)[0])
    assert summary["total_rendered_gaussians"] == 320 and summary["gaussians_per_level"] == [320]
    assert summary["anchor_gaussians"] == 0 and summary["num_ws"] == 6
    result = CliRunner().invoke(train.main, ["--outdir", str(tmp_path), "--cfg=shapes", "--arch=flat", "--dry-run"])
    assert result.exit_code == 2 and "Invalid value for '--arch'" in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def snapshot(naive, tmp_path_factory):
    root = tmp_path_factory.mktemp("naive")
    data = write_dataset(str(root / "data16.zip"), 10, resolution=RES)
    D = Discriminator(img_resolution=RES, channel_base=256, channel_max=32, cam_hidden=32, pose_feat_dim=8,
                      num_fp16_res=0)
    path = checkpoint.save_snapshot(str(root / "network-snapshot-000000.pt"), {"G": naive, "D": D, "G_ema": naive},
                                    options={"cfg": "shapes", "G": {"arch": "naive"}}, progress={"cur_nimg": 0},
                                    training_set_kwargs={"path": data, "resolution": RES, "xflip": False,
                                                         "use_labels": True})
    return dict(path=path, root=root, detector=save_detector(TinyNvidiaDetector(), str(root / "detector.pt")))


def test_snapshot_round_trip(naive, snapshot):
    loaded = checkpoint.load_snapshot(snapshot["path"])["G_ema"]
    assert type(loaded) is NaiveGenerator and loaded.init_kwargs == naive.init_kwargs
    z = torch.randn(1, naive.z_dim, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loaded(z, FRONT)["image"], naive(z, FRONT)["image"], atol=0, rtol=0)


def test_gen_videos_renders_the_naive_model_at_any_resolution(snapshot, tmp_path):
    result = CliRunner().invoke(gen_videos.cli, ["--network", snapshot["path"], "--seeds", "0-1", "--grid", "2x1",
                                                 "--frames", "3", "--nrr", "48", "--images", "--outdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    video = np.stack(list(iio.imiter(tmp_path / "seed0000-0001.mp4")))
    assert video.shape[1:3] == (48, 96)
    still = iio.imread(tmp_path / "seed0000.png")
    assert still.shape[0] == 2 * 48 and os.path.exists(tmp_path / "seed0001.ply")
    result = CliRunner().invoke(gen_videos.cli, ["--network", snapshot["path"], "--seeds", "0", "--frames", "2",
                                                 "--visualize_anchor", "--outdir", str(tmp_path / "anchors")])
    assert result.exit_code != 0 and "the naive generator has no anchors" in result.output.splitlines()[-1]
    assert "Traceback" not in result.output and not os.path.exists(tmp_path / "anchors")


def test_calc_metrics_on_the_naive_model(snapshot, tmp_path):
    result = CliRunner().invoke(calc_metrics.main, ["--metrics=fid8_full", f"--network={snapshot['path']}",
                                                    f"--detector={snapshot['detector']}", "--device=cpu",
                                                    f"--cache-dir={tmp_path}"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.splitlines()[-1])
    assert line["results"]["fid8_full"] > 0 and line["snapshot_pkl"] == "network-snapshot-000000.pt"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("data") / "synth16.zip")
    result = CliRunner().invoke(dataset_tool.cli, ["synth", "--count", "16", "--resolution", "16", "--family", "rings",
                                                   "--background", "grey", "--dest", dest])
    assert result.exit_code == 0, result.output
    return dest


@pytest.mark.parametrize("arch", ["hierarchical", "naive"])
def test_train_both_archs_and_the_grids_render_at_128_px(arch, tiny_data, tmp_path):
    """Two iterations of each architecture through train.py; the fakes grids are 128 px per image although the
    model trains at 16 px; a snapshot of one architecture cannot resume the other."""
    outdir = tmp_path / "runs"
    args = ["--outdir", str(outdir), "--cfg=shapes", f"--data={tiny_data}", f"--arch={arch}", "--kimg=0.016",
            "--tick=0.008", "--snap=1", "--workers=0", "--device=cpu", "--grid=2x1", "--metrics=none"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 0, result.output
    (run,) = os.listdir(outdir)
    run_dir = outdir / run
    snapshots = checkpoint.list_snapshots(str(run_dir))
    assert type(checkpoint.load_snapshot(snapshots[-1])["G_ema"]).__name__ == (
        "NaiveGenerator" if arch == "naive" else "GSGenerator")
    options = json.loads((run_dir / "training_options.json").read_text())
    assert options["G"]["arch"] == arch
    fakes = sorted(p for p in os.listdir(run_dir) if p.startswith("fakes") and not p.endswith("_depth.png"))
    assert iio.imread(run_dir / fakes[-1]).shape == (128, 256, 3)
    assert iio.imread(run_dir / "reals.png").shape == (16, 32, 3)
    other = "hierarchical" if arch == "naive" else "naive"
    resumed = CliRunner().invoke(train.main, [a if not a.startswith("--arch") else f"--arch={other}" for a in args]
                                 + [f"--resume={snapshots[-1]}", "--kimg=0.032"])
    assert resumed.exit_code != 0 and "Traceback" not in resumed.output
    assert "expected" in resumed.output.splitlines()[-1] and "Generator" in resumed.output.splitlines()[-1]


@pytest.mark.parametrize("args, message", [(["--metric", "fid9x"], "unknown metric 'fid9x'"),
                                           (["--data", "missing.zip"], "missing.zip does not exist")])
def test_ablation_bench_refuses_bad_options_before_any_work(args, message, tmp_path):
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "ablation.py")
    result = subprocess.run([sys.executable, script, "--outdir", str(tmp_path / "runs"), *args], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "runs")


def test_ablation_bench_finds_the_latest_grid_by_image_count(tmp_path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    sys.modules.pop("ablation", None)
    import ablation

    for name in ("fakes000000.008.png", "fakes000001.png", "fakes000001.352.png", "fakes000001.352_depth.png"):
        (tmp_path / name).write_bytes(b"")
    assert ablation.latest_grid(str(tmp_path)) == str(tmp_path / "fakes000001.352.png")
    assert ablation.latest_grid(str(tmp_path / "nothing")) is None
