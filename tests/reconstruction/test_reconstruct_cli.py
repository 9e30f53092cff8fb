"""reconstruct.py end to end on tiny data: train (run directory, dry run), test (JSONL + summary with the
baseline, --num-context 3, 2 processes), render (mp4 + .ply) and every user error as one line."""
import json
import os

import pytest
import torch
from click.testing import CliRunner

import reconstruct
from tests.reconstruction.test_loop import TINY_MODEL, make_dataset
from torch_utils import checkpoint, misc

MODEL_ARGS = [arg for key, value in TINY_MODEL.items() for arg in ("--model-arg", f"{key}={json.dumps(value)}")]
TINY_TRAIN = ["--experiment", "scenes", "--resolution", "16", "--batch", "2", "--workers", "0", "--device", "cpu",
              "--backend", "reference", "--lpips-weight", "0", "--tick-steps", "2", *MODEL_ARGS]


def invoke(*args):
    return CliRunner().invoke(reconstruct.cli, [str(a) for a in args], catch_exceptions=False)


def train_run(outdir, data_root, steps: int, *args) -> str:
    """The run directory of a successful `train` of `steps` steps on the tiny setup into an empty `outdir`."""
    result = invoke("train", "--outdir", outdir, "--data", data_root, "--steps", steps, *TINY_TRAIN, *args)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("done: ")
    (name,) = os.listdir(outdir)
    return os.path.join(outdir, name)


def error_line(result) -> str:
    """The single 'Error: ...' line of a failed command."""
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cli-data"))


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("cli-runs"), data_root, 3)


# ---------------------------------------------------------------------------------------------- train
def test_train_writes_a_complete_run_directory(run_dir):
    assert os.path.basename(run_dir).endswith("-scenes-cli-data0-gpus1-batch2")
    names = set(os.listdir(run_dir))
    assert {"training_options.json", "log.txt", "stats.jsonl", "network-snapshot-000003.pt",
            "grid-000001.png", "grid-000003.png"} <= names
    options = json.load(open(os.path.join(run_dir, "training_options.json")))
    assert options["steps"] == 3 and options["model"]["overrides"] == TINY_MODEL
    from PIL import Image

    grid = Image.open(os.path.join(run_dir, "grid-000003.png"))
    assert grid.size == (16 * (2 + 3), 16 * 2)  # context views | target | render | depth; one row per scene
    log = open(os.path.join(run_dir, "log.txt")).read()
    assert "Gaussians per scene: 512" in log and "tick 1" in log


def test_dry_run_of_re10k_prints_the_model_size_without_a_run_directory(tmp_path):
    from reconstruction.encoder import build_encoder

    outdir = tmp_path / "runs"
    result = invoke("train", "--outdir", outdir, "--experiment", "re10k", "--gpus", 4, "--dry-run")
    assert result.exit_code == 0, result.output
    options = json.loads(result.output.split("Training options:\n", 1)[1].split("\n\nModel summary:", 1)[0])
    summary = json.loads(result.output.split("Model summary:\n", 1)[1].split("\n\n", 1)[0])
    assert options["num_gpus"] == 4 and options["data"]["image_shape"] == [256, 256]
    expected = misc.count_parameters(build_encoder("re10k"))
    assert summary["encoder_parameters"] == expected
    assert summary["gaussians_per_scene"] == 131_072 and "Gaussians per scene: 131,072" in result.output
    assert f"{expected:,}" in result.output
    assert not outdir.exists()


def test_train_bad_inputs_are_one_line(data_root, run_dir, tmp_path):
    out = tmp_path / "runs"
    assert "no such dataset folder" in error_line(invoke("train", "--outdir", out, "--data", tmp_path / "missing",
                                                         *TINY_TRAIN))
    assert "'nope' is not one of" in error_line(invoke("train", "--outdir", out, "--experiment", "nope"))
    assert "evaluation only" in error_line(invoke("train", "--outdir", out, "--data", data_root,
                                                  "--experiment", "dtu"))
    assert "unknown name 'huge'" in error_line(invoke("train", "--outdir", out, "--data", data_root,
                                                      "--model-preset", "huge"))
    assert "unknown key(s) colour" in error_line(invoke("train", "--outdir", out, "--data", data_root,
                                                        *TINY_TRAIN, "--model-arg", "colour=1"))
    assert "KEY=VALUE" in error_line(invoke("train", "--outdir", out, "--data", data_root, "--model-arg", "x"))
    # --init with the wrong keys: the listing names them
    state = {"backbone.nothing": torch.zeros(1)}
    torch.save(state, tmp_path / "init.pt")
    line = error_line(invoke("train", "--outdir", out, "--data", data_root, *TINY_TRAIN, "--init",
                             tmp_path / "init.pt"))
    assert "(--init) does not match CostVolumeEncoder" in line and "unexpected keys backbone.nothing" in line
    # --resume of another architecture, of a GAN snapshot, of another schedule
    line = error_line(invoke("train", "--outdir", out, "--data", data_root, "--steps", 3, *TINY_TRAIN,
                             "--model-arg", "num_candidates=6", "--resume", run_dir))
    assert "--resume of a different architecture: num_candidates=8 (snapshot) vs 6" in line
    torch.save({"format": checkpoint.FORMAT, "version": 1}, tmp_path / "gan.pt")
    assert "GSGAN (GAN) snapshot" in error_line(invoke("train", "--outdir", out, "--data", data_root, *TINY_TRAIN,
                                                       "--resume", tmp_path / "gan.pt"))
    assert "--steps=3" in error_line(invoke("train", "--outdir", out, "--data", data_root, "--steps", 5,
                                            *TINY_TRAIN, "--resume", run_dir))
    assert not out.exists()


def test_train_resume_with_a_worker_matches_the_uninterrupted_run(data_root, run_dir, tmp_path):
    """--resume from step 1 of the fixture's run with --workers 1 (the fixture used 0) ends at its step-3 state."""
    result = invoke("train", "--outdir", tmp_path, "--data", data_root, "--steps", 3, *TINY_TRAIN, "--workers", 1,
                    "--resume", os.path.join(run_dir, "network-snapshot-000001.pt"))
    assert result.exit_code == 0, result.output
    (name,) = os.listdir(tmp_path)
    a = checkpoint.read_recon_snapshot_dict(os.path.join(tmp_path, name, "network-snapshot-000003.pt"))
    b = checkpoint.read_recon_snapshot_dict(os.path.join(run_dir, "network-snapshot-000003.pt"))
    assert a["progress"]["examples_seen"] == b["progress"]["examples_seen"] == [6]
    assert all(torch.equal(value, b["encoder"]["state_dict"][key]) for key, value in a["encoder"]["state_dict"].items())


# ---------------------------------------------------------------------------------------------- test
def test_test_writes_per_scene_jsonl_and_a_summary_with_the_baseline(data_root, run_dir, tmp_path):
    result = invoke("test", "--network", run_dir, "--data", data_root, "--device", "cpu", "--backend", "reference",
                    "--save-images", tmp_path / "images")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["num_scenes"] == 2 and summary["gaussians_per_scene"] == 512
    assert summary["snapshot"].endswith("network-snapshot-000003.pt")
    for name in ("psnr", "ssim", "lpips", "baseline_psnr", "baseline_ssim", "baseline_lpips", "seconds_per_scene"):
        assert isinstance(summary[name], float), name
    path = os.path.join(run_dir, "metric-recon-test.jsonl")
    records = [json.loads(line) for line in open(path)]
    assert [r["key"] for r in records] == ["test0000", "test0001"]
    assert records[0]["context"] == [1, 7] and records[0]["target"] == [3, 4, 6]
    assert summary["psnr"] == pytest.approx(sum(r["psnr"] for r in records) / 2)
    assert sorted(os.listdir(tmp_path / "images" / "test0000")) == ["000003.png", "000004.png", "000006.png"]

    three = invoke("test", "--network", run_dir, "--data", data_root, "--device", "cpu", "--backend", "reference",
                   "--num-context", 3, "--limit", 1)
    assert three.exit_code == 0, three.output
    summary3 = json.loads(three.output.strip().splitlines()[-1])
    assert summary3["num_scenes"] == 1 and summary3["gaussians_per_scene"] == 3 * 16 * 16


def test_test_in_two_processes_gathers_every_scene(data_root, run_dir):
    result = invoke("test", "--network", os.path.join(run_dir, "network-snapshot-000003.pt"), "--data", data_root,
                    "--device", "cpu", "--backend", "reference", "--gpus", 2)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["num_scenes"] == 2
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metric-recon-test.jsonl"))]
    assert [r["key"] for r in records] == ["test0000", "test0001"]


def test_test_bad_inputs_are_one_line(data_root, run_dir, tmp_path):
    base = ["--device", "cpu", "--backend", "reference"]
    torch.save({"format": checkpoint.FORMAT, "version": 1, "G": {}}, tmp_path / "gan.pt")
    assert "is a GSGAN (GAN) snapshot, not a reconstruction snapshot" in error_line(
        invoke("test", "--network", tmp_path / "gan.pt", "--data", data_root, *base))
    assert "no such snapshot file or run directory" in error_line(
        invoke("test", "--network", tmp_path / "nothing", "--data", data_root, *base))
    assert "no such dataset folder" in error_line(
        invoke("test", "--network", run_dir, "--data", tmp_path / "nothing", *base))
    assert "lists only 3 context view(s)" in error_line(
        invoke("test", "--network", run_dir, "--data", data_root, "--num-context", 4, *base))
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"absent": {"context": [0, 2], "target": [1]}}))
    assert "key 'absent' is not in" in error_line(
        invoke("test", "--network", run_dir, "--data", data_root, "--index", index, *base))
    index.write_text(json.dumps({"test0000": {"context": [0, 2], "target": [57]}}))
    assert "target frame 57 out of range (scene has 12 frames)" in error_line(
        invoke("test", "--network", run_dir, "--data", data_root, "--index", index, *base))
    empty = tmp_path / "empty"
    make_dataset(empty, train_scenes=1, test_scenes=1)
    os.remove(empty / "evaluation_index.json")
    assert "has no evaluation_index.json" in error_line(
        invoke("test", "--network", run_dir, "--data", empty, *base))


# ---------------------------------------------------------------------------------------------- render
def test_render_writes_a_video_and_a_ply(data_root, run_dir, tmp_path):
    import imageio_ffmpeg

    from splatting import read_ply

    result = invoke("render", "--network", run_dir, "--data", data_root, "--index-entry", 1, "--frames", 6,
                    "--outdir", tmp_path, "--device", "cpu", "--backend", "reference")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["test0001.mp4", "test0001.ply"]
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "test0001.mp4"))
    meta = next(reader)
    frames = list(reader)
    assert meta["size"] == (32, 16) and len(frames) == 6  # colour | depth side by side
    gaussians = read_ply(str(tmp_path / "test0001.ply"))
    assert gaussians.num_gaussians == 3 * 16 * 16  # the entry's three context views
    other = tmp_path / "other"
    result = invoke("render", "--network", run_dir, "--data", data_root, "--split", "train", "--key", "train0001",
                    "--context", "2,9", "--frames", 3, "--outdir", other, "--no-ply", "--device", "cpu",
                    "--backend", "reference")
    assert result.exit_code == 0, result.output
    assert os.listdir(other) == ["train0001.mp4"]


def test_render_bad_inputs_are_one_line(data_root, run_dir, tmp_path):
    base = ["--network", run_dir, "--data", data_root, "--outdir", tmp_path / "out", "--device", "cpu",
            "--backend", "reference"]
    assert "exactly one of --key KEY and --index-entry N" in error_line(invoke("render", *base))
    assert "has 2 entries; got 5" in error_line(invoke("render", *base, "--index-entry", 5))
    assert "no entry for key 'train0000'" in error_line(invoke("render", *base, "--key", "train0000"))
    assert "no scene with key 'zzz'" in error_line(invoke("render", *base, "--key", "zzz", "--context", "1,2"))
    assert "context frame 40 out of range (scene has 12 frames)" in error_line(
        invoke("render", *base, "--key", "test0000", "--context", "1,40"))
    assert "expected comma-separated frame indices" in error_line(
        invoke("render", *base, "--key", "test0000", "--context", "a,b"))
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
