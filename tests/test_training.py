"""End-to-end training on CPU with a tiny model: artefacts, exact resume, faults, signals, multi-process."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from torch_utils import checkpoint
from training import training_loop
from training.config import DataConfig, DiscriminatorConfig, GeneratorConfig, LossConfig, TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_tiny_dataset(base_dir: str) -> str:
    """32 synthetic 16x16 images (dataset_tool.py synth), built once per session directory."""
    path = os.path.join(base_dir, "tiny16.zip")
    if not os.path.isfile(path):
        import dataset_tool

        dataset_tool.synth.main(["--poses", "ffhq", "--count", "32", "--resolution", "16", "--seed", "0",
                                 "--dest", path], standalone_mode=False)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(str(tmp_path_factory.getbasetemp()))


def tiny_config(data: str, outdir: str, data_workers: int = 0, **changes) -> TrainConfig:
    """A model small enough for a few CPU iterations per test (reference rasterizer: no compilation)."""
    config = TrainConfig(
        cfg="shapes", outdir=outdir, seed=3, batch_size=4, batch_gpu=4, total_kimg=0.012, kimg_per_tick=0.004,
        snapshot_ticks=1, image_snapshot_ticks=1, grid_size=(2, 2), device="cpu", ema_kimg=4 * 10 / 32,
        data=DataConfig(path=data, workers=data_workers),
        G=GeneratorConfig(num_points=16, res_end=16, channel_base=64, channel_max=32, extra=dict(
            z_dim=32, w_dim=32, num_transformer_layers=1, num_heads=2, bg_num_points=50, bg_channels=16,
            view_dim=8, const_pe_length=16, rendering_backend="reference")),
        D=DiscriminatorConfig(channel_base=512, channel_max=32, mbstd_group_size=2,
                              extra=dict(cam_hidden=32, pose_feat_dim=16)),
        # r1 every 2 iterations, blur fading and the background switching on mid-run: all must survive resume.
        loss=LossConfig(r1_interval=2, blur_fade_kimg=0.016, background_start_kimg=0.008, prob_uniform=0.5,
                        knn_k=4))
    return config.replace(**changes)


def read_stats(run_dir):
    with open(os.path.join(run_dir, "stats.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def state_of(path):
    data = checkpoint.read_snapshot_dict(path)
    tensors = {}
    for key in ("G", "D", "G_ema"):
        for name, value in data[key]["state_dict"].items():
            tensors[f"{key}.{name}"] = value
    for key in ("G", "D"):
        for pid, state in data["optimizers"][key]["state"].items():
            for name, value in state.items():
                tensors[f"opt{key}.{pid}.{name}"] = torch.as_tensor(value)
    return data, tensors


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight"))
    return training_loop.launch(tiny_config(tiny_data, out))


def test_one_run_writes_every_artefact(straight_run):
    result = straight_run
    assert result.status == "done" and result.cur_nimg == 12
    run_dir = result.run_dir
    files = set(os.listdir(run_dir))
    for name in ("training_options.json", "log.txt", "stats.jsonl", "reals.png", "fakes000000.png",
                 "fakes000000_depth.png", "network-snapshot-000000.pt"):
        assert name in files, name
    assert not [f for f in files if f.startswith(".tmp")]
    with open(os.path.join(run_dir, "training_options.json")) as handle:
        options = TrainConfig.from_json(handle.read())
    assert options == tiny_config(options.data.path, options.outdir)  # the run is reproducible from this file
    records = read_stats(run_dir)
    assert [r["Progress/tick"]["mean"] for r in records] == [0, 1, 2]
    assert [r["Progress/kimg"]["mean"] for r in records] == pytest.approx([0.004, 0.008, 0.012])
    for key in ("Loss/G/loss", "Loss/D/loss", "Loss/r1_penalty", "Timing/sec_per_kimg", "Resources/cpu_mem_gb"):
        assert key in records[-1] or key in records[0], key
    log = open(os.path.join(run_dir, "log.txt")).read()
    assert "tick 2" in log and "Gaussians per sample" in log
    snap = checkpoint.load_snapshot(result.snapshot)
    assert snap["progress"]["cur_nimg"] == 12 and snap["progress"]["batch_idx"] == 3
    assert type(snap["G_ema"]).__name__ == "GSGenerator" and type(snap["D"]).__name__ == "Discriminator"


def test_resume_is_exact(straight_run, tiny_data, tmp_path):
    first = training_loop.launch(tiny_config(tiny_data, str(tmp_path), total_kimg=0.008))
    assert first.status == "done" and first.cur_nimg == 8
    second = training_loop.launch(tiny_config(tiny_data, str(tmp_path), total_kimg=0.012, resume=first.run_dir))
    assert second.status == "done" and second.cur_nimg == 12
    assert second.run_dir != first.run_dir and os.path.dirname(second.run_dir) == str(tmp_path)
    assert [r["Progress/kimg"]["mean"] for r in read_stats(second.run_dir)] == pytest.approx([0.012])
    ref, ref_tensors = state_of(straight_run.snapshot)
    got, got_tensors = state_of(second.snapshot)
    assert got["progress"] == ref["progress"]
    assert ref_tensors.keys() == got_tensors.keys()
    for name, value in ref_tensors.items():
        torch.testing.assert_close(got_tensors[name], value, rtol=0, atol=1e-6, msg=name)


def test_nan_stops_with_last_good_snapshot(tiny_data, tmp_path):
    config = tiny_config(tiny_data, str(tmp_path), loss=tiny_config(tiny_data, "").loss.replace(debug_nan_at_iter=1),
                         snapshot_ticks=0, image_snapshot_ticks=0)
    result = training_loop.launch(config)
    assert result.status == "fault"
    assert "non-finite loss in phase Gmain at tick 1" in result.message
    assert result.snapshot and os.path.isfile(result.snapshot) and result.snapshot in result.message
    snap = checkpoint.load_snapshot(result.snapshot)
    assert snap["progress"]["cur_nimg"] == 4  # the state after tick 0, before the bad iteration
    assert all(torch.isfinite(p).all() for p in snap["G"].parameters())
    assert "non-finite loss in phase Gmain" in open(os.path.join(result.run_dir, "log.txt")).read()


def test_two_process_gloo_ranks_stay_identical(tiny_data, tmp_path):
    config = tiny_config(tiny_data, str(tmp_path), num_gpus=2, batch_gpu=2, total_kimg=0.008)
    result = training_loop.launch(config)
    assert result.status == "done" and result.cur_nimg == 8
    assert len(result.rank_digests) == 2 and result.rank_digests[0] == result.rank_digests[1]
    assert "identical across 2 processes" in open(os.path.join(result.run_dir, "log.txt")).read()


@pytest.mark.parametrize("sig, whole_group, workers", [
    (signal.SIGTERM, False, 0),  # a scheduler's TERM to the trainer
    (signal.SIGINT, True, 1),    # Ctrl+C: the terminal signals every process of the group, DataLoader workers too
])
def test_stop_signal_writes_snapshot_and_exits_cleanly(tiny_data, tmp_path, sig, whole_group, workers):
    script = (f"import sys; sys.path.insert(0, {REPO!r}); from tests.test_training import tiny_config; "
              f"from training.training_loop import launch; "
              f"r = launch(tiny_config({tiny_data!r}, {str(tmp_path)!r}, total_kimg=10.0, snapshot_ticks=0, "
              f"image_snapshot_ticks=0, data_workers={workers})); "
              f"print('STATUS', r.status, r.cur_nimg, r.snapshot, flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO, start_new_session=True)
    lines = []
    deadline = time.time() + 300
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("tick 0"):
            if whole_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        if time.time() > deadline:
            proc.kill()
            break
    assert proc.wait(timeout=60) == 0, "".join(lines)
    status = [line for line in lines if line.startswith("STATUS")]
    assert status and status[0].split()[1] == "interrupted", "".join(lines)
    snapshot = status[0].split()[3]
    assert checkpoint.load_snapshot(snapshot)["progress"]["cur_nimg"] >= 4


def test_compat_resume_uses_official_schedules(tiny_data, tmp_path):
    """compat: the official resume switches the blur and the pose-swap fade off and the background on."""
    first = training_loop.launch(tiny_config(tiny_data, str(tmp_path), compat=True, total_kimg=0.004))
    assert first.status == "done"
    second = training_loop.launch(tiny_config(tiny_data, str(tmp_path), compat=True, total_kimg=0.008,
                                              resume=first.snapshot))
    assert second.status == "done" and second.cur_nimg == 8
    fresh, resumed = read_stats(first.run_dir)[-1], read_stats(second.run_dir)[-1]
    assert fresh["Progress/blur_sigma"]["mean"] > 0 and fresh["Progress/swap_prob"]["mean"] > 0.5
    assert resumed["Progress/blur_sigma"]["mean"] == 0
    assert resumed["Progress/swap_prob"]["mean"] == pytest.approx(0.5)
    assert resumed["Progress/background"]["mean"] == 1
