"""Generative densification in the reconstruction tools on tiny data (reference rasterizer, 16x16): options,
training end to end, fine-tuning from a base run, exact resume, 2-process DDP, evaluation with the labelled
oracle, stage-coloured media, the dry-run counts of the official preset and every user error as one line."""
import json
import os

import numpy as np
import pytest
import torch

from reconstruction import evaluate as E
from reconstruction import loop, media, tick_outputs, train_setup
from reconstruction.config import ReconTrainOptions, resolve_options
from tests.reconstruction.test_loop import make_dataset, tiny_options
from tests.reconstruction.test_reconstruct_cli import TINY_TRAIN, error_line, invoke, train_run
from torch_utils import checkpoint

# A densifier for the tiny encoder of test_loop (43-d features, SH degree 1): narrow, one block per stage.
TINY_DENSIFIER = {"feature_dim": 43, "detail_dim": 8, "detail_heads": 2, "channels": [16, 12, 8],
                  "num_heads": [2, 2, 1], "depths": [1, 1, 1], "patch_size": 16}
K_NUM = 32
DENSIFY_ARGS = ["--densify", "--densify-preset", "small", "--k-num", str(K_NUM),
                *[arg for key, value in TINY_DENSIFIER.items()
                  for arg in ("--densify-arg", f"{key}={json.dumps(value)}")]]
# per view: 224 unselected + leaves 32 (stage 1) + 12 (stage 2) + 104 (stage 3) = 372; 2 views
STAGE_COUNTS = [448, 64, 24, 208]
DENSE_PER_SCENE = sum(STAGE_COUNTS)


def dense_options(data, outdir, **changes):
    values = {"densify.enabled": True, "densify.preset": "small", "densify.overrides": TINY_DENSIFIER,
              "densify.k_num": K_NUM}
    values.update(changes)
    return tiny_options(data, outdir, **values)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("dense-data"))


@pytest.fixture(scope="module")
def base_run(data_root, tmp_path_factory):
    """A 2-step run without densification (the base of the fine-tunes)."""
    return train_run(tmp_path_factory.mktemp("base-runs"), data_root, 2)


@pytest.fixture(scope="module")
def dense_run(data_root, tmp_path_factory):
    """A 2-step run with densification from scratch."""
    return train_run(tmp_path_factory.mktemp("dense-runs"), data_root, 2, *DENSIFY_ARGS)


# ---------------------------------------------------------------------------------------------- options
def test_densify_options_default_off_and_old_option_files_still_load():
    scenes, re10k = resolve_options("scenes"), resolve_options("re10k")
    assert not scenes.densify.enabled and scenes.densify.preset == "small" and re10k.densify.preset == "re10k"
    assert resolve_options("dtu").densify.preset == "re10k" and scenes.densify.k_num is None
    old = scenes.to_dict()
    del old["densify"]  # a training_options.json written before densification existed
    loaded = ReconTrainOptions.from_dict(old)
    assert not loaded.densify.enabled and loaded.replace(densify=scenes.densify) == scenes
    on = resolve_options("scenes", {"densify.enabled": True, "densify.k_num": 7, "densify.overrides": {"a": 1}})
    assert ReconTrainOptions.from_json(on.to_json()) == on
    with pytest.raises(ValueError, match="--k-num must be >= 1"):
        resolve_options("scenes", {"densify.k_num": 0}).validate()


def test_densify_generator_is_a_pure_function_of_seed_rank_step_and_pass():
    draw = lambda *key: torch.rand(4, generator=train_setup.densify_generator(*key))  # noqa: E731
    assert torch.equal(draw(0, 0, 5, 0), draw(0, 0, 5, 0))
    for other in ((1, 0, 5, 0), (0, 1, 5, 0), (0, 0, 6, 0), (0, 0, 5, 1)):
        assert not torch.equal(draw(0, 0, 5, 0), draw(*other)), other


# ---------------------------------------------------------------------------------------------- training
def test_train_with_densify_writes_a_snapshot_with_a_densifier(dense_run):
    from PIL import Image

    data = checkpoint.read_recon_snapshot_dict(os.path.join(dense_run, "network-snapshot-000002.pt"))
    assert data["densifier"]["class"] == "GaussianDensifier" and data["densifier"]["init_kwargs"]["k_num"] == K_NUM
    options = ReconTrainOptions.from_dict(data["options"])
    assert options.densify.enabled and options.densify.overrides == TINY_DENSIFIER
    loaded = checkpoint.load_recon_snapshot(os.path.join(dense_run, "network-snapshot-000002.pt"))
    assert loaded["densifier"].counts(2, 16, 16)["per_scene"] == DENSE_PER_SCENE
    stats = [json.loads(line) for line in open(os.path.join(dense_run, "stats.jsonl"))]
    for key in ("Loss/coarse/mse", "Loss/fine/mse", "Loss/total", "Metrics/psnr_coarse", "Metrics/psnr_fine",
                "Densify/gaussians", "Timing/densify_sec", "Progress/grad_norm"):
        assert key in stats[-1], key
    assert stats[-1]["Densify/gaussians"]["mean"] == DENSE_PER_SCENE
    # the loss is the sum of the coarse and the fine terms (MSE only here)
    last = stats[-1]
    assert last["Loss/total"]["mean"] == pytest.approx(last["Loss/coarse/mse"]["mean"] + last["Loss/fine/mse"]["mean"],
                                                       rel=1e-5)
    grid = Image.open(os.path.join(dense_run, "grid-000002.png"))
    assert grid.size == (16 * (2 + 5), 16 * 2)  # context | target | coarse | fine | selected | depth
    cells = np.asarray(grid)[:16, 16 * 5:16 * 6]  # the `selected` cell of the first scene
    red = (cells[..., 0] == 255) & (cells[..., 1] == 0) & (cells[..., 2] == 0)
    assert red.sum() == K_NUM  # the selected pixels; the others are dimmed to at most half brightness
    log = open(os.path.join(dense_run, "log.txt")).read()
    assert "GaussianDensifier" in log and f"512 coarse -> {DENSE_PER_SCENE:,} Gaussians per scene" in log
    assert "psnr coarse" in log and " fine " in log


def test_snapshots_without_a_densifier_record_load_as_plain_runs(dense_run, tmp_path):
    """Snapshots written before densification existed have no "densifier" key."""
    data = checkpoint.read_recon_snapshot_dict(os.path.join(dense_run, "network-snapshot-000002.pt"))
    del data["densifier"]
    old = str(tmp_path / "old.pt")
    torch.save(data, old)
    loaded = checkpoint.load_recon_snapshot(old)
    assert loaded["densifier"] is None and loaded["encoder"].feature_dim == 43
    data["densifier"] = {"class": "CostVolumeEncoder", "init_kwargs": {}, "state_dict": {}}
    torch.save(data, old)
    with pytest.raises(checkpoint.SnapshotError, match="densifier is a 'CostVolumeEncoder', expected Gaussian"):
        checkpoint.load_recon_snapshot(old)


def test_selection_overlay_marks_exactly_the_selected_pixels():
    image = torch.full((1, 3, 2, 3), 0.8)
    out = tick_outputs.selection_overlay(image, torch.tensor([[1, 5]]))
    red = (out[0, 0] == 1) & (out[0, 1] == 0) & (out[0, 2] == 0)
    assert red.flatten().nonzero().flatten().tolist() == [1, 5]
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), 0.4))


def test_densifier_takes_its_own_peak_learning_rate(data_root, tmp_path):
    """--densify-lr / --densify-eps: the densifier's parameters are the optimizer's second group, with their own
    OneCycle peak and Adam epsilon; without --densify-lr both groups follow --lr."""
    peaks, eps = {}, {}
    for name, changes in (("own", {"optim.densify_lr": 1e-3, "optim.densify_eps": 1e-12}), ("same", {})):
        os.makedirs(tmp_path / name)
        trainer = loop.ReconTrainer(dense_options(data_root, str(tmp_path), steps=100, **changes),
                                    str(tmp_path / name), 0, 1, torch.device("cpu"))
        try:
            trainer.setup()
            encoder_group, densifier_group = trainer.optimizer.param_groups
            assert len(encoder_group["params"]) == len(list(trainer.encoder.parameters()))
            assert len(densifier_group["params"]) == len(list(trainer.densifier.parameters()))
            peaks[name] = (encoder_group["max_lr"], densifier_group["max_lr"])
            eps[name] = (encoder_group["eps"], densifier_group["eps"])
            # the schedule starts every group at its peak / div_factor
            assert densifier_group["lr"] == pytest.approx(peaks[name][1] / 25)
        finally:
            trainer.close()
    assert peaks == {"own": (2e-4, 1e-3), "same": (2e-4, 2e-4)}
    assert eps == {"own": (1e-8, 1e-12), "same": (1e-8, ReconTrainOptions().optim.densify_eps)}
    with pytest.raises(ValueError, match="--densify-lr must be > 0"):
        dense_options(data_root, str(tmp_path), **{"optim.densify_lr": -1.0}).validate()
    with pytest.raises(ValueError, match="densify_lr: expected a finite number"):
        dense_options(data_root, str(tmp_path), **{"optim.densify_lr": float("nan")})
    with pytest.raises(ValueError, match="--densify-eps must be > 0"):
        dense_options(data_root, str(tmp_path), **{"optim.densify_eps": 0.0}).validate()


def test_fine_tune_from_a_base_run_starts_fresh_at_step_zero(data_root, base_run, tmp_path):
    base_path = os.path.join(base_run, "network-snapshot-000002.pt")
    base = checkpoint.read_recon_snapshot_dict(base_path)
    assert base["densifier"] is None  # written before / without densification
    for i, start in enumerate(({"resume": base_path}, {"init": base_path})):
        os.makedirs(tmp_path / f"x{i}")
        trainer = loop.ReconTrainer(dense_options(data_root, str(tmp_path), steps=3, **start),
                                    str(tmp_path / f"x{i}"), 0, 1, torch.device("cpu"))
        try:
            trainer.setup()
            assert trainer.step == 0 and trainer.examples_seen == 0 and trainer.resume_rng is None
            assert trainer.scheduler.last_epoch == 0 and not trainer.optimizer.state
            for name, value in trainer.encoder.state_dict().items():
                assert torch.equal(value, base["encoder"]["state_dict"][name]), name
            assert trainer.densifier is not None
            assert len(trainer.params) == len(list(trainer.encoder.parameters())) + \
                len(list(trainer.densifier.parameters()))
        finally:
            trainer.close()
    # end to end: the fine-tune may span another --steps; its snapshots count from 0
    run = train_run(tmp_path / "runs", data_root, 3, *DENSIFY_ARGS, "--resume", base_run)
    final = checkpoint.read_recon_snapshot_dict(os.path.join(run, "network-snapshot-000003.pt"))
    assert final["progress"]["step"] == 3 and final["progress"]["examples_seen"] == [6]
    assert final["scheduler"]["total_steps"] == 13 and final["densifier"] is not None
    log = open(os.path.join(run, "log.txt")).read()
    assert "fine-tuning with generative densification: encoder weights from" in log


def test_frozen_encoder_fine_tune_trains_the_densifier_alone(data_root, base_run, dense_run, tmp_path):
    """--freeze-encoder: the base's encoder (running statistics included: it runs in eval mode) is unchanged, the
    optimizer holds the densifier only, the loss is the fine render's, and a resume must freeze it too."""
    base = checkpoint.read_recon_snapshot_dict(os.path.join(base_run, "network-snapshot-000002.pt"))
    run = train_run(tmp_path / "runs", data_root, 2, *DENSIFY_ARGS, "--freeze-encoder", "--resume", base_run)
    final = checkpoint.read_recon_snapshot_dict(os.path.join(run, "network-snapshot-000002.pt"))
    for name, value in base["encoder"]["state_dict"].items():
        assert torch.equal(value, final["encoder"]["state_dict"][name]), name
    densifier = checkpoint.build_module(final["densifier"])
    assert len(final["optimizer"]["state"]) == len(list(densifier.parameters()))
    heads = [v for k, v in final["densifier"]["state_dict"].items() if k.endswith("head.2.weight")]
    assert heads and all(bool(h.abs().sum() > 0) for h in heads)  # zero-initialized, so these have trained
    last = [json.loads(line) for line in open(os.path.join(run, "stats.jsonl"))][-1]
    assert "Loss/coarse/mse" not in last and "Metrics/psnr_coarse" not in last
    assert last["Loss/total"]["mean"] == pytest.approx(last["Loss/fine/mse"]["mean"], rel=1e-6)
    assert last["Progress/lr"] == last["Progress/lr_densify"]  # the log shows the rate of what trains
    assert "psnr fine" in open(os.path.join(run, "log.txt")).read()
    common = ["train", "--outdir", tmp_path / "more", "--data", data_root, "--steps", 2, *TINY_TRAIN, *DENSIFY_ARGS]
    assert "trained with --freeze-encoder; resume it the same way" in error_line(invoke(*common, "--resume", run))
    line = error_line(invoke(*common, "--freeze-encoder", "--resume", dense_run))
    assert "trained without --freeze-encoder" in line
    assert not (tmp_path / "more").exists()


def test_exact_resume_of_a_densify_run(data_root, tmp_path):
    full = loop.launch(dense_options(data_root, str(tmp_path / "a")))
    assert full.status == "done" and full.step == 4
    resumed = loop.launch(dense_options(data_root, str(tmp_path / "b"),
                                        resume=os.path.join(full.run_dir, "network-snapshot-000002.pt")))
    assert resumed.step == 4 and resumed.rank_digests == full.rank_digests
    a, b = (checkpoint.read_recon_snapshot_dict(r.snapshot) for r in (full, resumed))
    for name, value in a["densifier"]["state_dict"].items():
        assert torch.equal(value, b["densifier"]["state_dict"][name]), name
    for index, state in a["optimizer"]["state"].items():  # one Adam over both modules
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][index]["exp_avg"])
    modules = [checkpoint.build_module(a[key]) for key in ("encoder", "densifier")]
    assert len(a["optimizer"]["state"]) == sum(len(list(m.parameters())) for m in modules)
    assert a["progress"]["examples_seen"] == b["progress"]["examples_seen"] == [8]
    other = loop.launch(dense_options(data_root, str(tmp_path / "c"), seed=1))
    assert other.rank_digests != full.rank_digests


def test_two_process_densify_training_keeps_ranks_identical(data_root, tmp_path):
    result = loop.launch(dense_options(data_root, str(tmp_path / "a"), num_gpus=2, steps=2, batch_gpu=1))
    assert result.status == "done" and len(result.rank_digests) == 2 and len(set(result.rank_digests)) == 1


# ---------------------------------------------------------------------------------------------- evaluation
def test_test_reports_coarse_fine_and_the_labelled_oracle(data_root, dense_run):
    result = invoke("test", "--network", dense_run, "--data", data_root, "--device", "cpu", "--backend",
                    "reference")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    for name in ("psnr", "ssim", "lpips", "baseline_psnr", "seconds_per_scene", "coarse_psnr", "coarse_ssim",
                 "coarse_lpips", "oracle_best_of_psnr", "oracle_best_of_ssim", "oracle_best_of_lpips",
                 "densify_selection_seconds_per_scene", "densify_decoder_seconds_per_scene",
                 "densify_seconds_per_scene"):
        assert isinstance(summary[name], float), name
    assert summary["oracle_note"] == E.ORACLE_NOTE and "not a valid method number" in summary["oracle_note"]
    assert summary["gaussians_per_scene"] == DENSE_PER_SCENE and summary["gaussians_per_stage"] == STAGE_COUNTS
    records = [json.loads(line) for line in open(os.path.join(dense_run, "metric-recon-test.jsonl"))]
    for r in records:
        better = "fine" if r["psnr"] >= r["coarse_psnr"] else "coarse"
        assert r["oracle_choice"] == better
        prefix = "" if better == "fine" else "coarse_"
        assert all(r[f"oracle_best_of_{n}"] == r[f"{prefix}{n}"] for n in ("psnr", "ssim", "lpips"))
        assert r["oracle_best_of_psnr"] == max(r["psnr"], r["coarse_psnr"])
        assert r["densify_selection_seconds"] + r["densify_decoder_seconds"] <= r["densify_seconds"] <= r["seconds"]
    assert summary["psnr"] == pytest.approx(sum(r["psnr"] for r in records) / len(records))
    assert summary["coarse_psnr"] != summary["psnr"]  # fine and coarse are different renders


def test_densify_record_picks_the_higher_psnr_per_scene():
    class Dense:
        stage_ids = torch.tensor([[0, 0, 1, 2, 2]])
        timings = {"selection": 0.1, "decoder": 0.2, "total": 0.4}

    fine = {"psnr": 20.0, "ssim": 0.5, "lpips": 0.3}
    out = E.densify_record(fine, {"psnr": 21.0, "ssim": 0.4, "lpips": 0.2}, Dense, 4)
    assert out["oracle_choice"] == "coarse" and out["oracle_best_of_ssim"] == 0.4
    assert out["gaussians_per_stage"] == [2, 1, 2] and out["densify_seconds"] == 0.4
    out = E.densify_record(fine, {"psnr": 19.0, "ssim": 0.9, "lpips": 0.1}, Dense, 4)
    assert out["oracle_choice"] == "fine" and out["oracle_best_of_ssim"] == 0.5  # chosen by PSNR only


# ---------------------------------------------------------------------------------------------- media
def test_render_fine_coarse_and_colour_by_stage(data_root, dense_run, base_run, tmp_path):
    import imageio_ffmpeg

    from splatting import read_ply
    from splatting.sh import SH_C0

    base = ["--network", dense_run, "--data", data_root, "--index-entry", 0, "--frames", 3, "--device", "cpu",
            "--backend", "reference"]
    result = invoke("render", *base, "--outdir", tmp_path / "a", "--color-by-stage")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "a")) == ["test0000-stages.mp4", "test0000-stages.ply", "test0000.mp4",
                                                  "test0000.ply"]
    assert len(list(imageio_ffmpeg.read_frames(str(tmp_path / "a" / "test0000-stages.mp4")))) == 1 + 3
    # the index entry has three context views: 3 x 372
    fine = read_ply(str(tmp_path / "a" / "test0000.ply"))
    stages = read_ply(str(tmp_path / "a" / "test0000-stages.ply"))
    assert fine.num_gaussians == stages.num_gaussians == 3 * DENSE_PER_SCENE // 2
    assert torch.allclose(fine.means, stages.means)
    colours = (stages.sh[0, :, 0] * SH_C0 + 0.5).round(decimals=4)
    palette = torch.tensor(media.STAGE_COLORS[:4])
    found = [int((colours == c).all(dim=1).sum()) for c in palette]
    assert found == [3 * n // 2 for n in STAGE_COUNTS]
    assert float(stages.sh[0, :, 1:].abs().max()) == 0.0
    result = invoke("render", *base, "--outdir", tmp_path / "b", "--coarse")
    assert result.exit_code == 0, result.output
    assert read_ply(str(tmp_path / "b" / "test0000.ply")).num_gaussians == 3 * 256
    line = error_line(invoke("render", *base[:1], base_run, *base[2:], "--outdir", tmp_path / "c",
                             "--color-by-stage"))
    assert "trained without generative densification" in line


def test_color_by_stage_gives_the_palette_through_sh_evaluation():
    from splatting import Gaussians
    from splatting.sh import sh_to_color

    n = 4
    g = Gaussians(means=torch.randn(1, n, 3), log_scales=torch.zeros(1, n, 3), quats=torch.randn(1, n, 4),
                  opacity_logits=torch.zeros(1, n), sh=torch.randn(1, n, 4, 3))
    out = media.color_by_stage(g, torch.tensor([0, 1, 2, 3]))
    colour = sh_to_color(out.sh, torch.nn.functional.normalize(torch.randn(1, n, 3), dim=-1))
    assert torch.allclose(colour[0], torch.tensor(media.STAGE_COLORS[:4]), atol=1e-6)
    assert torch.equal(out.means, g.means) and torch.equal(out.opacity_logits, g.opacity_logits)
    with pytest.raises(ValueError, match="colours for at most"):
        media.color_by_stage(g, torch.tensor([0, 1, 2, 9]))


# ---------------------------------------------------------------------------------------------- CLI
def test_dry_run_counts_of_the_official_densify_preset(tmp_path):
    result = invoke("train", "--outdir", tmp_path / "runs", "--experiment", "re10k", "--densify", "--dry-run")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.split("Model summary:\n", 1)[1].split("\n\n", 1)[0])
    assert summary["gaussians_per_scene"] == 347_072 and summary["coarse_gaussians_per_scene"] == 131_072
    assert (summary["encoder_parameters"], summary["densifier_parameters"]) == (11_940_997, 15_829_852)
    assert summary["total_parameters"] == 27_770_849 and summary["k_num"] == 30_000
    assert "Gaussians per scene: 347,072" in result.output
    assert "encoder 11,940,997 + densifier 15,829,852 = 27,770,849" in result.output
    assert not (tmp_path / "runs").exists()


def test_densify_bad_inputs_are_one_line(data_root, base_run, dense_run, tmp_path):
    out = tmp_path / "runs"
    common = ["train", "--outdir", out, "--data", data_root, "--steps", 2, *TINY_TRAIN]
    # the small preset takes 83-d features, the tiny encoder gives 43
    line = error_line(invoke(*common, "--densify", "--k-num", K_NUM))
    assert "feature_dim=83" in line and "feature_dim=43" in line
    line = error_line(invoke(*common, *DENSIFY_ARGS, "--k-num", 300))
    assert "k_num=300 exceeds the H*W=256" in line
    line = error_line(invoke(*common, *DENSIFY_ARGS, "--densify-arg", "sh_degree=3"))
    assert "sh_degree=3" in line and "sh_degree=1" in line
    assert "unknown key(s) colour" in error_line(invoke(*common, *DENSIFY_ARGS, "--densify-arg", "colour=1"))
    assert "unknown name 'huge'" in error_line(invoke(*common, *DENSIFY_ARGS, "--densify-preset", "huge"))
    assert "given without --densify" in error_line(invoke(*common, "--k-num", 3))
    assert "--densify-lr given without --densify" in error_line(invoke(*common, "--densify-lr", 1e-3))
    assert "--densify-eps given without --densify" in error_line(invoke(*common, "--densify-eps", 1e-12))
    assert "--freeze-encoder given without --densify" in error_line(invoke(*common, "--freeze-encoder"))
    assert "--freeze-encoder: needs --densify and trained encoder weights" in error_line(
        invoke(*common, *DENSIFY_ARGS, "--freeze-encoder"))
    assert "densify_lr: expected a finite number, got nan" in error_line(invoke(*common, *DENSIFY_ARGS,
                                                                                "--densify-lr", "nan"))
    assert "KEY=VALUE" in error_line(invoke(*common, *DENSIFY_ARGS, "--densify-arg", "x"))
    # --resume of files that are not reconstruction snapshots
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert "is not a reconstruction snapshot" in error_line(invoke(*common, *DENSIFY_ARGS, "--resume",
                                                                   tmp_path / "other.pt"))
    torch.save({"format": checkpoint.FORMAT, "version": 1}, tmp_path / "gan.pt")
    assert "GSGAN (GAN) snapshot" in error_line(invoke(*common, *DENSIFY_ARGS, "--resume", tmp_path / "gan.pt"))
    # a densified run resumed without --densify, or with another densifier
    assert "resume it with --densify" in error_line(invoke(*common, "--resume", dense_run))
    line = error_line(invoke(*common, *DENSIFY_ARGS, "--densify-arg", "detail_heads=4", "--resume", dense_run))
    assert "different densifier: detail_heads=2 (snapshot) vs 4" in line
    # the fine-tune's encoder must match the base's
    line = error_line(invoke(*common, *DENSIFY_ARGS, "--model-arg", "num_candidates=6", "--resume", base_run))
    assert "different architecture: num_candidates=8 (snapshot) vs 6" in line
    assert not out.exists()
