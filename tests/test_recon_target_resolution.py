"""Target views at their own size (`data.target_shape`, `--target-resolution`): the datasets, the options, the
resize used by the grid and the baseline, the training grid, `reconstruct.py train` / `test` end to end on tiny
data (contexts 16x16, targets 32x32 of 32x32 frames) and the bad values as one line."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reconstruction import evaluate as E
from reconstruction import tick_outputs
from reconstruction.config import ConfigError, ReconTrainOptions, resolve_options
from reconstruction.dataset import DatasetError, EvaluationSet, SceneStream
from reconstruction.view_sampler import BoundedViewSampler, EvaluationIndex
from tests.reconstruction.test_loop import make_dataset
from tests.reconstruction.test_reconstruct_cli import TINY_TRAIN, error_line, invoke, train_run
from torch_utils import checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["--device", "cpu", "--backend", "reference"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("target-res-data"), train_scenes=2, size=32)


def _index(root) -> EvaluationIndex:
    return EvaluationIndex(os.path.join(root, "evaluation_index.json"))


def _assert_views_equal(a: dict, b: dict) -> None:
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---------------------------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("target_shape", [(32, 32), (24, 32), (8, 8)])
def test_evaluation_targets_come_at_their_own_size_with_exact_intrinsics(data_root, target_shape):
    """Contexts as at image_shape alone, targets exactly as a dataset of image_shape = target_shape makes them
    (each part rescaled and cropped from the frame on its own, so normalized intrinsics stay exact)."""
    mixed = EvaluationSet(data_root, "test", _index(data_root), image_shape=(16, 16), target_shape=target_shape)
    small = EvaluationSet(data_root, "test", _index(data_root), image_shape=(16, 16))
    large = EvaluationSet(data_root, "test", _index(data_root), image_shape=target_shape)
    item = mixed[0]
    assert tuple(item["context"]["image"].shape) == (3, 3, 16, 16)
    assert tuple(item["target"]["image"].shape) == (3, 3, *target_shape)
    _assert_views_equal(item["context"], small[0]["context"])
    _assert_views_equal(item["target"], large[0]["target"])
    if target_shape[0] == target_shape[1]:  # square crops of square frames: the same normalized intrinsics
        assert torch.allclose(item["target"]["intrinsics"][0], item["context"]["intrinsics"][0])
    else:  # a crop to 24 rows: fy and cy are rescaled to the kept rows, fx / cx stay
        k = item["target"]["intrinsics"][0]
        assert float(k[1, 1]) == pytest.approx(32 / 24) and float(k[0, 0]) == pytest.approx(1.0)
    assert mixed.target_shape == target_shape and small.target_shape == (16, 16)


def test_training_stream_targets_come_at_their_own_size_with_the_same_frames_and_flips(data_root):
    sampler = BoundedViewSampler(num_context=2, num_target=3, min_gap=4, max_gap=6, initial_min_gap=4,
                                 initial_max_gap=6, warmup_steps=0)
    options = dict(near=1.0, far=100.0, flip=True, seed=3)
    mixed = SceneStream(data_root, "train", sampler, image_shape=(16, 16), target_shape=(32, 32), **options)
    small = SceneStream(data_root, "train", sampler, image_shape=(16, 16), **options)
    large = SceneStream(data_root, "train", sampler, image_shape=(32, 32), **options)
    signs = set()
    for position in range(6):
        item, a, b = mixed.example_at(position), small.example_at(position), large.example_at(position)
        assert tuple(item["context"]["image"].shape[-2:]) == (16, 16)
        assert tuple(item["target"]["image"].shape[-2:]) == (32, 32)
        _assert_views_equal(item["context"], a["context"])
        _assert_views_equal(item["target"], b["target"])
        signs.add(bool(item["context"]["extrinsics"][:, 0, 3].sum() > 0))  # cameras move along +x; a flip: -x
    assert signs == {True, False}  # both branches of the random flip were exercised


@pytest.mark.parametrize("bad", [(0, 32), (32,), "32x32", (16.0, 16)])
def test_a_bad_target_shape_is_a_dataset_error_naming_it(data_root, bad):
    with pytest.raises(DatasetError, match="^target_shape: expected two positive ints"):
        EvaluationSet(data_root, "test", _index(data_root), image_shape=(16, 16), target_shape=bad)


# ---------------------------------------------------------------------------------------------- options
def test_target_shape_option_round_trips_and_defaults_to_the_image_shape():
    options = resolve_options("scenes", {"data.target_shape": (32, 48)})
    options.validate()
    assert options.data.target_shape == (32, 48) and options.data.target_or_image_shape == (32, 48)
    again = ReconTrainOptions.from_json(options.to_json())
    assert again == options and again.data.target_shape == (32, 48)
    plain = resolve_options("scenes")
    assert plain.data.target_shape is None and plain.data.target_or_image_shape == (64, 64)
    older = plain.to_dict()
    del older["data"]["target_shape"]  # options written before the field existed
    assert ReconTrainOptions.from_dict(older).data.target_or_image_shape == (64, 64)


def test_bad_target_shape_options_are_one_config_error_naming_the_option():
    with pytest.raises(ConfigError, match=r"^--target-resolution \(data.target_shape\): expected two positive"):
        resolve_options("scenes", {"data.target_shape": (0, 32)}).validate()
    with pytest.raises(ConfigError, match=r"data\.target_shape"):
        resolve_options("scenes", {"data.target_shape": "abc"})
    with pytest.raises(ConfigError, match=r"data\.target_shape: expected 2 values"):
        resolve_options("scenes", {"data.target_shape": (32, 32, 3)})


# ---------------------------------------------------------------------------------------------- resize
def _pil_bilinear(images: torch.Tensor, shape) -> torch.Tensor:
    from PIL import Image

    out = [[np.asarray(Image.fromarray(channel.numpy(), "F").resize(shape[::-1], Image.BILINEAR))
            for channel in image] for image in images]
    return torch.from_numpy(np.array(out))


def test_resize_images_shrinks_like_pillow_and_enlarges_bilinearly():
    images = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(1))
    shrunk = E.resize_images(images, (12, 20))
    assert tuple(shrunk.shape) == (2, 3, 12, 20)
    assert torch.allclose(shrunk, _pil_bilinear(images, (12, 20)), atol=1e-5)  # Pillow's antialiased filter
    aliased = F.interpolate(images, size=(12, 20), mode="bilinear", align_corners=False)
    assert (shrunk - aliased).abs().max() > 1e-2  # the antialiasing does something
    enlarged = E.resize_images(images, (64, 80))
    assert torch.allclose(enlarged, F.interpolate(images, size=(64, 80), mode="bilinear", align_corners=False),
                          atol=1e-6)
    assert E.resize_images(images, (32, 40)) is images
    stripes = torch.zeros(1, 3, 16, 16)
    stripes[..., ::2] = 1.0  # detail at the pixel scale averages to grey when shrunk 4x (borders: within 4 %)
    grey = E.resize_images(stripes, (4, 4))
    assert torch.allclose(grey[..., 1:3], torch.full((1, 3, 4, 2), 0.5), atol=1e-6) and (grey - 0.5).abs().max() < 0.04
    assert 0 <= float(shrunk.min()) and float(shrunk.max()) <= 1


# ---------------------------------------------------------------------------------------------- grid
def _fake_render(n: int, shape, value: float):
    h, w = shape
    depth = torch.linspace(1, 2, h * w).reshape(1, 1, 1, h, w).expand(n, 1, 1, h, w)
    return SimpleNamespace(color=torch.full((n, 1, 3, h, w), value), depth=depth, alpha=torch.ones(n, 1, 1, h, w))


@pytest.mark.parametrize("densify", [False, True])
def test_grid_cells_take_the_larger_of_the_context_and_target_sizes(tmp_path, densify):
    from PIL import Image

    n, views = 2, 2
    context = torch.rand(n, views, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    batch = {"context": {"image": context}, "target": {"image": torch.rand(n, 1, 3, 32, 32)}}
    rendered = _fake_render(n, (32, 32), 0.25)
    extra = {}
    if densify:
        extra = {"coarse": _fake_render(n, (32, 32), 0.75),
                 "dense": SimpleNamespace(selection=SimpleNamespace(index=torch.zeros(n, views, 5, dtype=torch.long)))}
    path = tmp_path / "grid.png"
    tick_outputs.save_grid(str(path), batch, rendered, **extra)
    grid = np.asarray(Image.open(path))
    columns = views + (5 if densify else 3)  # contexts | target | (coarse |) render (| selected) | depth
    assert grid.shape == (32 * n, 32 * columns, 3)
    upsampled = E.resize_images(context[0, 1:2], (32, 32))[0].permute(1, 2, 0).numpy()
    assert np.abs(grid[:32, 32:64].astype(float) / 255 - upsampled).max() <= 1 / 255 + 1e-6
    assert tick_outputs.grid_cell_shape((16, 16), (32, 32)) == (32, 32)
    assert tick_outputs.grid_cell_shape((64, 64), (32, 48)) == (64, 64)
    assert tick_outputs.grid_cell_shape((16, 16), (16, 16)) == (16, 16)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("target-res-runs"), data_root, 2, "--target-resolution", "32")


def test_train_with_a_target_resolution_stores_it_and_writes_its_grid(run_dir):
    from PIL import Image

    options = json.load(open(os.path.join(run_dir, "training_options.json")))
    assert options["data"]["image_shape"] == [16, 16] and options["data"]["target_shape"] == [32, 32]
    grid = Image.open(os.path.join(run_dir, "grid-000002.png"))
    assert grid.size == (32 * (2 + 3), 32 * 2)  # context views | target | render | depth, at the target size
    assert "context 16x16, targets 32x32" in open(os.path.join(run_dir, "log.txt")).read()
    snapshot = checkpoint.read_recon_snapshot_dict(os.path.join(run_dir, "network-snapshot-000002.pt"))
    assert snapshot["options"]["data"]["target_shape"] == [32, 32]


def test_test_scores_at_the_snapshots_target_size_and_reports_it(data_root, run_dir, tmp_path):
    from PIL import Image

    result = invoke("test", "--network", run_dir, "--data", data_root, *BASE, "--save-images", tmp_path / "images")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["image_shape"] == [16, 16] and summary["target_shape"] == [32, 32]
    assert summary["gaussians_per_scene"] == 2 * 16 * 16  # Gaussians follow the contexts, not the targets
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metric-recon-test.jsonl"))]
    assert all(r["target_shape"] == [32, 32] and r["image_shape"] == [16, 16] for r in records)
    assert Image.open(tmp_path / "images" / "test0000" / "000003.png").size == (32, 32)
    other = invoke("test", "--network", run_dir, "--data", data_root, *BASE, "--target-resolution", "16x24",
                   "--limit", 1)
    assert other.exit_code == 0, other.output
    assert json.loads(other.output.strip().splitlines()[-1])["target_shape"] == [16, 24]


def test_baseline_compares_the_nearest_context_resized_to_the_target_size(data_root, run_dir):
    from reconstruction.metrics import ImageMetrics, psnr

    encoder = checkpoint.load_recon_snapshot(os.path.join(run_dir, "network-snapshot-000002.pt"))["encoder"]
    dataset = EvaluationSet(data_root, "test", _index(data_root), image_shape=(16, 16), target_shape=(32, 32))
    example = dataset[0]
    record = E.evaluate_example(encoder.eval(), example, ImageMetrics(("vgg",)), backend="reference")
    context, gt = example["context"]["image"], example["target"]["image"]
    nearest = E.resize_images(torch.stack([context[0], context[0], context[1]]), (32, 32))  # targets 3, 4 | 6
    assert record["baseline_psnr"] == pytest.approx(float(psnr(nearest, gt).double().mean()), rel=1e-6)
    assert record["target_shape"] == [32, 32] and record["image_shape"] == [16, 16]


def test_dry_run_reports_the_target_shape(tmp_path):
    result = invoke("train", "--outdir", tmp_path / "runs", "--experiment", "scenes", "--target-resolution",
                    "128x96", "--dry-run")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.split("Model summary:\n", 1)[1].split("\n\n", 1)[0])
    assert summary["image_shape"] == [64, 64] and summary["target_shape"] == [128, 96]


@pytest.mark.parametrize("value", ["0", "abc", "16x0", "16x16x16"])
def test_bad_target_resolutions_are_one_line(data_root, run_dir, tmp_path, value):
    line = error_line(invoke("train", "--outdir", tmp_path / "runs", "--data", data_root, *TINY_TRAIN,
                             "--target-resolution", value))
    assert "--target-resolution" in line and "expected a size H or HxW" in line
    line = error_line(invoke("test", "--network", run_dir, "--data", data_root, *BASE, "--target-resolution", value))
    assert "--target-resolution" in line and "expected a size H or HxW" in line
    assert not (tmp_path / "runs").exists()


def test_densify_miniature_passes_the_target_resolution_to_both_runs_and_the_tests(monkeypatch):
    import reconstruct

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import densify_miniature as bench  # bench/densify_miniature.py

    assert bench.target_args(None) == [] and bench.target_args((32, 48)) == ["--target-resolution=32x48"]
    for densify in (False, True):
        args = bench.train_args("base.pt", "data", "out", 5, densify, None, (), 0, target_resolution=(32, 48))
        with reconstruct.train.make_context("train", args) as ctx:
            options = reconstruct.build_train_options(ctx.params)
        assert options.data.target_shape == (32, 48) and options.data.image_shape == (64, 64)


def test_densify_miniature_gives_each_run_its_own_batch(monkeypatch):
    import reconstruct

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import densify_miniature as bench  # bench/densify_miniature.py

    for batch, expected in ((None, 4), (2, 2)):
        args = bench.train_args("base.pt", "data", "out", 5, True, None, (), 0, batch=batch)
        with reconstruct.train.make_context("train", args) as ctx:
            assert reconstruct.build_train_options(ctx.params).batch_gpu == expected


def test_densify_miniature_freezes_the_encoder_of_run_b_only(monkeypatch):
    import reconstruct

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import densify_miniature as bench  # bench/densify_miniature.py

    for densify in (False, True):
        args = bench.train_args("base.pt", "data", "out", 5, densify, None, (), 0, freeze_encoder=densify)
        with reconstruct.train.make_context("train", args) as ctx:
            options = reconstruct.build_train_options(ctx.params)
        assert options.densify.freeze_encoder is densify and options.densify.enabled is densify


def test_densify_miniature_encoder_first_chains_two_stages_in_the_time_of_run_a(monkeypatch, tmp_path):
    """--encoder-first 0.5: (b) trains the encoder alone for half of (a)'s steps, then the densifier from that
    run for the rest of (a)'s time at the calibrated step ratio."""
    import subprocess

    from click.testing import CliRunner

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import densify_miniature as bench  # bench/densify_miniature.py

    trains = []
    summary = {"psnr": 26.0, "ssim": 0.8, "lpips": 0.1, "gaussians_per_scene": 8192, "seconds_per_scene": 0.1,
               "coarse_psnr": 25.9, "coarse_ssim": 0.8, "coarse_lpips": 0.1, "coarse_gaussians_per_scene": 8192,
               "num_scenes": 40}

    def fake_run(command, **kwargs):
        if command[2] == "train":
            values = dict(arg[2:].split("=", 1) for arg in command[3:] if "=" in arg)
            trains.append(values)
            os.makedirs(os.path.join(values["outdir"], f"{len(trains):05d}-{values['desc']}"))
            return subprocess.CompletedProcess(command, 0)
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(summary) + "\n", stderr="")

    monkeypatch.setattr(bench, "calibrate", lambda *args: {"t_a": 0.5, "t_b": 0.625, "repeats": 1, "threads": 1})
    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setattr(bench, "write_results", lambda kind, payload: str(tmp_path / "results.json"))
    result = CliRunner().invoke(bench.main, ["--base", str(tmp_path / "base.pt"), "--data", str(tmp_path),
                                             "--outdir", str(tmp_path / "out"), "--steps-a", "3000",
                                             "--encoder-first", "0.5", "--freeze-encoder-b", "--sequential"])
    assert result.exit_code == 0, result.output
    a, b1, b2 = trains
    assert (a["steps"], a["desc"], a["init"]) == ("3000", "a-base", str(tmp_path / "base.pt"))
    assert (b1["steps"], b1["desc"], b1["init"]) == ("1500", "b-encoder", str(tmp_path / "base.pt"))
    assert (b2["steps"], b2["desc"]) == ("1200", "b-densify")  # 1,500 steps of 0.5 s at 0.625 s per step
    assert b2["resume"] == str(tmp_path / "out" / "00002-b-encoder")
    assert "1500 encoder-only + 1200 steps" in result.output


def test_densify_miniature_averages_the_margins_over_seeds_and_refuses_a_bad_seed_list(monkeypatch):
    from click.testing import CliRunner

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import densify_miniature as bench  # bench/densify_miniature.py

    runs = [{"fine_minus_a_db": 0.29, "fine_minus_coarse_db": 0.36},
            {"fine_minus_a_db": 0.15, "fine_minus_coarse_db": 0.32}]
    margins = bench.summarize_margins(runs)
    assert margins["fine_minus_a_db_mean"] == pytest.approx(0.22)
    assert (margins["fine_minus_a_db_min"], margins["fine_minus_a_db_max"]) == (0.15, 0.29)
    assert margins["fine_minus_coarse_db_mean"] == pytest.approx(0.34)
    seeds = next(p for p in bench.main.params if p.name == "seeds")
    assert seeds.type.convert("0-2,5", seeds, None) == [0, 1, 2, 5]
    result = CliRunner().invoke(bench.main, ["--base", "b.pt", "--data", "d", "--seeds", "two"])
    assert result.exit_code == 2 and "--seeds" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(bench.main, ["--base", "b.pt", "--data", "d", "--seeds", "0,0"])
    assert result.exit_code == 2 and "each seed once" in result.output and "Traceback" not in result.output
