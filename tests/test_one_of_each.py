"""One implementation each: the cache-folder resolver, the all-or-nothing file writer, the pixel quantizer and the
device resolver; and `splatting` importable without the rest of the project."""
import os
import subprocess
import sys

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import calc_metrics
import dnnlib
import gen_videos
from metrics import detector as detector_lib
from reconstruction import chunks, media
from splatting import atomic, cache
from splatting.backends import cpu
from torch_utils import misc, run_control
from training import video_utils as vu

from .conftest import REPO_ROOT


# --------------------------------------------------------------------------------------------------
# Cache folder.
def test_cache_root_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("GSGAN_CACHE_DIR", str(tmp_path / "c"))
    assert cache.cache_root() == str(tmp_path / "c")
    assert not (tmp_path / "c").exists()  # resolving never creates
    for unset in (None, ""):
        if unset is None:
            monkeypatch.delenv("GSGAN_CACHE_DIR")
        else:
            monkeypatch.setenv("GSGAN_CACHE_DIR", unset)
        assert cache.cache_root() == os.path.join(os.path.expanduser("~"), ".cache", "gsgan")


def test_every_cache_user_resolves_through_splatting_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("GSGAN_CACHE_DIR", str(tmp_path))
    assert dnnlib.cache_dir is cache.cache_dir
    assert dnnlib.cache_dir("a", "b") == str(tmp_path / "a" / "b") and (tmp_path / "a" / "b").is_dir()
    assert detector_lib.default_cache_dir() == str(tmp_path)
    assert cpu._cache_root() == str(tmp_path / "torch_extensions")


# --------------------------------------------------------------------------------------------------
# All-or-nothing writes.
def test_dnnlib_atomic_file_is_the_splatting_one(tmp_path):
    assert dnnlib.atomic_file is atomic.atomic_file
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(str(target), "w") as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic.atomic_file(str(target), "w") as handle:
        handle.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


STANDALONE_SCRIPT = r"""
import importlib, pkgutil, sys

class Blocker:
    BLOCKED = ("dnnlib", "torch_utils", "training", "metrics", "reconstruction", "viewer")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ImportError(f"blocked in this test: {name}")
        return None

sys.meta_path.insert(0, Blocker())
import torch
import splatting
for info in pkgutil.walk_packages(splatting.__path__, "splatting."):
    importlib.import_module(info.name)
g = splatting.Gaussians(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.tensor([[[1.0, 0, 0, 0]] * 2]),
                        torch.zeros(1, 2), torch.zeros(1, 2, 1, 3))
splatting.write_ply(sys.argv[1], g)
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in Blocker.BLOCKED))
"""


def test_splatting_imports_and_writes_a_ply_without_the_rest_of_the_project(tmp_path):
    path = tmp_path / "scene.ply"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", STANDALONE_SCRIPT, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok []"
    assert path.stat().st_size > 0


def test_the_import_blocker_does_block(tmp_path):
    """The standalone test proves something only if a dnnlib import in splatting would fail under it."""
    script = STANDALONE_SCRIPT.split("import torch\n")[0] + "import dnnlib\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO_ROOT),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "blocked in this test: dnnlib" in proc.stderr


# --------------------------------------------------------------------------------------------------
# Pixels.
def _reference_quantize(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float64 numpy reference: round half to even of (x - lo) * 255 / (hi - lo), clamped."""
    return np.clip(np.rint((x.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("drange", [(-1.0, 1.0), (0.0, 1.0)])
def test_quantize_uint8_rounds_to_nearest_and_clamps(drange):
    lo, hi = drange
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 16, 16, generator=gen) * (hi - lo) * 1.2 + lo - 0.1 * (hi - lo)  # 10% out of range
    got = misc.quantize_uint8(x, drange)
    assert got.dtype == torch.uint8 and got.shape == x.shape
    expected = _reference_quantize(x.numpy(), lo, hi)
    # float32 vs float64 may differ only where the value is within float32 rounding of a .5 tie
    scaled = (x.double().numpy() - lo) * (255.0 / (hi - lo))
    near_tie = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-4
    assert np.array_equal(got.numpy()[~near_tie], expected[~near_tie])
    assert np.all(np.abs(got.numpy().astype(int) - expected.astype(int)) <= 1)
    assert got.min() == 0 and got.max() == 255


@pytest.mark.parametrize("drange", [(-1.0, 1.0), (0.0, 1.0)])
def test_every_uint8_level_survives_the_round_trip(drange):
    """uint8 -> float in drange (as the loaders scale) -> uint8 is the identity."""
    lo, hi = drange
    levels = torch.arange(256, dtype=torch.uint8)
    floats = levels.float() / 127.5 - 1 if drange == (-1.0, 1.0) else levels.float() / 255
    assert torch.equal(misc.quantize_uint8(floats, drange), levels)
    assert lo == floats.min().item() and hi == floats.max().item()


def test_quantize_uint8_rounds_ties_to_even_and_matches_the_documented_formulas():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    assert misc.quantize_uint8(x).tolist() == [0, 64, 128, 191, 255]  # 63.75 -> 64, 127.5 -> 128, 191.25 -> 191
    y = torch.tensor([0.0, 0.5, 1.5 / 255, 2.5 / 255, 1.0])
    assert misc.quantize_uint8(y, drange=(0, 1)).tolist() == [0, 128, 2, 2, 255]  # 127.5 -> 128, 1.5 -> 2, 2.5 -> 2


@pytest.mark.parametrize("drange", [(1.0, 1.0), (1.0, -1.0)])
def test_quantize_uint8_refuses_an_empty_range(drange):
    with pytest.raises(ValueError, match=r"quantize_uint8: drange must be \(lo, hi\) with hi > lo"):
        misc.quantize_uint8(torch.zeros(1), drange)


def test_the_fid_quantizer_stays_the_reference_truncation():
    """FID keeps uint8(clamp(x * 127.5 + 128)), i.e. round half up of x * 127.5 + 127.5: the same pixels as the
    display rounding except at exact ties, where the display rounding goes to even."""
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(10_000, generator=gen) * 2.2 - 1.1
    scaled = x.double() * 127.5 + 127.5
    expected = np.clip(np.floor(scaled.numpy() + 0.5), 0, 255).astype(np.uint8)
    assert np.array_equal(detector_lib.to_uint8(x).numpy(), expected)
    not_tie = (scaled - scaled.floor() - 0.5).abs() > 1e-4
    assert torch.equal(detector_lib.to_uint8(x)[not_tie], misc.quantize_uint8(x)[not_tie])
    ties = torch.tensor([-1.0, 1.0, 3.0]) / 127.5  # x * 127.5 + 127.5 = 126.5, 128.5, 130.5 exactly
    assert detector_lib.to_uint8(ties).tolist() == [127, 129, 131]
    assert misc.quantize_uint8(ties).tolist() == [126, 128, 130]


def test_display_paths_all_use_the_one_quantizer():
    gen = torch.Generator().manual_seed(2)
    signed = torch.rand(3, 3, 5, 7, generator=gen) * 2.2 - 1.1
    unit = torch.rand(3, 3, 5, 7, generator=gen) * 1.2 - 0.1
    nhwc = misc.quantize_uint8(signed).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(misc.images_to_uint8(signed), nhwc)
    assert np.array_equal(vu.to_uint8(signed), nhwc)
    grey = vu.to_uint8(signed[:, :1])
    assert grey.shape == (3, 5, 7, 3) and np.array_equal(grey, np.repeat(nhwc[..., :1], 3, axis=3))
    assert np.array_equal(vu.to_uint8(unit, drange=(0, 1)), misc.images_to_uint8(unit, drange=(0, 1)))
    depth, alpha = torch.rand(3, 1, 5, 7, generator=gen), torch.ones(3, 1, 5, 7)
    frames = media.side_by_side_frames(unit.clamp(0, 1), depth, alpha)
    assert np.array_equal(frames[:, :, :7], misc.images_to_uint8(unit.clamp(0, 1), drange=(0, 1)))


def test_rescale_and_crop_quantizes_float_images_like_the_uint8_input():
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 8, 12, generator=gen)
    k = torch.eye(3).expand(2, 3, 3).clone()
    from_float, _ = chunks.rescale_and_crop(images, k, (6, 6))
    from_uint8, _ = chunks.rescale_and_crop(misc.quantize_uint8(images, drange=(0, 1)), k, (6, 6))
    assert torch.equal(from_float, from_uint8)


def test_save_image_grid_writes_the_quantized_pixels(tmp_path):
    from PIL import Image

    images = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    path = tmp_path / "grid.png"
    misc.save_image_grid(images, str(path), (2, 1))
    grid = np.asarray(Image.open(path))
    expected = misc.images_to_uint8(images)
    assert np.array_equal(grid[:, :4], expected[0]) and np.array_equal(grid[:, 4:], expected[1])


# --------------------------------------------------------------------------------------------------
# Device.
def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _fake_cuda(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("resolve", [lambda name: calc_metrics.resolve_device(name, 1), gen_videos._device],
                         ids=["calc_metrics", "gen_videos"])
def test_cli_device_resolvers_agree_with_run_control(monkeypatch, resolve):
    _no_cuda(monkeypatch)
    for name in ("auto", "cpu"):
        assert resolve(name) == run_control.resolve_device(name) == torch.device("cpu")
    _fake_cuda(monkeypatch, 1)
    assert resolve("auto") == run_control.resolve_device("auto") == torch.device("cuda", 0)
    assert resolve("cpu") == torch.device("cpu")


def test_cli_device_resolvers_name_the_option_when_cuda_is_missing(monkeypatch):
    _no_cuda(monkeypatch)
    with pytest.raises(click.BadParameter, match="CUDA is not available on this machine; use --device cpu") as info:
        calc_metrics.resolve_device("cuda", 1)
    assert info.value.param_hint == "--device"
    with pytest.raises(click.BadParameter, match="cuda requested but torch sees no CUDA device") as info:
        gen_videos._device("cuda")
    assert info.value.param_hint == "'--device'"


def test_calc_metrics_refuses_more_gpus_than_visible(monkeypatch):
    _fake_cuda(monkeypatch, 1)
    with pytest.raises(click.BadParameter, match="--gpus 2 but only 1 CUDA devices are visible") as info:
        calc_metrics.resolve_device("cuda", 2)
    assert info.value.param_hint == "--gpus"
    _no_cuda(monkeypatch)
    assert calc_metrics.resolve_device("cpu", 2) == torch.device("cpu")  # Gloo processes


def test_calc_metrics_cli_reports_a_missing_cuda_device_in_one_line(monkeypatch, tmp_path):
    _no_cuda(monkeypatch)
    result = CliRunner().invoke(calc_metrics.main, ["--network", str(tmp_path / "none.pt"), "--device", "cuda"])
    assert result.exit_code == 2, result.output  # click's usage error, no traceback
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error_lines == ["Error: Invalid value for --device: CUDA is not available on this machine; use --device "
                           "cpu"], result.output


def test_importing_dnnlib_does_not_import_splatting():
    """The benchmarks import dnnlib (bench/_results.py) before choosing which checkout's splatting they measure."""
    code = "import sys, dnnlib; print('splatting' in sys.modules, 'torch' in sys.modules, dnnlib.atomic_file.__module__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "splatting.atomic"]
