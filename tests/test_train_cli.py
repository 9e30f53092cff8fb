"""train.py: option parsing (both boolean styles), validation before any work, dry runs of the official scripts."""
import errno
import json
import os
import re
import shlex
import subprocess
import sys
import threading

import click
import pytest
import torch
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
    assert os.path.isfile(os.path.join(run_dir, "network-snapshot-000000.004.pt"))  # 4 images: 0.004 kimg
    second = CliRunner().invoke(train.main, common + ["--kimg", "0.008", "--resume", run_dir])
    assert second.exit_code == 0, second.output
    resumed = os.path.join(outdir, "00001-shapes-tiny16-gpus1-batch4-gamma0.1")
    stats = [json.loads(line) for line in open(os.path.join(resumed, "stats.jsonl"))]
    assert [s["Progress/kimg"]["mean"] for s in stats] == pytest.approx([0.008])
    assert "resuming from" in open(os.path.join(resumed, "log.txt")).read()
    assert sorted(os.listdir(outdir)) == ["00000-shapes-tiny16-gpus1-batch4-gamma0.1",
                                          "00001-shapes-tiny16-gpus1-batch4-gamma0.1"]


# ---------------------------------------------------------------------------------------------- bad inputs
TINY = ["--cfg", "shapes", "--gaussian_num_pts", "16", "--res_end", "16", "--cmax", "32", "--cbase", "512",
        "--batch", "4", "--mbstd-group", "2", "--tick", "0.004", "--backend", "reference", "--workers", "0",
        "--device", "cpu", "--grid", "2x1", "--seed", "1"]


def one_line_error(result, fragment: str) -> str:
    """The single 'Error: ...' line of a refused command, after checking it names `fragment` and is no traceback."""
    assert result.exit_code in (1, 2), (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # refused by the CLI, nothing escaped
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    return errors[0]


FLOAT_OPTIONS = sorted(p.opts[0] for p in train.main.params if isinstance(p.type, click.types.FloatParamType))


def test_every_float_option_refuses_nan_and_inf():
    assert all(isinstance(p.type, train.FiniteFloat) for p in train.main.params
               if isinstance(p.type, click.types.FloatParamType))
    assert {"--kimg", "--glr", "--c-scale", "--p", "--gamma"} <= set(FLOAT_OPTIONS)


@pytest.mark.parametrize("option", FLOAT_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_float_options_are_refused_before_any_work(option, value, tmp_path):
    outdir = tmp_path / "runs"
    result = CliRunner().invoke(train.main, ["--outdir", str(outdir), "--cfg", "shapes", f"{option}={value}"])
    one_line_error(result, f"Invalid value for '{option}': expected a finite number, got '{value}'")
    assert not outdir.exists()
    assert not os.path.exists(os.path.join(os.environ["GSGAN_CACHE_DIR"], "datasets"))  # shapes data not built


def test_config_refuses_non_finite_values_and_launch_writes_nothing(tmp_path):
    from training import training_loop

    with pytest.raises(ConfigError, match=r"TrainConfig.optim.glr: expected a finite number, got nan"):
        TrainConfig().replace(optim=TrainConfig().optim.replace(glr=float("nan"))).validate()
    with pytest.raises(ConfigError, match=r"TrainConfig.loss.r1_gamma: expected a finite number"):
        TrainConfig.from_json('{"loss": {"r1_gamma": Infinity}}')
    config = TrainConfig(outdir=str(tmp_path / "runs"), total_kimg=float("inf"))
    with pytest.raises(ConfigError, match="total_kimg"):
        training_loop.launch(config)
    assert not (tmp_path / "runs").exists()  # no run folder, no training_options.json with a NaN


def test_outdir_that_is_a_file_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(train.main, ["--outdir", str(blocker / "sub"), "--cfg", "shapes"])
    one_line_error(result, f"--outdir: {blocker} is a file, not a folder")
    assert not os.path.exists(os.path.join(os.environ["GSGAN_CACHE_DIR"], "datasets"))  # shapes data not built


def deny_writes_into(monkeypatch, folder) -> None:
    """Make the write probe of training.output_paths (a temporary file in the folder) fail in `folder` as it
    fails in a read-only folder. Root ignores permissions, so this is how CI (running as root) sees the refusal."""
    import types

    from training import output_paths

    real = output_paths.tempfile.TemporaryFile

    def probe(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, "tmpXXXX"))
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(output_paths, "tempfile", types.SimpleNamespace(TemporaryFile=probe))


def test_outdir_without_write_permission_is_refused_also_as_root(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    deny_writes_into(monkeypatch, locked)
    result = CliRunner().invoke(train.main, ["--outdir", str(locked / "runs"), "--cfg", "shapes"])
    one_line_error(result, f"--outdir: cannot write into {locked} (Permission denied)")
    assert os.listdir(locked) == []  # no stub run folder
    assert not os.path.exists(os.path.join(os.environ["GSGAN_CACHE_DIR"], "datasets"))  # shapes data not built


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_outdir_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = CliRunner().invoke(train.main, ["--outdir", str(locked / "runs"), "--cfg", "shapes"])
        one_line_error(result, f"--outdir: cannot write into {locked}")
    finally:
        locked.chmod(0o755)
    assert os.listdir(locked) == []


@pytest.fixture(scope="module")
def tiny_snapshot(tmp_path_factory):
    """(dataset, snapshot) of a 4-image CLI run: the base of every --resume case below."""
    from tests.test_training import build_tiny_dataset

    base = tmp_path_factory.mktemp("tiny-run")
    data = build_tiny_dataset(str(base))
    result = CliRunner().invoke(train.main, ["--outdir", str(base / "runs"), "--data", data, *TINY, "--kimg", "0.004"])
    assert result.exit_code == 0, result.output
    (run_dir,) = [os.path.join(base, "runs", name) for name in os.listdir(base / "runs")]
    return data, os.path.join(run_dir, "network-snapshot-000000.004.pt")


def _variant(snapshot: str, dest, change) -> str:
    data = torch.load(snapshot, weights_only=True)
    assert data.pop("checksum").startswith("sha256:")  # train.py's snapshots carry one: a change would be caught
    change(data)
    torch.save(data, str(dest))  # as written by hand or before checksums existed: the other checks must catch it
    return str(dest)


def _wrong_shape(data):
    name = next(k for k, v in data["G"]["state_dict"].items() if v.ndim == 2)
    tensor = data["G"]["state_dict"][name]
    data["G"]["state_dict"][name] = torch.zeros(tensor.shape[0] + 1, tensor.shape[1])


def _wrong_moment(data):
    data["optimizers"]["G"]["state"][0]["exp_avg"] = torch.zeros(3, 3, 3)


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _resume_case(case: str, snapshot: str, tmp_path) -> tuple[str, list[str], str]:
    """(--resume path, extra options, expected fragment of the error line) of one bad --resume."""
    if case == "truncated":
        path = tmp_path / "truncated.pt"
        path.write_bytes(open(snapshot, "rb").read()[:5000])
        return str(path), [], "is not a gsgan snapshot: refused to load it safely"
    if case == "text":
        path = tmp_path / "notes.pt"
        path.write_text("these are not the weights you are looking for\n")
        return str(path), [], "is not a gsgan snapshot: refused to load it safely"
    if case == "hostile":
        path = tmp_path / "hostile.pt"
        torch.save({"format": "gsgan-snapshot", "version": 1, "G": _Hostile(str(tmp_path / "pwned"))}, str(path))
        return str(path), [], "is not a gsgan snapshot: refused to load it safely"
    if case == "flipped byte":
        path = tmp_path / "flipped.pt"
        path.write_bytes(open(snapshot, "rb").read())
        from tests.test_checkpoint import _flip_tensor_byte

        _flip_tensor_byte(str(path))
        return str(path), [], "checksum mismatch"
    if case == "wrong shape":
        return _variant(snapshot, tmp_path / "shape.pt", _wrong_shape), [], "(G) does not match GSGenerator: shape"
    if case == "no optimizer":
        return (_variant(snapshot, tmp_path / "noopt.pt", lambda d: d.pop("optimizers")), [],
                "a snapshot without optimizer states cannot be resumed")
    if case == "imported":
        def imported(data):
            data["optimizers"], data["imported_from"] = None, {"path": "network-snapshot.pkl"}
        return (_variant(snapshot, tmp_path / "imported.pt", imported), [],
                "an imported official checkpoint without optimizer states cannot be resumed")
    if case == "optimizer shape":
        return (_variant(snapshot, tmp_path / "moment.pt", _wrong_moment), [],
                "optimizers.G: exp_avg of parameter 0 has shape [3, 3, 3]")
    if case == "bad progress":
        return (_variant(snapshot, tmp_path / "progress.pt", lambda d: d["progress"].update(cur_nimg=-4)), [],
                "progress must hold non-negative integers")
    if case == "architecture":
        return snapshot, ["--gaussian_num_pts", "32"], "G architecture differs from this run's options: num_points=16"
    if case == "augment":
        return snapshot, ["--aug", "ada"], "augment_pipe is missing but this run uses it"
    if case == "kimg reached":
        return snapshot, ["--kimg", "0.004"], "is already at kimg 0.004: nothing left to train"
    raise AssertionError(case)


RESUME_CASES = ["truncated", "text", "hostile", "flipped byte", "wrong shape", "no optimizer", "imported",
                "optimizer shape", "bad progress", "architecture", "augment", "kimg reached"]


@pytest.mark.parametrize("case", RESUME_CASES)
def test_bad_resume_is_one_line_before_any_run_folder(case, tiny_snapshot, tmp_path):
    data, snapshot = tiny_snapshot
    path, extra, fragment = _resume_case(case, snapshot, tmp_path)
    outdir = tmp_path / "runs"
    args = ["--outdir", str(outdir), "--data", data, *TINY, "--kimg", "0.008", *extra, "--resume", path]
    line = one_line_error(CliRunner().invoke(train.main, args), fragment)
    assert os.path.basename(path) in line
    assert not outdir.exists()
    assert not (tmp_path / "pwned").exists()


def test_image_that_fails_mid_training_is_one_line(tmp_path):
    """Every image but the first (read when the options are checked) is damaged: the first batch fails in the
    DataLoader worker and the command ends with that image's one line (seed 6: the 1x1 grid shows image 0)."""
    from tests.test_dataset import write_folder

    folder = write_folder(tmp_path / "ds", n=8, res=16)
    for i in range(1, 8):
        with open(os.path.join(folder, f"sub/img{i:03d}.png"), "r+b") as handle:
            handle.seek(40)
            handle.write(b"\0" * 64)
    # --backdrop off: auto samples images for the border statistics at set-up and would meet a damaged one there
    args = ["--outdir", str(tmp_path / "runs"), "--data", folder, *TINY, "--kimg", "0.008", "--workers", "1",
            "--grid", "1x1", "--seed", "6", "--backdrop", "off"]
    line = one_line_error(CliRunner().invoke(train.main, args), f"{folder}/sub/img00")
    assert "not a readable image" in line
    assert len(os.listdir(tmp_path / "runs")) == 1  # met by the running trainer, after the options were checked
    # with the default --backdrop auto the border sample meets a damaged image at set-up: one line, no run folder
    line = one_line_error(CliRunner().invoke(train.main, args[:-2] + ["--outdir", str(tmp_path / "runs2")]),
                          f"{folder}/sub/img00")
    assert "not a readable image" in line and not (tmp_path / "runs2").exists()


def test_defaults_come_from_the_config_dataclasses():
    """Every option neither given nor set by the cfg preset resolves to the dataclass default."""
    options = resolved_options(CliRunner().invoke(train.main, BASE).output)
    defaults = TrainConfig().to_dict()
    preset_or_derived = {"cfg", "outdir", "data", "G", "loss", "metrics", "grid_size"}
    assert {k: v for k, v in options.items() if k not in preset_or_derived} == \
        {k: v for k, v in defaults.items() if k not in preset_or_derived}
    assert {k: v for k, v in options["G"].items() if k not in ("extra", "neural_rendering_resolution")} == \
        {k: v for k, v in defaults["G"].items() if k not in ("extra", "neural_rendering_resolution")}
    assert dict(options["loss"], prob_uniform=0.0) == defaults["loss"]  # ffhq's preset: prob_uniform 0.5


def test_choice_lists_are_the_registries():
    from splatting.backends import BACKENDS
    from training import config

    choices = {p.name: list(p.type.choices) for p in train.main.params if isinstance(p.type, click.Choice)}
    assert choices == {"cfg": list(config.CFG_NAMES), "aug": list(config.AUGMENT_MODES),
                       "backend": ["auto", *BACKENDS], "device": list(config.DEVICES),
                       "nonfinite": list(config.NONFINITE_MODES), "arch": list(config.GENERATOR_ARCHS),
                       "backdrop": list(config.BACKDROP_MODES)}
