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
    for name in ("training_options.json", "log.txt", "stats.jsonl", "reals.png"):
        assert name in files, name
    # One grid (and its depth grid) per tick, named like the snapshots, none overwritten.
    assert sorted(f for f in files if f.startswith("fakes")) == [
        f"fakes000000.{n:03d}{suffix}.png" for n in (4, 8, 12) for suffix in ("", "_depth")]
    # One snapshot per tick, each named by its image count (below 1 kimg: thousandths), none overwritten.
    assert sorted(f for f in files if f.startswith("network-snapshot")) == [
        "network-snapshot-000000.004.pt", "network-snapshot-000000.008.pt", "network-snapshot-000000.012.pt"]
    assert result.snapshot == os.path.join(run_dir, "network-snapshot-000000.012.pt")
    assert checkpoint.resolve_snapshot(run_dir) == result.snapshot
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


def test_setup_errors_are_dataset_errors(tiny_data, tmp_path):
    """User errors found in set-up are DatasetErrors: one line in the CLIs and in spawned ranks."""
    from training.dataset import DatasetError

    config = tiny_config(tiny_data, str(tmp_path))
    unlabeled = config.replace(data=config.data.replace(use_labels=False))
    trainer = training_loop.Trainer(unlabeled, str(tmp_path), 0, 1, torch.device("cpu"))
    try:
        with pytest.raises(DatasetError, match="needs camera labels"):
            trainer.setup()
    finally:
        trainer.close()


def test_resume_takes_this_runs_learning_rates(tiny_data, tmp_path):
    """The Adam moments come from the snapshot, lr / betas from the resumed run's options."""
    first = training_loop.launch(tiny_config(tiny_data, str(tmp_path), total_kimg=0.004))
    config = tiny_config(tiny_data, str(tmp_path), total_kimg=0.008, resume=first.run_dir)
    config = config.replace(optim=config.optim.replace(glr=1e-5, dlr=3e-5, beta2=0.9))
    os.makedirs(tmp_path / "resumed")
    trainer = training_loop.Trainer(config, str(tmp_path / "resumed"), 0, 1, torch.device("cpu"))
    try:
        trainer.setup()
        assert [g["lr"] for g in trainer.opt_G.param_groups] == [1e-5]
        assert trainer.opt_G.param_groups[0]["betas"][1] == 0.9
        ratio = config.loss.r1_interval / (config.loss.r1_interval + 1)
        assert trainer.opt_D.param_groups[0]["lr"] == pytest.approx(3e-5 * ratio)
        assert any(state["step"] > 0 for state in trainer.opt_G.state.values())  # the moments were loaded
    finally:
        trainer.close()


def test_nan_stops_with_last_good_snapshot(tiny_data, tmp_path):
    config = tiny_config(tiny_data, str(tmp_path), loss=tiny_config(tiny_data, "").loss.replace(debug_nan_at_iter=1),
                         image_snapshot_ticks=0)
    result = training_loop.launch(config)
    assert result.status == "fault" and result.exit_status == 1
    assert "non-finite loss in phase Gmain at tick 1" in result.message
    assert result.snapshot and os.path.isfile(result.snapshot) and result.snapshot in result.message
    snap = checkpoint.load_snapshot(result.snapshot)
    assert snap["progress"]["cur_nimg"] == 4  # the snapshot of tick 0, written before the bad iteration
    assert all(torch.isfinite(p).all() for p in snap["G"].parameters())
    assert "non-finite loss in phase Gmain" in open(os.path.join(result.run_dir, "log.txt")).read()
    assert [f for f in os.listdir(result.run_dir) if f.startswith("network-snapshot")] == [
        "network-snapshot-000000.004.pt"]


def test_fault_before_any_snapshot_says_so(tiny_data, tmp_path):
    config = tiny_config(tiny_data, str(tmp_path), loss=tiny_config(tiny_data, "").loss.replace(debug_nan_at_iter=1),
                         snapshot_ticks=0, image_snapshot_ticks=0)
    result = training_loop.launch(config)
    assert result.status == "fault" and result.snapshot is None
    assert "no snapshot was written before the fault" in result.message
    assert not [f for f in os.listdir(result.run_dir) if f.startswith(("network-snapshot", ".tmp"))]


def test_no_copy_of_the_state_between_snapshots(tiny_data, tmp_path, monkeypatch):
    """The snapshot payload (a CPU copy of G, D, G_ema and both optimizers) is built only when one is written."""
    calls = []
    original = training_loop.Trainer.payload
    monkeypatch.setattr(training_loop.Trainer, "payload", lambda self: calls.append(self.cur_nimg) or original(self))
    result = training_loop.launch(tiny_config(tiny_data, str(tmp_path), snapshot_ticks=0, image_snapshot_ticks=0))
    assert result.status == "done" and calls == [12]  # three ticks, one snapshot: the final one
    assert not hasattr(training_loop.Trainer, "last_good")


def test_resume_at_the_target_trains_nothing(tiny_data, tmp_path):
    first = training_loop.launch(tiny_config(tiny_data, str(tmp_path), total_kimg=0.008))
    again = training_loop.launch(tiny_config(tiny_data, str(tmp_path), total_kimg=0.008, resume=first.snapshot))
    assert again.status == "done" and again.exit_status == 0 and again.cur_nimg == 8
    assert again.snapshot == first.snapshot and "nothing to train" in again.message
    assert not [f for f in os.listdir(again.run_dir) if f.startswith("network-snapshot")]
    assert "nothing to train" in open(os.path.join(again.run_dir, "log.txt")).read()


def test_exit_status_tells_finished_from_interrupted():
    from torch_utils.run_control import exit_status

    assert [exit_status(s) for s in ("done", "time_limit", "fault", "interrupted")] == [0, 0, 1, 3]
    with pytest.raises(ValueError, match="run status: expected one of"):
        exit_status("finished")


def test_worker_error_mid_run_exits_instead_of_hanging(tiny_data, tmp_path):
    """A DataLoader worker failing mid-run (e.g. a corrupt image): the error reaches the caller and the process
    exits, although the workers ignore SIGTERM (the interpreter's exit used to wait on them forever)."""
    script = (f"import sys; sys.path.insert(0, {REPO!r}); import torch; from training import dataset as ds\n"
              f"original, calls = ds.ImageFolderDataset._load_image, [0]\n"
              f"def failing(self, raw):\n"
              f"    calls[0] += 1\n"
              f"    if torch.utils.data.get_worker_info() is not None and calls[0] > 10:\n"
              f"        raise ds.DatasetError(self._where(raw) + ': corrupt image (injected)')\n"
              f"    return original(self, raw)\n"
              f"ds.ImageFolderDataset._load_image = failing\n"
              f"from tests.test_training import tiny_config; from training.training_loop import launch\n"
              f"launch(tiny_config({tiny_data!r}, {str(tmp_path)!r}, total_kimg=10.0, snapshot_ticks=0, "
              f"image_snapshot_ticks=0, data_workers=1))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "corrupt image (injected)" in proc.stderr


def test_render_validate_false_skips_only_the_value_checks():
    from splatting import Cameras, Gaussians, render
    from splatting.cameras import look_at

    g = Gaussians(means=torch.randn(1, 8, 3) * 0.3, log_scales=torch.full((1, 8, 3), -3.0),
                  quats=torch.randn(1, 8, 4), opacity_logits=torch.zeros(1, 8), sh=torch.rand(1, 8, 1, 3))
    w2c = torch.linalg.inv(look_at(torch.tensor([[[0.0, 0.0, 2.7]]]), torch.zeros(3)))
    cams = Cameras(w2c, torch.tensor([[64.0, 0, 8], [0, 64.0, 8], [0, 0, 1]]).expand(1, 1, 3, 3), 16, 16)
    bad = Gaussians(**{**{k: getattr(g, k) for k in ("log_scales", "quats", "opacity_logits", "sh")},
                       "means": g.means.clone().index_fill_(1, torch.tensor([0]), float("nan"))})
    with pytest.raises(ValueError, match="Gaussians.means: 3 non-finite"):
        render(bad, cams, backend="reference")
    out = render(bad, cams, backend="reference", validate=False)  # no check: NaN flows into the image
    assert out.color.shape == (1, 1, 3, 16, 16)
    ok = render(g, cams, backend="reference", validate=False)
    torch.testing.assert_close(ok.color, render(g, cams, backend="reference").color, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cameras: batch size B = 1"):
        render(Gaussians(**{k: torch.cat([getattr(g, k)] * 2) for k in ("means", "log_scales", "quats",
                                                                         "opacity_logits", "sh")}),
               cams, backend="reference", validate=False)
    with pytest.raises(ValueError, match="validate: expected True or False"):
        render(g, cams, backend="reference", validate="no")


def test_training_step_skips_the_value_checks(tiny_data, tmp_path, monkeypatch):
    """The loop's G forwards read nothing back for validation (each check is a host sync on a GPU); the public
    synthesis call still checks everything."""
    import importlib

    cameras_module, render_module = (importlib.import_module(f"splatting.{m}") for m in ("cameras", "render"))

    trainer = training_loop.Trainer(tiny_config(tiny_data, str(tmp_path)), str(tmp_path), 0, 1, torch.device("cpu"))
    try:
        trainer.setup()
        assert trainer.runner.validate is False
        calls = []
        for owner, name in ((cameras_module, "_check_labels"), (cameras_module.Cameras, "_check_values"),
                            (render_module, "_validate_gaussians")):
            original = getattr(owner, name)
            monkeypatch.setattr(owner, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
        for _ in range(2):  # Gmain + Dmain, then Dreg (r1_interval=2)
            trainer.train_step()
        assert calls == []
        G, c = trainer.G, trainer.all_labels[:2]
        ws = G.mapping(torch.randn(2, G.z_dim), c)
        checked = G.synthesis(ws, c)["image"]
        assert sorted(set(calls)) == ["_check_labels", "_check_values", "_validate_gaussians"]
        broken = c.clone()
        broken[0, 3] = float("nan")
        with pytest.raises(ValueError, match="labels: contain non-finite values"):
            G.synthesis(ws, broken)
        calls.clear()
        unchecked = G.synthesis(ws, broken, validate=False)["image"]  # the NaN camera culls everything
        assert calls == [] and torch.equal(unchecked[1], checked[1]) and (checked[0] > -1).any()
        assert torch.equal(unchecked[0], torch.full_like(unchecked[0], -1.0))
    finally:
        trainer.close()


def _cli_args(data: str, outdir: str, *extra: str) -> list[str]:
    """train.py options of a tiny CPU run (the model of tiny_config)."""
    return ["--outdir", outdir, "--data", data, "--cfg", "shapes", "--gaussian_num_pts", "16", "--res_end", "16",
            "--cmax", "32", "--cbase", "512", "--batch", "4", "--mbstd-group", "2", "--tick", "0.004", "--backend",
            "reference", "--workers", "0", "--device", "cpu", "--grid", "2x1", "--seed", "1", "--metrics", "none",
            *extra]


def _error_lines(proc) -> list[str]:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("Error:")]


def test_diverging_run_is_one_line_and_leaves_no_bad_snapshot(tiny_data, tmp_path):
    """--glr=1e30 blows the generator up at its first step: the broken Gaussians stop the run in that very
    iteration (the rasterizer alone would cull them into a finite image), with one line and exit 1, before any
    snapshot of the broken state; DataLoader workers on, so the process must also exit."""
    args = _cli_args(tiny_data, str(tmp_path / "runs"), "--glr", "1e30", "--kimg", "0.04", "--workers", "1")
    proc = subprocess.run([sys.executable, "train.py", *args], capture_output=True, text=True, cwd=REPO, timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _error_lines(proc) == ["Error: non-finite loss in phase Dmain at tick 0 (kimg 0.000, iteration 0): training "
                                  "stopped; no snapshot was written before the fault (--snap sets how often one is)"]
    (run_dir,) = os.listdir(tmp_path / "runs")
    assert not [f for f in os.listdir(tmp_path / "runs" / run_dir) if f.startswith(("network-snapshot", ".tmp"))]


def test_divergence_after_a_snapshot_names_it_as_the_last_good_one(tiny_data, tmp_path, monkeypatch):
    """The G learning rate jumps to 1e30 once tick 0 is over (and its snapshot written): the next G step breaks
    the generator, and the fault names the tick-0 snapshot, whose generator is intact."""
    original = training_loop.Trainer.end_tick

    def end_tick_then_diverge(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for group in self.opt_G.param_groups:
            group["lr"] = 1e30
    monkeypatch.setattr(training_loop.Trainer, "end_tick", end_tick_then_diverge)
    result = training_loop.launch(tiny_config(tiny_data, str(tmp_path), image_snapshot_ticks=0, total_kimg=0.04))
    assert result.status == "fault" and result.exit_status == 1
    assert result.message.startswith("non-finite loss in phase Dmain at tick 1 (kimg 0.004, iteration 1)")
    assert result.snapshot.endswith("network-snapshot-000000.004.pt") and result.snapshot in result.message
    good = checkpoint.load_snapshot(result.snapshot)
    assert good["progress"]["cur_nimg"] == 4
    assert max(float(p.abs().max()) for p in good["G"].parameters()) < 1e3  # not the diverged state
    assert [f for f in os.listdir(result.run_dir) if f.startswith("network-snapshot")] == [
        "network-snapshot-000000.004.pt"]


RANK_FAILURE_SCRIPT = """import sys
sys.path.insert(0, {repo!r})
from torch_utils import distributed
from training import dataset as ds

# At module level: spawned ranks import this file too (as __mp_main__), so rank 1 fails in the middle of the run
# while rank 0 waits for it in an all-reduce.
_original, _calls = ds.ImageFolderDataset._load_image, [0]


def _failing(self, raw):
    _calls[0] += 1
    if distributed.get_rank() == 1 and _calls[0] > 4:  # two images per iteration: the third one fails
        raise ds.DatasetError(self._where(raw) + ": corrupt image (injected in rank 1)")
    return _original(self, raw)


ds.ImageFolderDataset._load_image = _failing

if __name__ == "__main__":
    import train
    train.main(sys.argv[1:])
"""


def test_user_error_in_a_spawned_rank_is_one_line(tiny_data, tmp_path):
    script = tmp_path / "train_with_bad_image.py"
    script.write_text(RANK_FAILURE_SCRIPT.format(repo=REPO))
    args = _cli_args(tiny_data, str(tmp_path / "runs"), "--gpus", "2", "--kimg", "1")
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _error_lines(proc) == [line for line in proc.stderr.splitlines() if line.strip()]  # nothing else
    (line,) = _error_lines(proc)
    assert line.startswith(f"Error: {tiny_data}/") and line.endswith(": corrupt image (injected in rank 1)"), line
    assert "tick 1" in proc.stdout  # met mid-run, after both ranks had trained together


class _Failure(RuntimeError):
    """Not a user error: travels as a traceback."""


def _rank_body(index: int, _init_method: str, failing_index: int, error):
    if index == failing_index:
        raise error
    return f"rank {index} done"


def test_spawn_forwards_only_user_errors():
    """User errors travel to the parent as they are (the CLI tests above); anything else keeps torch's exception
    with the rank's traceback, so that a bug is not reduced to one line."""
    import pickle

    from torch.multiprocessing import ProcessRaisedException

    from torch_utils import distributed
    from torch_utils.checkpoint import SnapshotWriteError
    from training.config import ConfigError
    from training.dataset import DatasetError

    with pytest.raises(ProcessRaisedException, match="_Failure: a bug"):
        distributed.spawn(_rank_body, 2, args=(1, _Failure("a bug")))
    write_error = SnapshotWriteError("x.pt: disk full", 28, "No space left on device")
    for error in (DatasetError("a.png: corrupt"), ConfigError("--kimg"), write_error):  # subclasses count
        assert distributed.is_user_error(error)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    assert pickle.loads(pickle.dumps(write_error)).errno == 28
    assert not distributed.is_user_error(ValueError("x")) and not distributed.is_user_error(_Failure("x"))
    import importlib

    for name in distributed.USER_ERROR_CLASSES:  # every name is a real class (a rename would go unnoticed)
        module, attribute = name.split(":")
        cls = getattr(importlib.import_module(module), attribute)
        assert issubclass(cls, ValueError) and f"{cls.__module__}:{cls.__qualname__}" == name
    import reconstruct
    import train

    listed = set(train.USER_ERRORS) | set(reconstruct.user_errors())  # what the CLIs print as one line
    assert all(distributed.is_user_error(cls("x")) for cls in listed)


@pytest.mark.parametrize("num_gpus", [1, 2])
def test_failed_start_leaves_no_run_dir(tiny_data, tmp_path, num_gpus):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a snapshot")
    runs = tmp_path / "runs"
    config = tiny_config(tiny_data, str(runs), resume=str(bad), num_gpus=num_gpus, batch_gpu=4 // num_gpus)
    with pytest.raises(checkpoint.SnapshotError, match="bad.pt"):
        training_loop.launch(config)
    assert os.listdir(runs) == []


def test_remove_unused_run_dir_keeps_anything_written(tmp_path):
    from torch_utils.run_control import remove_unused_run_dir

    def run_dir(name, files):
        path = tmp_path / name
        path.mkdir()
        for file_name, text in files.items():
            (path / file_name).write_text(text)
        return path

    unused = run_dir("00000-a", {"training_options.json": "{}", "log.txt": "", "stats.jsonl": "",
                                 "events.out.tfevents.1.host": "header"})
    assert remove_unused_run_dir(str(unused)) and not unused.exists()
    logged = run_dir("00001-b", {"training_options.json": "{}", "log.txt": "tick 0 ...\n"})
    pictured = run_dir("00002-c", {"training_options.json": "{}", "reals.png": "png"})
    (run_dir("00003-d", {"training_options.json": "{}"}) / "sub").mkdir()
    for kept in ("00001-b", "00002-c", "00003-d"):
        assert not remove_unused_run_dir(str(tmp_path / kept)) and (tmp_path / kept).is_dir()
    assert (logged / "log.txt").read_text() == "tick 0 ...\n" and (pictured / "reals.png").exists()
    assert not remove_unused_run_dir(str(tmp_path / "missing"))


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
              f"print('STATUS', r.status, r.cur_nimg, r.snapshot, flush=True); sys.exit(r.exit_status)")
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
    assert proc.wait(timeout=60) == 3, "".join(lines)  # interrupted: not the 0 of a finished run
    status = [line for line in lines if line.startswith("STATUS")]
    assert status and status[0].split()[1] == "interrupted", "".join(lines)
    snapshot = status[0].split()[3]
    assert checkpoint.load_snapshot(snapshot)["progress"]["cur_nimg"] >= 4
    log = open(os.path.join(os.path.dirname(snapshot), "log.txt")).read()
    assert f"interrupted by {sig.name}" in log and "exit status 3" in log


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
