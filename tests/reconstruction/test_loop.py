"""Reconstruction training: options and presets, the schedule, the loss, snapshots, camera paths, evaluation
records, exact resume, a fault, the time budget and 2-process DDP on tiny data (reference rasterizer, 16x16)."""
import io
import json
import math
import os

import numpy as np
import pytest
import torch

from reconstruction import evaluate as E
from reconstruction import loop, media, train_setup
from reconstruction.config import ConfigError, ReconTrainOptions, resolve_options
from reconstruction.loss import ReconstructionLoss
from torch_utils import checkpoint
from torch_utils.checkpoint import SnapshotError

# A CPU-second-sized encoder: the `small` preset, narrower, 8 depth candidates.
TINY_MODEL = {"num_candidates": 8, "backbone_channels": [16, 16, 32], "feature_channels": 32,
              "cost_unet_channels": 16, "refine_channels": 8, "head_hidden_channels": 16}


# ---------------------------------------------------------------------------------------------- tiny data
def _png(pixels: np.ndarray) -> torch.Tensor:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def make_dataset(root, train_scenes: int = 3, test_scenes: int = 2, frames: int = 12, size: int = 16,
                 seed: int = 0) -> str:
    """root/{train,test} chunks of scenes seen by a camera sliding sideways over a texture (each frame a shifted
    crop of one random image, cameras translated along x), and root/evaluation_index.json for the test split
    with three context views per entry (so --num-context 3 works)."""
    from reconstruction.chunks import pack_cameras, write_chunks

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_scenes), ("test", test_scenes)):
        examples = []
        for s in range(count):
            texture = rng.integers(0, 256, (size, size + frames, 3), dtype=np.uint8)
            c2w = torch.eye(4).repeat(frames, 1, 1)
            c2w[:, 0, 3] = torch.arange(frames, dtype=torch.float32) * 0.05
            k = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]).repeat(frames, 1, 1)
            examples.append({"key": f"{split}{s:04d}", "url": "", "timestamps": torch.arange(frames),
                             "cameras": pack_cameras(c2w, k),
                             "images": [_png(np.ascontiguousarray(texture[:, i:i + size])) for i in range(frames)]})
        write_chunks(str(root), split, examples)
    index = {f"test{s:04d}": {"context": [1, 7, 10], "target": [3, 4, 6]} for s in range(test_scenes)}
    with open(os.path.join(str(root), "evaluation_index.json"), "w") as handle:
        json.dump(index, handle)
    return str(root)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("recon-data"))


def tiny_options(data: str, outdir: str, **changes) -> ReconTrainOptions:
    overrides = {"data.path": data, "outdir": outdir, "data.image_shape": (16, 16), "data.workers": 0,
                 "batch_gpu": 2, "accumulate": 1, "steps": 4, "tick_steps": 1, "snapshot_ticks": 1,
                 "loss.lpips_weight": 0.0, "model.overrides": TINY_MODEL, "model.backend": "reference",
                 "device": "cpu", "grid_scenes": 2}
    overrides.update(changes)
    return resolve_options("scenes", overrides)


# ---------------------------------------------------------------------------------------------- options
def test_presets_resolve_round_trip_and_follow_the_official_values():
    re10k = resolve_options("re10k")
    assert re10k.data.image_shape == (256, 256) and re10k.data.frame_shape == (360, 640)
    assert (re10k.data.near, re10k.data.far) == (1.0, 100.0)
    assert (re10k.sampler.num_context, re10k.sampler.num_target) == (2, 4)
    assert (re10k.sampler.min_gap, re10k.sampler.max_gap, re10k.sampler.warmup_steps) == (45, 192, 150_000)
    assert (re10k.batch_gpu, re10k.accumulate, re10k.model.preset, re10k.loss.lpips_weight) == (2, 2, "re10k", 0.05)
    assert (re10k.optim.lr, re10k.optim.clip_norm, re10k.optim.pct_start) == (2e-4, 0.5, 0.01)
    assert resolve_options("acid").to_dict() == dict(re10k.to_dict(), experiment="acid")
    dtu = resolve_options("dtu")
    assert (dtu.data.near, dtu.data.far, dtu.data.frame_shape) == (2.125, 4.525, None)
    scenes = resolve_options("scenes", {"steps": 7, "loss.lpips_weight": 0.1, "batch_gpu": None})
    assert scenes.data.image_shape == (64, 64) and scenes.model.preset == "small" and scenes.steps == 7
    assert scenes.loss.lpips_weight == 0.1 and scenes.batch_gpu == 4  # None = keep the preset value
    assert (scenes.sampler.num_context, scenes.sampler.num_target) == (2, 3)
    assert ReconTrainOptions.from_json(scenes.to_json()) == scenes


def test_bad_options_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown name 'nope'"):
        resolve_options("nope")
    with pytest.raises(ConfigError, match="unknown option 'data.colour'"):
        resolve_options("scenes", {"data.colour": 1})
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        resolve_options("scenes", {"steps": "many"})
    with pytest.raises(ConfigError, match="unknown option"):
        ReconTrainOptions.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="evaluation only"):
        resolve_options("dtu").validate()
    with pytest.raises(ConfigError, match="--batch must be >= 1"):
        resolve_options("scenes", {"batch_gpu": 0}).validate()
    with pytest.raises(ConfigError, match="0 < near < far"):
        resolve_options("scenes", {"data.near": 5.0, "data.far": 2.0}).validate()


def test_schedule_is_the_official_one_cycle():
    options = resolve_options("scenes", {"steps": 1000})
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=options.optim.lr)
    schedule = train_setup.build_schedule(optimizer, options)
    lrs = []
    for _ in range(options.steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    total = options.steps + 10
    peak_step = 0.01 * total - 1  # torch's OneCycleLR: the warm-up phase ends at pct_start * total - 1
    assert lrs[0] == pytest.approx(2e-4 / 25)
    assert max(lrs) == pytest.approx(2e-4, rel=1e-3) and int(np.argmax(lrs)) == math.ceil(peak_step)
    # cosine annealing from the peak to lr / 25 / 1e4 at step total - 1
    s = 500
    expected = 2e-4 / 25 / 1e4 + (2e-4 - 2e-4 / 25 / 1e4) * (1 + math.cos(math.pi * (s - peak_step) /
                                                                           (total - 1 - peak_step))) / 2
    assert lrs[s] == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------- loss
def test_loss_is_mse_plus_weighted_lpips_from_the_given_step():
    torch.manual_seed(0)
    render = torch.rand(2, 3, 3, 32, 32, requires_grad=True)
    target = torch.rand(2, 3, 3, 32, 32)
    mse_only = ReconstructionLoss(lpips_weight=0.0)(render, target, step=0)
    assert torch.allclose(mse_only["mse"], ((render - target) ** 2).mean())
    assert "lpips" not in mse_only and torch.equal(mse_only["total"], mse_only["mse"])
    loss = ReconstructionLoss(lpips_weight=0.05, lpips_after=10)
    before, after = loss(render, target, step=9), loss(render, target, step=10)
    assert "lpips" not in before and torch.allclose(before["total"], before["mse"])
    assert torch.allclose(after["total"], after["mse"] + 0.05 * after["lpips"])
    after["total"].backward()
    assert render.grad is not None and bool(torch.isfinite(render.grad).all()) and float(render.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="equal"):
        loss(render[:, :2], target, step=0)


# ---------------------------------------------------------------------------------------------- snapshots
@pytest.fixture(scope="module")
def tiny_encoder():
    from reconstruction.encoder import build_encoder

    torch.manual_seed(0)
    return build_encoder("small", **TINY_MODEL)


def test_reconstruction_snapshot_round_trip_and_refusals(tiny_encoder, tmp_path):
    path = str(tmp_path / checkpoint.recon_snapshot_filename(12))
    assert path.endswith("network-snapshot-000012.pt")
    checkpoint.save_recon_snapshot(path, tiny_encoder, optimizer={}, scheduler={}, progress={"step": 12},
                                   rng={"ranks": []}, options={"steps": 12})
    data = checkpoint.load_recon_snapshot(path)
    assert data["progress"]["step"] == 12 and data["encoder"].init_kwargs == tiny_encoder.init_kwargs
    for (name, a), (_, b) in zip(tiny_encoder.state_dict().items(), data["encoder"].state_dict().items()):
        assert torch.equal(a, b), name
    # the GAN reader names the kind of file it was given, and vice versa
    with pytest.raises(SnapshotError, match="is a reconstruction snapshot"):
        checkpoint.read_snapshot_dict(path)
    gan = str(tmp_path / "gan.pt")
    torch.save({"format": checkpoint.FORMAT, "version": 1}, gan)
    with pytest.raises(SnapshotError, match="GSGAN \\(GAN\\) snapshot, not a reconstruction snapshot"):
        checkpoint.read_recon_snapshot_dict(gan)
    other = str(tmp_path / "other.pt")
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(SnapshotError, match="not a reconstruction snapshot"):
        checkpoint.read_recon_snapshot_dict(other)
    incomplete = str(tmp_path / "incomplete.pt")
    torch.save({"format": checkpoint.RECON_FORMAT, "version": 1, "encoder": {}}, incomplete)
    with pytest.raises(SnapshotError, match="missing optimizer"):
        checkpoint.read_recon_snapshot_dict(incomplete)


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def test_malicious_reconstruction_snapshot_is_refused_without_running_it(tmp_path):
    marker, path = str(tmp_path / "pwned"), str(tmp_path / "evil.pt")
    torch.save({"format": checkpoint.RECON_FORMAT, "version": 1, "encoder": _WritesMarker(marker)}, path)
    with pytest.raises(SnapshotError, match="refused to load it safely"):
        checkpoint.read_recon_snapshot_dict(path)
    with pytest.raises(SnapshotError, match="refused to load it safely"):
        checkpoint.read_state_dict_file(path)
    assert not os.path.exists(marker)


def test_init_state_dict_is_loaded_strictly_with_a_listing_of_bad_keys(tiny_encoder, tmp_path):
    from reconstruction.encoder import build_encoder

    good = str(tmp_path / "good.pt")
    torch.save(tiny_encoder.state_dict(), good)
    fresh = build_encoder("small", **TINY_MODEL)
    checkpoint.load_state_dict_file(good, fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tiny_encoder.state_dict().values()))
    state = dict(tiny_encoder.state_dict())
    removed = sorted(state)[0]
    del state[removed]
    state["extra.weight"] = torch.zeros(1)
    bad = str(tmp_path / "bad.pt")
    torch.save(state, bad)
    with pytest.raises(SnapshotError) as info:
        checkpoint.load_state_dict_file(bad, fresh)
    message = str(info.value)
    assert f"missing keys {removed}" in message and "unexpected keys extra.weight" in message
    assert "\n" not in message
    other = build_encoder("small", **dict(TINY_MODEL, feature_channels=16))
    with pytest.raises(SnapshotError, match="shape mismatch"):
        checkpoint.load_state_dict_file(good, other)
    not_a_dict = str(tmp_path / "list.pt")
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(SnapshotError, match="expected a state_dict"):
        checkpoint.read_state_dict_file(not_a_dict)


# ---------------------------------------------------------------------------------------------- camera paths
def _rotation(axis, angle) -> torch.Tensor:
    from scipy.spatial.transform import Rotation

    return torch.from_numpy(Rotation.from_rotvec(np.asarray(axis, float) * angle).as_matrix()).float()


def test_camera_path_passes_through_the_context_cameras_and_slerps():
    from scipy.spatial.transform import Rotation, Slerp

    a, b = torch.eye(4), torch.eye(4)
    a[:3, :3], b[:3, :3] = _rotation([0, 1, 0], 0.1), _rotation([0.3, 1, 0.2], -0.5)
    a[:3, 3], b[:3, 3] = torch.tensor([0.0, 0, 0]), torch.tensor([1.0, 0.5, -0.2])
    ka = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]])
    kb = torch.tensor([[1.2, 0, 0.5], [0, 1.2, 0.5], [0, 0, 1]])
    c2w, k = media.interpolate_cameras(a, b, ka, kb, num_frames=5, extrapolate=0.0)
    assert torch.allclose(c2w[0], a, atol=1e-6) and torch.allclose(c2w[-1], b, atol=1e-6)
    assert torch.allclose(k[2], (ka + kb) / 2)
    reference = Slerp([0, 1], Rotation.from_matrix(np.stack([a[:3, :3].numpy(), b[:3, :3].numpy()])))
    assert np.allclose(c2w[:, :3, :3].numpy(), reference(np.linspace(0, 1, 5)).as_matrix(), atol=1e-5)
    # extrapolation: t from -0.25 to 1.25, positions continue on the line, frames stay rigid
    c2w, _ = media.interpolate_cameras(a, b, ka, kb, num_frames=7, extrapolate=0.25)
    assert torch.allclose(c2w[0, :3, 3], -0.25 * b[:3, 3], atol=1e-6)
    assert torch.allclose(c2w[-1, :3, 3], 1.25 * b[:3, 3], atol=1e-6)
    rot = c2w[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(7, 3, 3), atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 frames"):
        media.interpolate_cameras(a, b, ka, kb, num_frames=1)


def test_slerp_takes_the_short_way_and_handles_equal_rotations():
    q = torch.tensor([1.0, 0, 0, 0])
    assert torch.allclose(media.slerp(q, q, torch.tensor([0.0, 0.5, 2.0])), q.expand(3, 4))
    half_turn = torch.tensor([math.cos(0.5), 0, math.sin(0.5), 0])
    mid = media.slerp(q, -half_turn, torch.tensor([0.5]))  # -q is the same rotation: the short arc is used
    assert torch.allclose(mid[0], torch.tensor([math.cos(0.25), 0, math.sin(0.25), 0]), atol=1e-6)


def test_side_by_side_depth_uses_one_range_for_the_whole_video():
    color = torch.zeros(2, 3, 4, 4)
    depth = torch.stack([torch.full((1, 4, 4), 2.0), torch.full((1, 4, 4), 4.0)])
    alpha = torch.ones(2, 1, 4, 4)
    alpha[1, :, 0, 0] = 0  # an empty pixel: black
    frames = media.side_by_side_frames(color, depth, alpha)
    assert frames.shape == (2, 4, 8, 3) and frames.dtype == np.uint8
    assert frames[0, 1, 5, 0] == 255 and frames[1, 1, 5, 0] == 0  # near (2) bright, far (4) dark
    assert frames[1, 0, 4, 0] == 0 and (frames[:, :, :4] == 0).all()


# ---------------------------------------------------------------------------------------------- evaluation
def test_nearest_context_and_summary():
    assert E.nearest_context(torch.tensor([10, 20]), torch.tensor([11, 15, 19, 25, 3])).tolist() == [0, 0, 1, 1, 0]
    records = [{"key": k, "psnr": p, "ssim": 0.5, "lpips": 0.2, "baseline_psnr": p - 3, "baseline_ssim": 0.4,
                "baseline_lpips": 0.3, "gaussians": 512, "seconds": 0.1} for k, p in (("a", 20.0), ("b", 22.0))]
    summary = E.summarize(records, "snap.pt")
    assert summary["psnr"] == 21.0 and summary["baseline_psnr"] == 18.0 and summary["psnr_gain_over_baseline"] == 3
    assert summary["num_scenes"] == 2 and summary["gaussians_per_scene"] == 512
    assert E.gather_records(records[::-1], ["a", "b"]) == records


def test_evaluate_example_scores_model_and_baseline(tiny_encoder, data_root):
    from reconstruction.dataset import EvaluationSet
    from reconstruction.metrics import ImageMetrics, psnr
    from reconstruction.view_sampler import EvaluationIndex

    index = EvaluationIndex(os.path.join(data_root, "evaluation_index.json"))
    dataset = EvaluationSet(data_root, "test", index, image_shape=(16, 16), near=1.0, far=100.0)
    metrics = ImageMetrics(("vgg",))
    example = dataset[0]
    record = E.evaluate_example(tiny_encoder.eval(), example, metrics, num_context=2, backend="reference")
    assert record["context"] == [1, 7] and record["target"] == [3, 4, 6] and record["gaussians"] == 2 * 16 * 16
    # baseline: targets 3, 4 -> context frame 1; target 6 -> context frame 7
    gt, context = example["target"]["image"], example["context"]["image"]
    expected = psnr(torch.stack([context[0], context[0], context[1]]), gt).double().mean()
    assert record["baseline_psnr"] == pytest.approx(float(expected), rel=1e-6)
    assert all(math.isfinite(record[n]) for n in ("psnr", "ssim", "lpips", "baseline_ssim", "baseline_lpips"))
    three = E.evaluate_example(tiny_encoder, example, metrics, num_context=3, backend="reference")
    assert three["context"] == [1, 7, 10] and three["gaussians"] == 3 * 16 * 16
    with pytest.raises(E.EvaluationError, match="--num-context 4"):
        E.evaluate_example(tiny_encoder, example, metrics, num_context=4, backend="reference")
    with pytest.raises(E.EvaluationError, match="lists only 3 context"):
        E.check_num_context(index, 4)


# ---------------------------------------------------------------------------------------------- training
def _train(options) -> loop.TrainResult:
    return loop.launch(options)


def test_exact_resume_gives_the_uninterrupted_parameters(data_root, tmp_path):
    full = _train(tiny_options(data_root, str(tmp_path / "a")))
    assert full.status == "done" and full.step == 4
    run_dir = full.run_dir
    names = sorted(os.listdir(run_dir))
    for name in ("training_options.json", "log.txt", "stats.jsonl", "grid-000001.png", "network-snapshot-000002.pt",
                 "network-snapshot-000004.pt"):
        assert name in names, names
    assert not [n for n in names if n.startswith(".tmp")]
    assert os.path.basename(run_dir) == "00000-scenes-recon-data0-gpus1-batch2"
    stats = [json.loads(line) for line in open(os.path.join(run_dir, "stats.jsonl"))]
    for key in ("Loss/mse", "Loss/total", "Metrics/psnr_train", "Progress/step",
                "Timing/sec_per_step", "Resources/cpu_mem_gb", "Data/skipped/frames"):
        assert key in stats[-1], key
    assert stats[-1]["Progress/step"]["mean"] == 4
    snapshot = checkpoint.read_recon_snapshot_dict(os.path.join(run_dir, "network-snapshot-000002.pt"))
    assert snapshot["progress"]["step"] == 2 and snapshot["progress"]["examples_seen"] == [4]
    assert ReconTrainOptions.from_dict(snapshot["options"]) == tiny_options(data_root, str(tmp_path / "a"))

    resumed = _train(tiny_options(data_root, str(tmp_path / "b"),
                                  resume=os.path.join(run_dir, "network-snapshot-000002.pt")))
    assert resumed.status == "done" and resumed.step == 4
    assert resumed.rank_digests == full.rank_digests
    a = checkpoint.read_recon_snapshot_dict(full.snapshot)
    b = checkpoint.read_recon_snapshot_dict(resumed.snapshot)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    for name, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg_sq"], b["optimizer"]["state"][name]["exp_avg_sq"])
    # a run that did not resume diverges from both: the comparison above can fail
    other = _train(tiny_options(data_root, str(tmp_path / "c"), seed=1))
    assert other.rank_digests != full.rank_digests


def test_resume_refuses_another_architecture_or_schedule(data_root, tmp_path):
    first = _train(tiny_options(data_root, str(tmp_path / "a"), steps=1))
    with pytest.raises(SnapshotError, match="architecture differs"):
        _train(tiny_options(data_root, str(tmp_path / "b"), steps=1, resume=first.snapshot,
                            **{"model.overrides": dict(TINY_MODEL, num_candidates=6)}))
    with pytest.raises(SnapshotError, match="--steps=1"):
        _train(tiny_options(data_root, str(tmp_path / "c"), steps=3, resume=first.run_dir))


def test_non_finite_loss_stops_with_the_last_good_snapshot(data_root, tmp_path):
    result = _train(tiny_options(data_root, str(tmp_path / "a"), steps=5, snapshot_ticks=0, debug_nan_at_step=2))
    assert result.status == "fault" and "non-finite loss at step 2" in result.message
    assert result.snapshot.endswith("network-snapshot-000002.pt") and os.path.isfile(result.snapshot)
    assert checkpoint.read_recon_snapshot_dict(result.snapshot)["progress"]["step"] == 2


def test_time_budget_stops_cleanly_with_a_snapshot(data_root, tmp_path):
    result = _train(tiny_options(data_root, str(tmp_path / "a"), steps=50, tick_steps=100, minutes=1e-6))
    assert result.status == "time_limit" and result.step == 1
    assert result.snapshot.endswith("network-snapshot-000001.pt") and os.path.isfile(result.snapshot)
    data = checkpoint.read_recon_snapshot_dict(result.snapshot)
    assert data["scheduler"]["total_steps"] == 60  # the schedule still spans --steps (+ 10)


def test_two_process_gloo_training_keeps_ranks_identical(data_root, tmp_path):
    result = _train(tiny_options(data_root, str(tmp_path / "a"), num_gpus=2, steps=2, batch_gpu=1))
    assert result.status == "done" and result.step == 2
    assert len(result.rank_digests) == 2 and len(set(result.rank_digests)) == 1
    data = checkpoint.read_recon_snapshot_dict(result.snapshot)
    assert data["progress"]["examples_seen"] == [2, 2] and len(data["rng"]["ranks"]) == 2


def test_sigint_finishes_the_step_and_snapshots(data_root, tmp_path, monkeypatch):
    import signal

    original = loop.ReconTrainer.train_step

    def step_then_interrupt(self, deadline):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: the handler only records it
        return original(self, deadline)

    monkeypatch.setattr(loop.ReconTrainer, "train_step", step_then_interrupt)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup or a non-interactive shell's background job
    result = _train(tiny_options(data_root, str(tmp_path / "a"), steps=50, tick_steps=100))
    assert result.status == "interrupted" and result.step == 2
    assert result.snapshot.endswith("network-snapshot-000002.pt")
    assert checkpoint.read_recon_snapshot_dict(result.snapshot)["progress"]["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
