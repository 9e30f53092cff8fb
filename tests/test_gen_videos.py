"""gen_videos.py: videos (frames, size, codec, layout), gs_params flags, .ply export and frame, stills, bad input."""
import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gen_videos
from tests.conftest import read_only_dir
from splatting import Cameras, render
from splatting.ply import property_names
from torch_utils.checkpoint import save_snapshot
from training import media_export as me
from training import video_utils as vu
from training.discriminator import Discriminator
from training.generator import OPACITY_ONES_LOGIT_CLEAN, GSGenerator, GSParams
from training.mp4_writer import VideoError

RES = 32
TINY_G = dict(img_resolution=RES, num_points=16, res_end=32, channel_base=256, channel_min=16, channel_max=32,
              num_heads=2, num_transformer_layers=1, knn_k=4, view_dim=8, const_pe_length=16, bg_num_points=64,
              bg_channels=16, w_dim=32, z_dim=32)
PRESET = vu.CAMERA_PRESETS["ffhq"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    return GSGenerator(**TINY_G).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def snapshot(G, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("snap") / "network-snapshot-000000.pt")
    D = Discriminator(img_resolution=RES, channel_base=256, channel_max=32, cam_hidden=32, pose_feat_dim=8,
                      num_fp16_res=0)
    return save_snapshot(path, {"G": G, "D": D, "G_ema": G}, options={"cfg": "ffhq"})


def run(*args):
    result = CliRunner().invoke(gen_videos.cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ply_run(snapshot, outdir, *flags, seeds="0-1"):
    result = run("--network", snapshot, "--seeds", seeds, "--outdir", outdir, "--no-video", *flags)
    assert result.exit_code == 0, result.output
    return [me.rotate_x180(read(os.path.join(outdir, f"seed{s:04d}.ply")), inverse=True)
            for s in vu.parse_int_list(seeds)]


def read(path):
    from splatting.ply import read_ply
    return read_ply(path)


def frames_of(path):
    return np.stack(list(iio.imiter(path)))


# --------------------------------------------------------------------------------------------------
# Parsing and layout.
def test_parse_int_list_and_grid():
    assert vu.parse_int_list("0-3,7") == [0, 1, 2, 3, 7]
    assert vu.parse_int_list("5") == [5]
    for bad in ["", "a", "3-1", "1,,2", "1-", "-2"]:
        with pytest.raises(ValueError):
            vu.parse_int_list(bad)
    assert vu.parse_grid("3x2") == (3, 2)
    for bad in ["3", "0x2", "axb", "2x"]:
        with pytest.raises(ValueError):
            vu.parse_grid(bad)
    with pytest.raises(ValueError, match="multiple of 4"):
        vu.keyframes_per_cell(6, 2, 2)


def test_cell_keyframes_layout_and_interpolation():
    ws = torch.arange(8, dtype=torch.float64).view(8, 1, 1).expand(8, 2, 3).clone()  # w = seed index
    keys = vu.cell_keyframes(ws, 2, 2)
    assert keys.shape == (4, 2, 2, 3)
    assert keys[:, :, 0, 0].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    interp = vu.KeyframeInterpolator(keys)
    assert torch.allclose(interp(0.0), keys[:, 0]) and torch.allclose(interp(1.0), keys[:, 1])
    mid = interp(0.5)[:, 0, 0]
    assert ((mid > keys[:, 0, 0, 0]) & (mid < keys[:, 1, 0, 0])).all()
    one = vu.KeyframeInterpolator(keys[:, :1])
    assert torch.equal(one(0.3), keys[:, 0]) and torch.equal(one(0.9), keys[:, 0])


def test_tile_grid_is_row_major():
    cells = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1) * np.ones((1, 2, 3, 3), np.uint8)
    grid = vu.tile_grid(cells, 3, 2)  # 3 columns, 2 rows of 2x3-pixel cells
    assert grid.shape == (4, 9, 3)
    assert grid[::2, ::3, 0].tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError):
        vu.tile_grid(cells, 2, 2)


def test_depth_normalization():
    depth = np.array([[[[2.0, 3.0], [np.nan, 2.5]]]], dtype=np.float32)
    lo, hi = vu.finite_range(depth)
    assert lo.tolist() == [2.0] and hi.tolist() == [3.0]
    x = vu.normalize_depth(depth, lo, hi)
    assert x[0, 0].tolist() == [[1.0, -1.0], [-1.0, 0.0]]  # near bright, far and empty black
    empty = np.full((1, 1, 2, 2), np.nan, np.float32)
    assert (vu.normalize_depth(empty, *vu.finite_range(empty)) == -1).all()


# --------------------------------------------------------------------------------------------------
# Videos.
def test_video_frames_size_codec_and_content(G, snapshot, tmp_path):
    out = tmp_path / "out"
    result = run("--network", snapshot, "--seeds", "0-3", "--grid", "2x2", "--trunc", "0.7", "--outdir", out,
                 "--frames", 5, "--no-ply")
    assert result.exit_code == 0, result.output
    path = out / "seed0000-0003.mp4"
    assert sorted(os.listdir(out)) == ["seed0000-0003.mp4"]  # no temp files, no ply
    meta = iio.immeta(path)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 60
    frames = frames_of(path)
    assert frames.shape == (5, 2 * RES, 2 * RES, 3)
    # Every frame is the four cells rendered in one call from its own trajectory camera.
    ws = vu.compute_ws(G, [0, 1, 2, 3], PRESET, truncation_psi=0.7)
    labels = vu.trajectory_labels("ffhq", 5, PRESET)
    for t in (0, 2, 4):
        expected = vu.tile_grid(vu.to_uint8(G.synthesis(ws, labels[t].expand(4, -1))["image"]), 2, 2)
        errors = [np.abs(frames[s].astype(float) - expected).mean() for s in range(5)]
        # H.264 at 10 Mbit/s of a 64x64 frame differs by ~2 levels on average; other cameras by 12+.
        assert errors[t] < 4.0 and errors[t] == min(errors), errors


class _ValueG:
    """Stand-in generator: red = ws[:, 0, 0], green = camera x position / 3, so frames reveal the layout."""

    def synthesis(self, ws, c, neural_rendering_resolution=None, gs_params=None):
        flat = lambda v: v.view(-1, 1, 1, 1).expand(-1, 1, 16, 16)  # noqa: E731
        return {"image": torch.cat([flat(ws[:, 0, 0]), flat(c[:, 3] / 3), flat(torch.zeros_like(c[:, 3]))], 1)}


def test_video_cells_keyframes_and_cameras(tmp_path):
    values = torch.tensor([[-0.8, 0.8], [-0.4, 0.4], [0.0, -0.6], [0.6, -0.2]])  # [cells, K]
    keys = values.view(4, 2, 1, 1).expand(4, 2, 2, 3)
    labels = vu.trajectory_labels("orbit", 4, PRESET)
    path = str(tmp_path / "v.mp4")
    vu.render_video(_ValueG(), keys, labels, path, cols=2, rows=2, progress=False)
    frames = frames_of(path).astype(float)
    assert frames.shape == (4, 32, 32, 3)
    cells = frames.reshape(4, 2, 16, 2, 16, 3).mean(axis=(2, 4)).reshape(4, 4, 3)  # [T, cell, rgb], row-major
    to_level = lambda x: x * 127.5 + 127.5  # noqa: E731  (flat cells survive yuv420p within a few levels)
    assert np.abs(cells[0, :, 0] - to_level(values[:, 0].numpy())).max() < 6  # t = 0: keyframe 0
    assert np.abs(cells[2, :, 0] - to_level(values[:, 1].numpy())).max() < 6  # t = T/2: keyframe 1
    camera_x = to_level(labels[:, 3].numpy() / 3)
    assert np.abs(cells[:, :, 1] - camera_x[:, None]).max() < 6  # one camera per frame, shared by the cells


def test_video_keyframes_orbit_and_nrr(snapshot, tmp_path):
    result = run("--network", snapshot, "--seeds", "0-7", "--grid", "2x2", "--outdir", tmp_path, "--frames", 3,
                 "--fps", 24, "--nrr", 16, "--trajectory", "orbit", "--no-ply")
    assert result.exit_code == 0, result.output
    path = tmp_path / "seed0000-0007.mp4"
    assert frames_of(path).shape == (3, 32, 32, 3) and iio.immeta(path)["fps"] == 24


def test_video_depth_and_alpha_modes(snapshot, tmp_path):
    for mode, name in [("image_depth", "seed0000-depth.mp4"), ("image_alpha", "seed0000-alpha.mp4")]:
        result = run("--network", snapshot, "--seeds", 0, "--outdir", tmp_path, "--frames", 3, "--no-ply",
                     "--disable_background", "--image_mode", mode)
        assert result.exit_code == 0, result.output
        frames = frames_of(tmp_path / name)
        assert frames.shape == (3, RES, RES, 3)
        assert frames.min() <= 8 and frames.max() >= 200  # empty = black; depth spans the whole range
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_camera_cond_fixes_colours_across_frames(G):
    keys = vu.cell_keyframes(vu.compute_ws(G, [0], PRESET), 1, 1)
    labels = vu.trajectory_labels("ffhq", 4, PRESET)[[0, 1]]
    for camera_cond in (False, True):
        a, b = list(vu._frame_outputs(G, keys, labels, None, GSParams(camera_cond=camera_cond)))
        same = torch.equal(a["gaussians"].sh, b["gaussians"].sh)
        assert same == camera_cond


def test_writer_pads_odd_sizes_and_needs_frames(tmp_path):
    path = str(tmp_path / "odd.mp4")
    with vu.AtomicMp4Writer(path, fps=10) as writer:
        for value in (0, 255):
            writer.append(np.full((15, 17, 3), value, np.uint8))
    assert frames_of(path).shape == (2, 16, 18, 3)
    with pytest.raises(ValueError, match="no frames"):
        with vu.AtomicMp4Writer(str(tmp_path / "empty.mp4")):
            pass
    with pytest.raises(ValueError, match="uint8"):
        with vu.AtomicMp4Writer(str(tmp_path / "bad.mp4")) as writer:
            writer.append(np.zeros((4, 4, 3), np.float32))
    assert sorted(os.listdir(tmp_path)) == ["odd.mp4"]


class _Exploding:
    """Wraps G; synthesis raises `error` on call number `at`."""

    def __init__(self, G, at, error):
        self.G, self.at, self.error, self.calls = G, at, error, 0

    def synthesis(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise self.error
        return self.G.synthesis(*args, **kwargs)


@pytest.mark.parametrize("mode", ["image", "image_depth"])
@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_no_partial_video_on_failure(G, tmp_path, mode, error):
    keys = vu.cell_keyframes(vu.compute_ws(G, [0], PRESET), 1, 1)
    labels = vu.trajectory_labels("ffhq", 4, PRESET)
    with pytest.raises(type(error)):
        vu.render_video(_Exploding(G, 3, error), keys, labels, str(tmp_path / "v.mp4"), 1, 1, image_mode=mode,
                        progress=False)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# gs_params flags, seen through the exported .ply. atol 1e-6 where the same Gaussians are recomputed in another batch
# (float32 sums in another order); the frame rotation itself is exact.
def test_ply_readback_matches_generator(G, snapshot, tmp_path):
    from plyfile import PlyData

    result = run("--network", snapshot, "--seeds", "3,5", "--outdir", tmp_path, "--no-video")
    assert result.exit_code == 0, result.output
    ply = PlyData.read(str(tmp_path / "seed0005.ply"))
    assert [p.name for p in ply["vertex"].properties] == property_names(0)
    assert ply["vertex"].count == G.gaussian_counts()["total"]
    expected = me.frontal_gaussians(G, vu.compute_ws(G, [5], PRESET), PRESET)
    back = me.rotate_x180(read(tmp_path / "seed0005.ply"), inverse=True)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert torch.allclose(getattr(back, name), getattr(expected, name), atol=1e-6), name
    # The file itself is in the y-down frame: y and z negated.
    raw = read(tmp_path / "seed0005.ply")
    assert torch.allclose(raw.means, expected.means * torch.tensor([1.0, -1.0, -1.0]), atol=1e-6)
    # --ply-frame eg3d writes the generator's frame unchanged.
    assert run("--network", snapshot, "--seeds", 5, "--outdir", tmp_path, "--no-video", "--ply-frame",
               "eg3d").exit_code == 0
    assert torch.allclose(read(tmp_path / "seed0005.ply").means, expected.means, atol=1e-6)


def test_rotate_x180_is_a_rigid_rotation_of_the_scene(G):
    """Rendering the rotated Gaussians with the rotated camera gives the same image (so covariances rotate too)."""
    from splatting.projection import quat_to_rotmat

    g = me.frontal_gaussians(G, vu.compute_ws(G, [0], PRESET), PRESET)
    r = me.rotate_x180(g)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(quat_to_rotmat(r.quats), flip @ quat_to_rotmat(g.quats), atol=1e-5)
    back = me.rotate_x180(r, inverse=True)
    assert torch.equal(back.quats, g.quats) and torch.equal(back.means, g.means)
    cams = Cameras.from_eg3d_labels(vu.yaw_sweep_labels([0.3], PRESET)[None], RES, RES)
    flip4 = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    cams_rotated = Cameras(cams.world_to_cam @ flip4, cams.K, RES, RES)
    a, b = render(g, cams), render(r, cams_rotated)
    assert torch.allclose(a.color, b.color, atol=1e-4) and torch.allclose(a.depth, b.depth, atol=1e-4)


def test_gs_params_flags_change_the_gaussians(G, snapshot, tmp_path):
    counts = G.gaussian_counts()
    base = ply_run(snapshot, tmp_path / "base")
    nofg = ply_run(snapshot, tmp_path / "nobg", "--disable_background")
    assert base[0].num_gaussians == counts["total"] and nofg[0].num_gaussians == counts["foreground"]
    fg = counts["foreground"]
    assert torch.allclose(nofg[0].means, base[0].means[:, :fg], atol=1e-6)

    level0 = ply_run(snapshot, tmp_path / "l0", "--res_visualize", 0, "--disable_background")
    assert level0[0].num_gaussians == counts["levels"][0]
    assert torch.allclose(level0[1].means, base[1].means[:, :counts["levels"][0]], atol=1e-6)
    level0_bg = ply_run(snapshot, tmp_path / "l0bg", "--res_visualize", 0)
    assert level0_bg[0].num_gaussians == counts["levels"][0] + counts["background"]
    levels12 = ply_run(snapshot, tmp_path / "l12", "--res_visualize", "1-2", "--disable_background")
    assert levels12[0].num_gaussians == counts["levels"][1] + counts["levels"][2]

    anchors = ply_run(snapshot, tmp_path / "anchor", "--visualize_anchor", "--disable_background")
    assert anchors[0].num_gaussians == counts["anchors"]
    assert torch.allclose(anchors[0].opacity_logits, torch.tensor(OPACITY_ONES_LOGIT_CLEAN), atol=1e-5)

    scaled = ply_run(snapshot, tmp_path / "scale", "--rendering_scale", -0.5)
    assert torch.allclose(scaled[0].log_scales[:, :fg], base[0].log_scales[:, :fg] - 0.5, atol=1e-5)
    assert torch.allclose(scaled[0].log_scales[:, fg:], base[0].log_scales[:, fg:], atol=1e-6)  # background kept

    opaque = ply_run(snapshot, tmp_path / "opaque", "--opacity_ones")
    assert torch.allclose(opaque[0].opacity_logits[:, :fg], torch.tensor(OPACITY_ONES_LOGIT_CLEAN), atol=1e-5)
    assert torch.allclose(opaque[0].opacity_logits[:, fg:], base[0].opacity_logits[:, fg:], atol=1e-6)

    # point_index at level 1: the up_ratio children of the listed initial points.
    picked = ply_run(snapshot, tmp_path / "pick", "--res_visualize", 1, "--point_index", "2,5",
                     "--disable_background")
    level1 = base[0].means[:, counts["levels"][0]:counts["levels"][0] + counts["levels"][1]]
    assert torch.allclose(picked[0].means, torch.cat([level1[:, 8:12], level1[:, 20:24]], dim=1), atol=1e-6)
    near = ply_run(snapshot, tmp_path / "near", "--res_visualize", 0, "--point_index", 3,
                   "--num_init_near_point", 4, "--disable_background")
    assert near[0].num_gaussians == 4
    assert (near[0].means == base[0].means[:, 3:4]).all(-1).any()  # the centre point is among them


# --------------------------------------------------------------------------------------------------
# Stills, view, bad input.
def test_dry_run_writes_nothing(snapshot, tmp_path):
    result = run("--network", snapshot, "--seeds", "0-7", "--grid", "2x2", "--outdir", tmp_path / "o", "--images",
                 "--dry-run")
    assert result.exit_code == 0, result.output
    assert "seed0000-0007.mp4" in result.output and "2 keyframe(s)" in result.output
    assert not os.path.exists(tmp_path / "o")


def test_still_images(snapshot, tmp_path):
    result = run("--network", snapshot, "--seeds", "0-1", "--outdir", tmp_path, "--no-video", "--no-ply", "--images")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["seed0000.png", "seed0001.png"]
    image = iio.imread(tmp_path / "seed0001.png")
    assert image.shape == (2 * RES, len(me.STILL_YAWS) * RES, 3) and image.dtype == np.uint8
    assert not np.array_equal(image[:RES, :RES], image[:RES, -RES:])  # different yaws


def test_view_subcommand(monkeypatch, tmp_path):
    import viewer.server

    calls = []
    monkeypatch.setattr(viewer.server, "serve", lambda path, **kw: calls.append((path, kw)) or 0)
    ply = tmp_path / "x.ply"
    ply.write_bytes(b"ply\n")
    result = run("view", ply, "--no-browser", "--port", 0, "--frame", "eg3d")
    assert result.exit_code == 0, result.output
    assert calls == [(str(ply), {"port": 0, "frame": "eg3d", "open_browser": False})]
    assert "videos" in run("--help").output and "view" in run("--help").output


def _error_line(result):
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("args, code, message", [
    (["--seeds", "0-x"], 2, "--seeds"),
    (["--seeds", "3-1"], 2, "empty"),
    (["--seeds", "0-3", "--grid", "3x1"], 2, "multiple of 3"),
    (["--grid", "2by2"], 2, "--grid"),
    (["--res_visualize", "9"], 2, "--res_visualize"),
    (["--visualize_anchor", "--res_visualize", "2"], 2, "anchor levels"),
    (["--point_index", "99"], 2, "--point_index"),
    (["--num_init_near_point", "2"], 2, "--num_init_near_point"),
    (["--point_index", "0,1", "--num_init_near_point", "2"], 2,
     "'--num_init_near_point': needs exactly one point_index"),
    (["--point_index", "0", "--num_init_near_point", "17"], 2, "'--num_init_near_point': expected 1..16"),
    (["--point_index", "16"], 2, "'--point_index': 16 out of range: this generator has 16 initial points"),
    (["--rendering_scale", "nan"], 2, "'--rendering_scale': expected a finite number"),
])
def test_bad_options(snapshot, tmp_path, args, code, message):
    result = run("--network", snapshot, "--outdir", tmp_path / "o", "--frames", 2, *args)
    assert result.exit_code == code and message in _error_line(result)
    assert not os.path.exists(tmp_path / "o") or os.listdir(tmp_path / "o") == []


def test_bad_snapshot_and_outdir(snapshot, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a snapshot")
    result = run("--network", junk, "--outdir", tmp_path / "o", "--frames", 2)
    assert result.exit_code == 1 and "not a gsgan snapshot" in _error_line(result)
    assert not os.path.exists(tmp_path / "o")  # no stub output folder
    result = run("--network", tmp_path / "missing.pt", "--outdir", tmp_path / "o", "--frames", 2)
    assert result.exit_code == 1 and "missing.pt" in _error_line(result)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for outdir in (blocker, blocker / "sub"):  # a file where a folder should be, also further up
        result = run("--network", snapshot, "--outdir", outdir, "--frames", 2)
        assert result.exit_code == 2 and "--outdir" in _error_line(result) and "is a file" in _error_line(result)
    result = run("--network", snapshot, "--outdir", tmp_path / "missing" / ".." / "o", "--frames", 2)
    assert result.exit_code == 2 and "'..' after it" in _error_line(result)
    assert sorted(os.listdir(tmp_path)) == ["file", "junk.pt"]


def test_read_only_outdir_is_refused_up_front(snapshot, tmp_path):
    result = run("--network", snapshot, "--outdir", os.path.join(read_only_dir(tmp_path), "o"), "--frames", 2)
    assert result.exit_code == 2 and "cannot write into" in _error_line(result)


def test_outdir_without_write_permission_is_refused_also_as_root(snapshot, tmp_path, monkeypatch):
    from tests.test_train_cli import deny_writes_into

    locked = tmp_path / "locked"
    locked.mkdir()
    deny_writes_into(monkeypatch, locked)
    result = run("--network", snapshot, "--outdir", locked / "o", "--frames", 2)
    assert result.exit_code == 2
    assert f"'--outdir': cannot write into {locked} (Permission denied)" in _error_line(result)
    assert os.listdir(locked) == []  # no stub output folder


@pytest.mark.parametrize("args, message", [
    (["--bitrate", "100"], "--bitrate"),
    (["--bitrate", "fast"], "like 10M, 800k"),
    (["--fps", "0"], "--fps"),
    (["--fps", "nan"], "0.1 to 1000"),
    (["--frames", 10 ** 9], "--frames"),
    (["--seeds", "0-4294967296"], "more than 10,000 seeds"),
    (["--point_index", "0-999999999"], "more than 100,000"),
    (["--nrr", 100000], "--nrr"),
    (["--device", "cpu", "--backend", "gsplat"], "--backend"),
    (["--backend", "fastest"], "--backend"),
    (["--ply-sh-degree", 4], "--ply-sh-degree"),
])
def test_unbounded_or_bad_media_options_are_refused_up_front(snapshot, tmp_path, args, message):
    result = run("--network", snapshot, "--outdir", tmp_path / "o", *args)
    assert result.exit_code == 2 and message in _error_line(result), result.output
    assert not os.path.exists(tmp_path / "o")


def test_frames_too_large_for_a_video_are_refused(snapshot, tmp_path):
    result = run("--network", snapshot, "--outdir", tmp_path / "o", "--seeds", "0-2", "--grid", "3x1", "--nrr", 4096)
    assert result.exit_code == 1 and "12288x4096 frames; at most 8192" in _error_line(result)
    assert not os.path.exists(tmp_path / "o")


def test_snapshot_claiming_a_trillion_points_is_refused(snapshot, tmp_path):
    data = torch.load(snapshot, weights_only=True)
    data["G_ema"]["init_kwargs"]["num_points"] = 10 ** 12
    huge = tmp_path / "huge.pt"
    data.pop("checksum", None)  # edited on purpose: not a corrupted file
    torch.save(data, huge)
    result = run("--network", huge, "--outdir", tmp_path / "o", "--frames", 2)
    assert result.exit_code == 1 and "Gaussians per sample; at most" in _error_line(result)
    assert not os.path.exists(tmp_path / "o")


def _fake_encoder(tmp_path, script):
    path = tmp_path / "fake-ffmpeg"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("script, message", [
    ("cat > /dev/null; echo 'x264 [error]: No space left on device' >&2; exit 1",
     "the encoder failed (exit status 1): x264 [error]: No space left on device"),
    ("cat > /dev/null; exit 0", "the encoder wrote nothing"),
])
def test_encoder_failure_fails_the_command_and_keeps_the_old_video(snapshot, tmp_path, monkeypatch, script, message):
    import training.mp4_writer

    out = tmp_path / "out"
    out.mkdir()
    old = out / "seed0000.mp4"
    old.write_bytes(b"a good video from yesterday")
    monkeypatch.setattr(training.mp4_writer, "ffmpeg_executable", lambda: _fake_encoder(tmp_path, script))
    result = run("--network", snapshot, "--seeds", 0, "--outdir", out, "--frames", 3, "--nrr", 16, "--no-ply")
    assert result.exit_code == 1 and message in _error_line(result), result.output
    assert "wrote " + str(out) not in result.output
    assert old.read_bytes() == b"a good video from yesterday" and os.listdir(out) == ["seed0000.mp4"]


def test_writer_reports_an_encoder_that_dies_at_once(tmp_path, monkeypatch):
    import training.mp4_writer

    monkeypatch.setattr(training.mp4_writer, "ffmpeg_executable",
                        lambda: _fake_encoder(tmp_path, "echo 'Unknown encoder libx264' >&2; exit 8"))
    message = r"v.mp4: the encoder (stopped|failed) \(exit status 8\): Unknown encoder libx264"
    with pytest.raises(VideoError, match=message):
        with vu.AtomicMp4Writer(str(tmp_path / "v.mp4")) as writer:
            for _ in range(8):  # 8 x 768 KB: more than a pipe buffer, so a write meets the dead encoder
                writer.append(np.zeros((512, 512, 3), np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["fake-ffmpeg"]


def test_sigterm_leaves_no_temp_file_and_no_ffmpeg(snapshot, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, os.path.join(repo, "gen_videos.py"), "--network", snapshot, "--seeds", "0",
                             "--outdir", str(out), "--frames", "100000", "--nrr", "16", "--no-ply", "--backend",
                             "reference"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline, encoders = time.monotonic() + 120, []
        while time.monotonic() < deadline and not encoders:  # wait until frames flow into ffmpeg
            time.sleep(0.2)
            children = f"/proc/{proc.pid}/task/{proc.pid}/children"
            if os.path.exists(children) and out.exists() and os.listdir(out):
                encoders = open(children).read().split()
        assert encoders, "ffmpeg never started"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0 and "Traceback" not in output, output
    assert not out.exists()  # the temp video removed, then the folder this run created
    for pid in encoders:
        assert not os.path.exists(f"/proc/{pid}"), "ffmpeg outlived gen_videos"


def test_sigterm_while_ffmpeg_starts_still_stops_it(tmp_path, monkeypatch):
    """The SIGTERM lands the moment Popen has a child (where it waits for the exec): without the deferral the
    KeyboardInterrupt left Popen before the writer knew the child, and that ffmpeg ran on."""
    import signal
    import subprocess

    from torch_utils.run_control import stop_signals_interrupt

    import training.mp4_writer

    exe = training.mp4_writer.ffmpeg_executable()  # looked up now: imageio-ffmpeg runs `ffmpeg -version` for it
    monkeypatch.setattr(training.mp4_writer, "ffmpeg_executable", lambda: exe)
    started, real_popen = [], subprocess.Popen

    def popen_then_sigterm(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        started.append(process)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode, still inside "Popen"
        return process

    monkeypatch.setattr(subprocess, "Popen", popen_then_sigterm)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"), stop_signals_interrupt():
            with vu.AtomicMp4Writer(str(tmp_path / "v.mp4")) as writer:
                writer.append(np.zeros((16, 16, 3), np.uint8))
    finally:
        for process in started:
            leaked = process.poll() is None
            process.kill()
            process.wait()
    assert len(started) == 1 and not leaked, "ffmpeg outlived the interrupted writer"
    assert os.listdir(tmp_path) == []


def test_stop_signal_during_temp_file_creation_leaves_no_file(tmp_path, sigint_after_mkstemp):
    from torch_utils.run_control import stop_signals_interrupt

    with pytest.raises(KeyboardInterrupt, match="SIGINT"), stop_signals_interrupt():
        with vu.AtomicMp4Writer(str(tmp_path / "v.mp4")):
            pytest.fail("the block ran although the writer was interrupted")
    assert os.listdir(tmp_path) == []


def test_ply_sh_degree_pads_zero_coefficients(G, snapshot, tmp_path):
    from plyfile import PlyData

    result = run("--network", snapshot, "--seeds", 1, "--outdir", tmp_path, "--no-video", "--ply-sh-degree", 3)
    assert result.exit_code == 0 and "SH degree 3" in result.output, result.output
    vertex = PlyData.read(str(tmp_path / "seed0001.ply"))["vertex"]
    assert [p.name for p in vertex.properties] == property_names(3)  # 45 f_rest_* columns, Inria's layout
    assert all((np.asarray(vertex[f"f_rest_{i}"]) == 0).all() for i in range(45))
    padded = read(tmp_path / "seed0001.ply")
    assert run("--network", snapshot, "--seeds", 1, "--outdir", tmp_path, "--no-video").exit_code == 0
    plain = read(tmp_path / "seed0001.ply")
    assert padded.sh_degree == 3 and plain.sh_degree == 0
    assert torch.equal(padded.sh[:, :, :1], plain.sh) and torch.equal(padded.means, plain.means)


def test_backend_option_picks_the_rasterizer(snapshot, tmp_path, monkeypatch):
    import splatting.backends.reference as reference

    calls = []
    original = reference.rasterize
    monkeypatch.setattr(reference, "rasterize", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.delenv("GSGAN_BACKEND", raising=False)
    result = run("--network", snapshot, "--seeds", 0, "--outdir", tmp_path, "--no-video", "--no-ply", "--images",
                 "--nrr", 16, "--backend", "reference")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1  # the five still views in one call, through the chosen backend


def test_pad_sh_keeps_colours_and_refuses_dropping_them():
    from splatting import Gaussians
    from splatting.ply import pad_sh

    g = Gaussians(means=torch.zeros(1, 2, 3), log_scales=torch.zeros(1, 2, 3), quats=torch.ones(1, 2, 4),
                  opacity_logits=torch.zeros(1, 2), sh=torch.rand(1, 2, 4, 3))  # degree 1
    padded = pad_sh(g, 3)
    assert padded.sh.shape == (1, 2, 16, 3) and torch.equal(padded.sh[:, :, :4], g.sh)
    assert (padded.sh[:, :, 4:] == 0).all() and pad_sh(g, 1) is g
    with pytest.raises(ValueError, match="sh_degree: 0 is below the Gaussians' own degree 1"):
        pad_sh(g, 0)
    with pytest.raises(ValueError, match="sh_degree: expected an integer 0-3, got 4"):
        pad_sh(g, 4)
