"""The learned backdrop at infinity (training/backdrop.py): shapes, reference geometry, gradients, learning, its
place in G's state_dict and snapshots, and the --backdrop choice (auto from the dataset's border)."""
import math
import os

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import train
from splatting.cameras import Cameras, eg3d_label
from tests.test_train_cli import TINY, one_line_error, resolved_options
from torch_utils import checkpoint
from training import camera_sampling as cs
from training import synthetic_scenes
from training.backdrop import BACKDROP_KINDS, BackdropField, fibonacci_frequencies, world_ray_directions
from training.config import BACKDROP_MODES, CFG_DEFAULTS, ConfigError, DataConfig, GeneratorConfig, TrainConfig
from training.generator import GSGenerator, GSParams

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_G = dict(img_resolution=16, z_dim=16, w_dim=16, num_points=16, res_end=16, channel_base=64, channel_max=16,
              num_transformer_layers=1, num_heads=2, bg_num_points=0, view_dim=8, const_pe_length=16)


def ffhq_labels(count: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """[count, 25] labels of the FFHQ rig (the `shapes` data's cameras)."""
    base = eg3d_label(torch.eye(4, dtype=torch.float64).expand(count, 4, 4), cs.FFHQ_FOCAL)
    labels = cs.ffhq_pose_augmentation(base, 1.0, generator=torch.Generator().manual_seed(seed),
                                       radius=cs.FFHQ_RADIUS)
    return labels.to(dtype)


def tiny_generator(seed: int = 0, **kwargs) -> GSGenerator:
    torch.manual_seed(seed)
    return GSGenerator(**TINY_G, **kwargs)


# ---------------------------------------------------------------------------------------------- the module
def test_shapes_and_bad_w():
    field = BackdropField(w_dim=8, color=(0.2, 0.3, 0.4))
    assert field.num_features == 4 + 2 * fibonacci_frequencies().shape[0] == 28
    coefficients = field(torch.randn(5, 8))
    assert coefficients.shape == (5, 28, 3)
    cameras = Cameras.from_eg3d_labels(ffhq_labels(5), 12, 10)
    image = field.image(coefficients, cameras.world_to_cam[:, 0], cameras.K[:, 0], 10, 12)
    assert image.shape == (5, 3, 10, 12)
    # Zero-initialised coefficients: the untrained backdrop is exactly the given colour, everywhere.
    assert torch.equal(image, torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1).expand_as(image))
    with pytest.raises(ValueError, match=r"BackdropField: w must be \[B, 8\], got \[5, 7\]"):
        field(torch.randn(5, 7))


def test_one_adam_step_moves_a_scenes_departure_no_more_than_the_shared_backdrop():
    """At the `shapes` preset's w_dim (512) and G learning rate (0.005): full-rate equalized weights would move
    each per-scene coefficient by ~0.09 in one step; A_LR_MULTIPLIER keeps it at the shared coefficients' 0.005."""
    field = BackdropField(w_dim=512, color=(0.5, 0.5, 0.5))
    w = torch.randn(4, 512)
    optimizer = torch.optim.Adam(field.parameters(), lr=0.005, betas=(0.0, 0.99))
    field(w).sum().backward()
    optimizer.step()
    with torch.no_grad():
        shared_step = (field.shared - field.shared.new_tensor([[0.5] * 3] + [[0.0] * 3] * 27)).abs().max()
        departure = field.per_scene(w).abs().max()
    assert shared_step == pytest.approx(0.005, rel=1e-3)
    assert 0.001 < departure <= 1.2 * shared_step


def test_frequencies_cover_the_sphere_at_three_magnitudes():
    f = fibonacci_frequencies().double()
    cycles = f.norm(dim=1) / (2 * math.pi)
    assert sorted(set(cycles.round(decimals=6).tolist())) == pytest.approx([0.6, 1.2, 2.4])
    directions = f / f.norm(dim=1, keepdim=True)
    assert directions.mean(dim=0).norm() < 0.15  # spread over the sphere, not bunched on one side
    for magnitude in (0.6, 1.2, 2.4):  # each magnitude has directions with both signs of elevation
        ys = directions[(cycles - magnitude).abs() < 1e-6, 1]
        assert ys.min() < 0 < ys.max()


def test_ray_directions_project_back_to_their_pixel_centres():
    """Reference: a point along each pixel's world ray, projected with the camera's own matrices, lands on that
    pixel's centre; the ray through the principal point is the camera's forward axis."""
    cameras = Cameras.from_eg3d_labels(ffhq_labels(3, seed=4, dtype=torch.float64), 8, 6)
    w2c, K = cameras.world_to_cam[:, 0], cameras.K[:, 0]
    dirs = world_ray_directions(w2c, K, 6, 8)
    assert dirs.shape == (3, 6, 8, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(3, 6, 8, dtype=torch.float64))
    points = cameras.centers[:, 0, None, None, :] + 2.5 * dirs  # [3, 6, 8, 3]
    cam = torch.einsum("nij,nhwj->nhwi", w2c[:, :3, :3], points) + w2c[:, None, None, :3, 3]
    pixels = torch.einsum("nij,nhwj->nhwi", K, cam)
    uv = pixels[..., :2] / pixels[..., 2:]
    v, u = torch.meshgrid(torch.arange(6) + 0.5, torch.arange(8) + 0.5, indexing="ij")
    torch.testing.assert_close(uv, torch.stack([u, v], dim=-1).double().expand(3, 6, 8, 2), rtol=0, atol=1e-9)
    centred = dirs.mean(dim=(1, 2))  # the grid is symmetric about the principal point, the image centre
    torch.testing.assert_close(torch.nn.functional.normalize(centred, dim=-1), cameras.forward[:, 0])


def test_colours_match_the_formula_and_gradcheck():
    field = BackdropField(w_dim=4, color=(0.1, 0.5, 0.9)).double()
    gen = torch.Generator().manual_seed(1)
    coefficients = torch.randn(2, field.num_features, 3, generator=gen, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(2, 5, 3, generator=gen, dtype=torch.float64), dim=-1)
    f = field.frequencies.numpy()
    d, a = dirs.numpy(), coefficients.numpy()
    expected = np.empty((2, 5, 3))
    for b in range(2):
        for p in range(5):
            phi = np.concatenate([[1.0], d[b, p], np.sin(f @ d[b, p]), np.cos(f @ d[b, p])])
            expected[b, p] = phi @ a[b]
    np.testing.assert_allclose(field.colors(coefficients, dirs).detach().numpy(), expected, rtol=1e-12)
    coefficients.requires_grad_(True)
    dirs.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, x: field.colors(c, x), (coefficients, dirs))


def test_field_learns_the_synthetic_gradient_and_noise_backdrops():
    """Fitted alone to what `dataset_tool.py synth` draws behind its objects, seen by FFHQ-rig cameras at 16 px:
    the vertical gradient (one for every scene) and two scenes' low-frequency noise (one w each)."""
    labels = ffhq_labels(16, seed=2)
    cameras = Cameras.from_eg3d_labels(labels, 16, 16)
    w2c, K = cameras.world_to_cam[:, 0], cameras.K[:, 0]
    dirs = world_ray_directions(w2c, K, 16, 16).double().numpy().reshape(-1, 3)
    span = synthetic_scenes.POSE_PRESETS["ffhq"]["backdrop_span"]
    for kind in ("gradient", "noise"):
        scenes = (0,) if kind == "gradient" else (0, 1)
        targets = [torch.from_numpy(synthetic_scenes.backdrop_for(kind, "ffhq", 0, s).colors(dirs)).float()
                   .view(16, 16, 16, 3).permute(0, 3, 1, 2) for s in scenes]
        assert span > 0 and targets[0].std() > 0.05  # a backdrop with structure to learn
        torch.manual_seed(0)
        field = BackdropField(w_dim=8, color=(0.5, 0.5, 0.5))
        ws = torch.randn(len(scenes), 8)
        optimizer = torch.optim.Adam(field.parameters(), lr=0.02)
        errors = []
        for _ in range(300):
            coefficients = field(ws).repeat_interleave(16, dim=0)
            image = field.image(coefficients, w2c.repeat(len(scenes), 1, 1), K.repeat(len(scenes), 1, 1), 16, 16)
            loss = (image - torch.cat(targets)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            errors.append(loss.item() ** 0.5)
        assert errors[-1] < 0.2 * errors[0] and errors[-1] < 0.03, (kind, errors[0], errors[-1])


# ---------------------------------------------------------------------------------------------- in the generator
def test_in_the_state_dict_with_its_own_w_and_no_other_weight_changed():
    off, field = tiny_generator(), tiny_generator(backdrop="field", backdrop_color=(0.5, 0.5, 0.5))
    added = sorted(set(field.state_dict()) - set(off.state_dict()))
    assert added == ["backdrop.frequencies", "backdrop.per_scene.weight", "backdrop.shared"]
    assert all(torch.equal(value, field.state_dict()[name]) for name, value in off.state_dict().items())
    assert field.num_ws == off.num_ws + 1  # the background's w slot
    assert field.init_kwargs["backdrop"] == "field" and field.init_kwargs["backdrop_color"] == (0.5, 0.5, 0.5)
    assert "backdrop" not in off.init_kwargs and "backdrop_color" not in off.init_kwargs
    # Without background Gaussians the backdrop is the only change: G with one = G without + (1 - alpha) * colour.
    z, c = torch.randn(2, 16), ffhq_labels(2)
    a, b = off(z, c, backend="reference"), field(z, c, backend="reference")
    torch.testing.assert_close((b["image"] + 1) / 2, (a["image"] + 1) / 2 + (1 - a["image_alpha"]) * 0.5)
    torch.testing.assert_close(b["image_alpha"], a["image_alpha"], rtol=0, atol=0)
    hidden = field(z, c, gs_params=GSParams(disable_background=True), backend="reference")
    assert torch.equal(hidden["image"], a["image"])  # disable_background: black again


def test_on_black_the_untrained_output_is_unchanged():
    """A field started from a black border adds exactly nothing before training (and auto builds none there)."""
    off, field = tiny_generator(), tiny_generator(backdrop="field")
    z, c = torch.randn(3, 16), ffhq_labels(3)
    assert torch.equal(off(z, c, backend="reference")["image"], field(z, c, backend="reference")["image"])


def test_gradient_reaches_it_in_training_and_multiview_rendering():
    G = tiny_generator(backdrop="field", backdrop_color=(0.5, 0.5, 0.5)).requires_grad_(True)
    z, c = torch.randn(2, 16), ffhq_labels(2)
    G(z, c, background=False, backend="reference")["image"].square().mean().backward()  # schedule off: still on
    grads = {name: p.grad for name, p in G.backdrop.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads
    scene = G.generate_scene(G.mapping(z, c))
    views = G.render_scene(scene, ffhq_labels(6).view(2, 3, 25), backend="reference")
    assert views["image"].shape == (2, 3, 3, 16, 16)
    single = G.render_scene(scene, ffhq_labels(6).view(2, 3, 25)[:, 1], backend="reference")
    torch.testing.assert_close(views["image"][:, 1], single["image"])


def test_bad_generator_arguments_are_one_line():
    with pytest.raises(ValueError, match=r"backdrop: expected one of 'off', 'field', got 'sky'"):
        GSGenerator(**TINY_G, backdrop="sky")
    for color in ((0.5, 0.5), (0.5, float("nan"), 0.5), "grey", (True, 0.0, 0.0)):
        with pytest.raises(ValueError, match=r"backdrop_color: expected three finite numbers"):
            GSGenerator(**TINY_G, backdrop="field", backdrop_color=color)


# ---------------------------------------------------------------------------------------------- snapshots
def test_snapshot_round_trip_and_old_snapshots_still_load():
    G = tiny_generator(backdrop="field", backdrop_color=(0.5, 0.4, 0.3))
    with torch.no_grad():
        G.backdrop.per_scene.weight.normal_()  # a trained-looking backdrop
    rebuilt = checkpoint.build_module(checkpoint.module_record(G))
    z, c = torch.randn(2, 16), ffhq_labels(2)
    assert torch.equal(rebuilt(z, c, backend="reference")["image"], G(z, c, backend="reference")["image"])
    # A snapshot written before the backdrop existed: its init_kwargs and state_dict are those of "off".
    old = checkpoint.module_record(tiny_generator(neural_rendering_resolution=16))
    assert not [k for k in list(old["init_kwargs"]) + list(old["state_dict"]) if k.startswith("backdrop")]
    assert checkpoint.build_module(old).backdrop is None
    planned = TrainConfig(cfg="shapes", data=DataConfig(resolution=16), G=GeneratorConfig(extra=dict(TINY_G)))
    checkpoint.check_architecture(GSGenerator(**planned.generator_kwargs()), old, "old.pt", "G")  # resumable


def test_training_snapshots_and_ema_carry_it(tmp_path):
    from tests.test_training import tiny_config
    from training import training_loop

    data = grey_dataset(tmp_path, count=8)
    base = tiny_config(data, str(tmp_path / "runs"), total_kimg=0.008)
    config = base.replace(G=base.G.replace(backdrop="field", backdrop_color=(0.5, 0.5, 0.5)))
    result = training_loop.launch(config)
    assert result.status == "done"
    snap = checkpoint.load_snapshot(result.snapshot)
    for key in ("G", "G_ema"):
        assert snap[key].backdrop is not None and snap[key].init_kwargs["backdrop"] == "field"
    trained = snap["G"].backdrop.per_scene.weight
    assert trained.abs().sum() > 0  # moved from its zero start
    ema = snap["G_ema"].backdrop.per_scene.weight
    assert 0 < ema.abs().sum() and not torch.equal(ema, trained)  # tracked, lagging
    resumed = training_loop.launch(config.replace(total_kimg=0.012, resume=result.run_dir))
    assert resumed.status == "done" and resumed.cur_nimg == 12


# ---------------------------------------------------------------------------------------------- config and CLI
def grey_dataset(tmp_path, count: int = 16, background: str = "grey") -> str:
    import dataset_tool

    path = str(tmp_path / f"{background}{count}.zip")
    if not os.path.exists(path):
        dataset_tool.synth.main(["--poses", "ffhq", "--count", str(count), "--resolution", "16", "--seed", "0",
                                 "--background", background, "--dest", path], standalone_mode=False)
    return path


def test_config_choices_and_errors():
    assert BACKDROP_MODES == ("auto", *BACKDROP_KINDS)
    assert GeneratorConfig().backdrop == "off" and CFG_DEFAULTS["shapes"]["backdrop"] == "auto"
    for preset in ("ffhq", "afhq", "shapenet"):
        assert "backdrop" not in CFG_DEFAULTS[preset]  # the full presets keep their background generator only
    with pytest.raises(ConfigError, match=r"TrainConfig.G.backdrop: expected one of \('auto', 'off', 'field'\), "
                                          r"got 'sky'"):
        TrainConfig(G=GeneratorConfig(backdrop="sky"))
    with pytest.raises(ConfigError, match=r"'auto' is decided from the dataset"):
        TrainConfig(G=GeneratorConfig(backdrop="auto")).generator_kwargs()
    with pytest.raises(ConfigError, match=r"TrainConfig.G.backdrop_color: expected 3 values, got 2"):
        TrainConfig.from_dict({"G": {"backdrop_color": [0.5, 0.5]}})
    options = TrainConfig(G=GeneratorConfig(backdrop="field", backdrop_color=(0.5, 0.25, 1.0))).to_dict()
    assert TrainConfig.from_dict(options).G.backdrop_color == (0.5, 0.25, 1.0)


def test_cli_bad_value_is_one_line():
    result = CliRunner().invoke(train.main, ["--outdir", "unused", "--cfg", "shapes", "--backdrop", "sky",
                                             "--dry-run"])
    one_line_error(result, "--backdrop")


@pytest.mark.parametrize("background, option, expected", [
    ("grey", [], "field"), ("black", [], "off"), ("grey", ["--backdrop", "off"], "off"),
    ("black", ["--backdrop", "field"], "field")])
def test_cli_auto_follows_the_dataset_border(background, option, expected, tmp_path):
    data = grey_dataset(tmp_path, background=background)
    result = CliRunner().invoke(train.main, ["--outdir", str(tmp_path / "runs"), "--data", data, *TINY, *option,
                                             "--dry-run"])
    assert result.exit_code == 0, result.output
    options = resolved_options(result.output)
    assert options["G"]["backdrop"] == expected
    color = options["G"]["backdrop_color"]
    if expected == "field":  # started from the border the data show (grey 128/255, black 0)
        assert color == pytest.approx([128 / 255] * 3 if background == "grey" else [0.0] * 3, abs=1e-4)
    else:
        assert color == [0.0, 0.0, 0.0]


def test_auto_on_resume_takes_the_snapshots_choice(tmp_path):
    """A run started before the option existed (no backdrop) resumes as it was, even on a grey dataset."""
    data = grey_dataset(tmp_path)
    G = tiny_generator()
    path = str(tmp_path / "old.pt")
    record = checkpoint.module_record(G)
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "G": record, "D": {}, "G_ema": record},
               path)
    from training.dataset import ImageFolderDataset

    dataset = ImageFolderDataset(data)
    data_config = DataConfig(path=data, resolution=dataset.resolution)
    dataset.close()
    preset = CFG_DEFAULTS["shapes"]
    assert train.resolve_backdrop({"backdrop": None, "resume": path}, preset, data_config) == ("off", (0, 0, 0))
    assert train.resolve_backdrop({"backdrop": None}, preset, data_config)[0] == "field"
    field = checkpoint.module_record(tiny_generator(backdrop="field", backdrop_color=(0.5, 0.5, 0.5)))
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "G": field, "D": {}, "G_ema": field},
               path)
    assert train.resolve_backdrop({"backdrop": None, "resume": path}, preset, data_config) == \
        ("field", (0.5, 0.5, 0.5))
    with pytest.raises(click.BadParameter) as refused:
        train.resolve_backdrop({"backdrop": None, "resume": str(tmp_path / "nope.pt")}, preset, data_config)
    assert refused.value.param_hint == "--resume" and "no such snapshot file" in refused.value.format_message()


def sweep_module(monkeypatch):
    import importlib

    importlib.import_module("metrics.metric_main")  # the package, imported before bench/metrics.py can shadow it

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import background_sweep

    return background_sweep


@pytest.mark.parametrize("args, message", [
    (["--families", "heads,cats"], "unknown family 'cats'; expected a comma-separated list of heads, rings, chairs"),
    (["--backgrounds", ","], "nothing given; expected a comma-separated list of black, grey, white"),
    (["--kimg", "0"], "--kimg"), (["--backdrop", "sky"], "--backdrop"), (["--metric", "fid0"], "unknown metric")])
def test_sweep_refuses_bad_options_before_any_work(args, message, tmp_path, monkeypatch):
    sweep = sweep_module(monkeypatch)
    result = CliRunner().invoke(sweep.main, ["--outdir", str(tmp_path / "sweep"), *args])
    one_line_error(result, message)
    assert not os.path.exists(tmp_path / "sweep")


def test_sweep_table_and_resumable_cell_records(tmp_path, monkeypatch):
    """A finished cell is read back and skipped without running anything; the table says which cells pass."""
    sweep = sweep_module(monkeypatch)

    name = sweep.cell_name("rings", "grey", "preset", 1.0)
    record = {"family": "rings", "background": "grey", "backdrop_resolved": "field", "kimg": 1.0,
              "fid_untrained": 200.0, "fid_final": 90.0, "ratio": 0.45, "passed": True, "done": True}
    sweep.write_cell(str(tmp_path / "cells" / f"{name}.json"), record)
    monkeypatch.setattr(sweep, "run_logged", lambda *a, **k: pytest.fail("a finished cell ran a command"))
    got = sweep.run_cell("rings", "grey", "preset", 1.0, str(tmp_path), "fid500_full", 1, 0)
    assert got == record
    failed = dict(record, background="noise", fid_final=150.0, ratio=0.75, passed=False)
    text = sweep.table([got, failed], "fid500_full")
    assert "rings   grey        field          1     200.00    90.00   0.45  yes" in text
    assert "0.75  NO" in text and "1 of 2 cells pass (fid500_full final <= 0.5 x untrained)" in text
