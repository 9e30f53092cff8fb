"""train.py: option parsing (both boolean styles), validation before any work, dry runs of the official scripts."""
import json
import os
import re
import shlex
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

import dnnlib
import train
from training.config import ConfigError, TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train_ffhq256.sh", "train_ffhq512.sh", "train_afhq256.sh", "train_afhq512.sh")


def script_args(name: str, data: str, outdir: str) -> list[str]:
    """The train.py arguments of an official script, with $DATA / $OUTDIR substituted (as bash would)."""
    text = open(os.path.join(REPO, "_scripts", name)).read().replace("\\\n", " ")
    command = next(line for line in text.splitlines() if line.strip().startswith("python train.py"))
    command = command.replace('"$DATA"', shlex.quote(data)).replace('"$OUTDIR"', shlex.quote(outdir))
    return [a for a in shlex.split(command)[2:] if a != "$@"]


def resolved_options(output: str) -> dict:
    text = output.split("Training options:\n", 1)[1].split("\n\nModel summary:", 1)[0]
    return json.loads(text)


def model_summary(output: str) -> dict:
    return json.loads(output.split("Model summary:\n", 1)[1].split("\n\n", 1)[0])


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_of_official_scripts(script, tmp_path):
    outdir = str(tmp_path / "runs")
    args = script_args(script, str(tmp_path / "missing.zip"), outdir) + ["--dry-run"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 0, result.output
    options = resolved_options(result.output)
    resolution = int(re.search(r"(\d+)\.sh", script).group(1))
    assert options["data"]["resolution"] == resolution and options["G"]["neural_rendering_resolution"] == resolution
    assert options["batch_size"] == 32 and options["total_kimg"] == 15000 and options["metrics"] == ["fid2k_full"]
    assert options["G"]["gen_pose_cond"] is True and options["G"]["num_points"] == 256
    assert options["ema_kimg"] == 10 and options["loss"]["blur_fade_kimg"] == 200
    assert options["augment"]["mode"] == ("ada" if "afhq" in script else "noaug")
    summary = model_summary(result.output)
    assert isinstance(summary["G_parameters"], int) and isinstance(summary["D_parameters"], int)
    foreground = 87296 if resolution == 256 else 349440
    assert summary["rendered_foreground_gaussians"] == foreground
    assert summary["total_rendered_gaussians"] == foreground + 10000
    assert summary["anchor_gaussians"] == (21760 if resolution == 256 else 87296)
    assert not os.path.exists(outdir)
    assert TrainConfig.from_dict(options).to_dict() == options


def test_script_runs_unchanged_with_bash(tmp_path):
    env = dict(os.environ, DATA=str(tmp_path / "none.zip"), OUTDIR=str(tmp_path / "runs"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", os.path.join(REPO, "_scripts", "train_ffhq256.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert model_summary(proc.stdout)["D_parameters"] > 0
    assert not os.path.exists(tmp_path / "runs")


BASE = ["--outdir", "unused", "--cfg", "ffhq", "--dry-run"]


@pytest.mark.parametrize("args, expected", [
    (["--mirror=True"], True), (["--mirror"], True), (["--mirror=False"], False), (["--no-mirror"], False),
    (["--mirror", "false"], False), ([], False)])
def test_boolean_option_styles(args, expected):
    result = CliRunner().invoke(train.main, BASE + args)
    assert result.exit_code == 0, result.output
    assert resolved_options(result.output)["data"]["mirror"] is expected


def test_gen_pose_cond_false_and_compat():
    result = CliRunner().invoke(train.main, BASE + ["--gen_pose_cond=False", "--compat"])
    assert result.exit_code == 0, result.output
    options = resolved_options(result.output)
    assert options["G"]["gen_pose_cond"] is False and options["compat"] is True


@pytest.mark.parametrize("args, message", [
    (["--gpus", "3", "--batch", "32"], "multiple of --gpus"),
    (["--batch", "6", "--gpus", "1"], "--mbstd-group=4 must divide --batch-gpu=6"),
    (["--metrics", "fid_bogus"], "unknown metric"),
    (["--mirror=maybe"], "expected True or False"),
    (["--mirror=True", "--no-mirror"], "contradict"),
    (["--cond=False"], "camera labels"),
    (["--resume", "/nonexistent/run"], "no such snapshot"),
])
def test_invalid_options_are_rejected(args, message):
    result = CliRunner().invoke(train.main, BASE + args)
    assert result.exit_code != 0
    assert message in result.output


def test_render_resolution_must_match_dataset(tmp_path):
    from tests.test_training import build_tiny_dataset

    data = build_tiny_dataset(str(tmp_path))
    result = CliRunner().invoke(train.main, ["--outdir", str(tmp_path / "o"), "--cfg", "shapes", "--data", data,
                                             "--neural_rendering_resolution_initial", "32", "--dry-run"])
    assert result.exit_code != 0 and "must equal the dataset resolution 16" in result.output
    ok = CliRunner().invoke(train.main, ["--outdir", str(tmp_path / "o"), "--cfg", "shapes", "--data", data,
                                         "--dry-run"])
    assert ok.exit_code == 0, ok.output
    options = resolved_options(ok.output)
    assert options["data"]["resolution"] == 16 and len(options["data"]["fingerprint"]) == 64


def test_data_required_for_training():
    result = CliRunner().invoke(train.main, ["--outdir", "unused", "--cfg", "ffhq"])
    assert result.exit_code != 0 and "--data" in result.output


def test_config_rejects_unknown_keys_and_round_trips():
    config = TrainConfig()
    assert TrainConfig.from_json(config.to_json()) == config
    data = config.to_dict()
    data["loss"]["r1_gama"] = 1.0
    with pytest.raises(ConfigError, match="r1_gama"):
        TrainConfig.from_dict(data)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig.from_dict(dict(config.to_dict(), batch_size="32"))


def test_run_dirs_are_created_race_free(tmp_path):
    made = []
    threads = [threading.Thread(target=lambda: made.append(dnnlib.make_run_dir(str(tmp_path), "x"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 8
    assert sorted(os.path.basename(p) for p in made) == [f"{i:05d}-x" for i in range(8)]


def test_cli_trains_and_resumes_into_a_new_run_dir(tmp_path):
    from tests.test_training import build_tiny_dataset

    data = build_tiny_dataset(str(tmp_path))
    outdir = str(tmp_path / "runs")
    common = ["--outdir", outdir, "--cfg", "shapes", "--data", data, "--gaussian_num_pts", "16", "--res_end", "16",
              "--cmax", "32", "--cbase", "512", "--batch", "4", "--mbstd-group", "2", "--tick", "0.004",
              "--backend", "reference", "--workers", "0", "--device", "cpu", "--grid", "2x1", "--seed", "1"]
    first = CliRunner().invoke(train.main, common + ["--kimg", "0.004"])
    assert first.exit_code == 0, first.output
    run_dir = os.path.join(outdir, "00000-shapes-tiny16-gpus1-batch4-gamma0.1")
    assert os.path.isfile(os.path.join(run_dir, "network-snapshot-000000.pt"))
    second = CliRunner().invoke(train.main, common + ["--kimg", "0.008", "--resume", run_dir])
    assert second.exit_code == 0, second.output
    resumed = os.path.join(outdir, "00001-shapes-tiny16-gpus1-batch4-gamma0.1")
    stats = [json.loads(line) for line in open(os.path.join(resumed, "stats.jsonl"))]
    assert [s["Progress/kimg"]["mean"] for s in stats] == pytest.approx([0.008])
    assert "resuming from" in open(os.path.join(resumed, "log.txt")).read()
    assert sorted(os.listdir(outdir)) == ["00000-shapes-tiny16-gpus1-batch4-gamma0.1",
                                          "00001-shapes-tiny16-gpus1-batch4-gamma0.1"]
