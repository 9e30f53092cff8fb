"""dataset_tool.py: synth / convert / info / contact-sheet, and one-line errors that leave no output behind."""
import dataclasses
import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import dataset_tool
from tests.conftest import read_only_dir
from tests.dataset_tool_cli import fails, ok, run
from splatting.cameras import eg3d_label, look_at
from training import synthetic_scenes as ss
from training.dataset import ImageFolderDataset


def read_zip(path):
    with zipfile.ZipFile(path) as zf:
        doc = json.loads(zf.read("dataset.json"))
        images = {name: zf.read(name) for name, _ in doc["labels"]}
    return doc, images


@pytest.fixture(scope="module")
def ffhq16(tmp_path_factory):
    dest = tmp_path_factory.mktemp("synth") / "ffhq16.zip"
    ok("synth", "--poses", "ffhq", "--count", 16, "--resolution", 32, "--seed", 3, "--dest", dest)
    return str(dest)


# ----------------------------------------------------------------------------------------------------------
# synth

def test_synth_labels_are_cameras_looking_at_the_object(ffhq16):
    doc, images = read_zip(ffhq16)
    assert len(doc["labels"]) == 16 and doc["labels"][0][0] == "00000/img00000000.png"
    labels = np.array([lab for _, lab in doc["labels"]], dtype=np.float64)
    assert labels.shape == (16, 25) and np.isfinite(labels).all()
    cam = labels[:, :16].reshape(-1, 4, 4)
    rot = cam[:, :3, :3]
    np.testing.assert_allclose(np.einsum("nji,njk->nik", rot, rot), np.broadcast_to(np.eye(3), rot.shape), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-6)
    np.testing.assert_allclose(cam[:, 3], np.broadcast_to([0, 0, 0, 1], (16, 4)), atol=0)
    origin = cam[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(origin, axis=1), 2.7, rtol=1e-6)
    to_object = -origin / np.linalg.norm(origin, axis=1, keepdims=True)
    assert (np.einsum("ni,ni->n", rot[:, :, 2], to_object) > 1 - 1e-6).all()
    assert (rot[:, 1, 1] < 0).all()  # image-down is world-down: heads are upright
    np.testing.assert_allclose(labels[:, 16:], np.broadcast_to([4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], (16, 9)))
    # FFHQ-like: frontal hemisphere, camera at +z.
    assert (origin[:, 2] > 1.5).all()


def test_synth_images_are_rgb_and_show_the_object(ffhq16):
    ds = ImageFolderDataset(ffhq16, resolution=32)
    shares = []
    for i in range(len(ds)):
        image, _ = ds[i]
        shares.append((image.max(axis=0) > 8).mean())
    assert 0.25 < min(shares) and max(shares) < 0.95  # the head fills much of the frame, the corners are black
    image = ds[0][0]
    assert image[:, 0, 0].max() == 0  # black background in the corner
    doc, _ = read_zip(ffhq16)
    meta = doc["synthetic"]
    assert meta["num_scenes"] == 4 and meta["scene_ids"] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4


def test_synth_is_deterministic_and_seeded(ffhq16, tmp_path):
    again = tmp_path / "again.zip"
    ok("synth", "--poses", "ffhq", "--count", 16, "--resolution", 32, "--seed", 3, "--dest", again)
    other = tmp_path / "other.zip"
    ok("synth", "--poses", "ffhq", "--count", 16, "--resolution", 32, "--seed", 4, "--dest", other)
    doc_a, images_a = read_zip(ffhq16)
    doc_b, images_b = read_zip(again)
    assert doc_a == doc_b and images_a == images_b
    assert open(ffhq16, "rb").read() == again.read_bytes()  # the whole zip, timestamps included
    doc_c, images_c = read_zip(other)
    assert doc_c["labels"] != doc_a["labels"]
    assert all(images_c[name] != images_a[name] for name in images_a)


def test_synth_same_result_with_worker_processes(tmp_path):
    one, two = tmp_path / "one.zip", tmp_path / "two.zip"
    common = ["synth", "--poses", "orbit", "--count", 6, "--resolution", 8, "--supersample", 1, "--seed", 1]
    ok(*common, "--workers", 1, "--dest", one)
    ok(*common, "--workers", 2, "--dest", two)
    assert read_zip(one) == read_zip(two)


def test_synth_orbit_covers_full_circle(tmp_path):
    dest = tmp_path / "orbit.zip"
    ok("synth", "--poses", "orbit", "--count", 48, "--resolution", 8, "--supersample", 1, "--num-scenes", 2,
       "--dest", dest)
    doc, _ = read_zip(dest)
    labels = np.array([lab for _, lab in doc["labels"]])
    origin = labels[:, [3, 7, 11]]
    np.testing.assert_allclose(np.linalg.norm(origin, axis=1), 1.7, rtol=1e-6)
    np.testing.assert_allclose(labels[:, 16], 1.7074)
    yaw = np.sort(np.arctan2(origin[:, 0], origin[:, 2]))
    gaps = np.diff(np.concatenate([yaw, yaw[:1] + 2 * np.pi]))
    assert gaps.max() < np.pi / 2  # cameras all around, no quarter of the circle left empty
    elevation = np.degrees(np.arcsin(origin[:, 1] / 1.7))
    assert np.abs(elevation).max() < 45 and elevation.min() < 0 < elevation.max()
    ds = ImageFolderDataset(str(dest))
    assert all((ds[i][0].max(axis=0) > 8).mean() > 0.15 for i in range(len(ds)))


def _pixel_digest(path):
    """sha256 of every image's decoded pixels, in order, and of dataset.json (PNG bytes also depend on zlib)."""
    import hashlib

    with zipfile.ZipFile(path) as zf:
        doc = zf.read("dataset.json")
        pixels = hashlib.sha256()
        for name, _ in json.loads(doc)["labels"]:
            pixels.update(np.asarray(Image.open(io.BytesIO(zf.read(name)))).tobytes())
    return pixels.hexdigest(), hashlib.sha256(doc).hexdigest()


def test_default_synth_is_unchanged(tmp_path):
    """heads on black are the bytes earlier versions wrote (digests recorded before families and backdrops
    existed), so existing datasets keep their fingerprints and metric caches."""
    dest = tmp_path / "heads.zip"
    ok("synth", "--poses", "ffhq", "--count", 8, "--resolution", 16, "--seed", 5, "--num-scenes", 2, "--dest", dest)
    assert _pixel_digest(dest) == ("4c12c6065cd7cd13a5986ae8db6e41882412c7c7370b77ca296ad39f78090d0e",
                                   "a6de699b4a217c46ddc08de7b036830a6f2c51d00af9037c9b7859912a3c595a")
    again = tmp_path / "explicit.zip"
    ok("synth", "--poses", "ffhq", "--count", 8, "--resolution", 16, "--seed", 5, "--num-scenes", 2,
       "--family", "heads", "--background", "black", "--dest", again)
    assert again.read_bytes() == dest.read_bytes()


@pytest.mark.parametrize("family, background, backdrop", [
    ("heads", "grey", "uniform grey"), ("rings", "white", "uniform white"), ("chairs", "black", "uniform black"),
    ("rings", "gradient", "vertical gradient (lighter at the top)"),
    ("chairs", "noise", "varied (textured, or changing from image to image)")])
def test_synth_families_and_backgrounds_recorded_and_reported(family, background, backdrop, tmp_path):
    dest = tmp_path / "data.zip"
    ok("synth", "--count", 24, "--resolution", 16, "--family", family, "--background", background, "--seed", 1,
       "--dest", dest)
    doc, _ = read_zip(dest)
    meta = doc["synthetic"]
    assert meta.get("family", "heads") == family and meta.get("background", "black") == background
    assert ("family" in meta) == (family != "heads") and ("background" in meta) == (background != "black")
    result = ok("info", "--source", dest)
    assert f"synthetic:    {family} on {background}" in result.output
    assert f"backdrop:     {backdrop}" in result.output, result.output
    assert "border:       RGB" in result.output
    ds = ImageFolderDataset(str(dest))
    corner = np.stack([ds[i][0][:, 0, 0] for i in range(len(ds))])
    expected = {"black": 0, "grey": 128, "white": 255}
    if background in expected:
        assert (corner == expected[background]).all()


def test_border_statistics_read_the_backdrop_not_the_object():
    rng = np.random.default_rng(0)
    images = np.full((6, 3, 16, 16), 128, dtype=np.uint8)
    images[:, :, 4:16, 5:11] = rng.integers(0, 256, (6, 3, 12, 6))  # an object touching the bottom edge
    stats = dataset_tool.border_statistics(images)
    np.testing.assert_allclose(stats["color"], 128)
    assert stats["within"] == 0 and stats["between"] == 0
    assert dataset_tool.describe_backdrop(stats) == "uniform grey"
    ramp = np.broadcast_to(np.linspace(220, 30, 16)[None, None, :, None], (4, 3, 16, 16)).astype(np.uint8)
    described = dataset_tool.describe_backdrop(dataset_tool.border_statistics(ramp))
    assert described == "vertical gradient (lighter at the top)"
    noisy = rng.integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    assert dataset_tool.describe_backdrop(dataset_tool.border_statistics(noisy)).startswith("varied")


@pytest.mark.parametrize("option, value", [("--family", "cars"), ("--background", "sky")])
def test_synth_unknown_family_or_background(option, value, tmp_path):
    dest = tmp_path / "out" / "x.zip"
    dest.parent.mkdir()
    result = run("synth", "--count", 4, option, value, "--dest", dest)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output and value in result.output
    assert "Traceback" not in result.output and not os.listdir(dest.parent)


def test_info_and_contact_sheet(ffhq16, tmp_path):
    result = ok("info", "--source", ffhq16)
    assert "images:       16" in result.output and "32x32" in result.output
    assert "synthetic:    heads on black (ffhq poses, 4 scenes, seed 3)" in result.output
    assert "backdrop:     uniform black" in result.output
    assert "camera distance" in result.output
    ok("check", "--source", ffhq16)
    sheet = tmp_path / "sheet.png"
    ok("contact-sheet", "--source", ffhq16, "--dest", sheet, "--count", 16)
    image = Image.open(sheet)
    assert image.size == (4 * 128, 4 * 128) and image.mode == "RGB"
    fails(os.path.dirname(sheet), "already exists", "contact-sheet", "--source", ffhq16, "--dest", sheet)


# ----------------------------------------------------------------------------------------------------------
# convert

def _camera(yaw):
    origin = torch.tensor([2.0 * np.sin(yaw), 0.2, 2.0 * np.cos(yaw)], dtype=torch.float64)
    return look_at(origin, torch.zeros(3, dtype=torch.float64)).numpy()


def _save(folder, name, array):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_convert_crops_resizes_and_carries_labels(tmp_path):
    src = tmp_path / "src"
    wide = np.zeros((16, 48, 3), np.uint8)
    wide[:, :16, 0], wide[:, 16:32, 1], wide[:, 32:, 2] = 255, 255, 255  # red | green | blue
    tall = np.zeros((40, 20, 3), np.uint8)
    tall[:10, :, 0], tall[10:30, :, 1], tall[30:, :, 2] = 255, 255, 255
    _save(src, "a/wide.png", wide)
    _save(src, "b/tall.jpg", tall)
    _save(src, "square.png", np.full((64, 64, 3), 77, np.uint8))
    cams = {
        "a/wide.png": {"cam2world": _camera(0.1).tolist(), "intrinsics": [[0.5, 0, 0.5], [0, 1.5, 0.5], [0, 0, 1]]},
        "b/tall.jpg": {"cam2world": _camera(0.2).reshape(-1).tolist(),
                       "intrinsics": [1.0, 0, 0.5, 0, 0.5, 0.5, 0, 0, 1]},
        "square.png": {"cam2world": _camera(0.3).tolist(), "intrinsics": [[2.0, 0, 0.4], [0, 2.0, 0.6], [0, 0, 1]]},
    }
    cam_file = tmp_path / "cams.json"
    cam_file.write_text(json.dumps(cams))
    dest = tmp_path / "out" / "conv.zip"
    ok("convert", "--source", src, "--cameras", cam_file, "--dest", dest, "--resolution", 16)
    ds = ImageFolderDataset(str(dest), resolution=16)
    assert len(ds) == 3
    img, lab = ds[0]  # wide: only the green middle third survives the centre crop
    assert img[1].min() > 240 and img[0].max() < 15 and img[2].max() < 15
    np.testing.assert_allclose(lab[:16], _camera(0.1).reshape(-1), atol=1e-6)
    # fx_px = 0.5 * 48 = 24 -> 24 / 16; cx stays centred; fy_px = 1.5 * 16 -> 1.5.
    np.testing.assert_allclose(lab[16:], [1.5, 0, 0.5, 0, 1.5, 0.5, 0, 0, 1], atol=1e-6)
    img, lab = ds[1]  # tall (jpeg): the green middle half, resized 20 -> 16
    assert img[1, 2:-2].min() > 200 and img[0, 2:-2].max() < 60 and img[2, 2:-2].max() < 60
    np.testing.assert_allclose(lab[16:], [1.0, 0, 0.5, 0, 1.0, 0.5, 0, 0, 1], atol=1e-6)  # fy_px = 20 -> 20/20
    img, lab = ds[2]
    assert np.abs(img.astype(int) - 77).max() <= 1
    np.testing.assert_allclose(lab[16:], [2.0, 0, 0.4, 0, 2.0, 0.6, 0, 0, 1], atol=1e-6)
    with zipfile.ZipFile(dest) as zf:
        assert sorted(zf.namelist()) == ["00000/img00000000.png", "00000/img00000001.png", "00000/img00000002.png",
                                         "dataset.json"]


def test_convert_from_eg3d_zip_and_overwrite(ffhq16, tmp_path):
    dest = tmp_path / "small.zip"
    ok("convert", "--source", ffhq16, "--dest", dest, "--resolution", 8)
    small, big = ImageFolderDataset(str(dest)), ImageFolderDataset(ffhq16)
    assert small.resolution == 8 and len(small) == 16
    np.testing.assert_allclose(small.raw_labels, big.raw_labels, atol=1e-6)
    mean_small = small[3][0].reshape(3, -1).mean(1)
    mean_big = big[3][0].reshape(3, -1).mean(1)
    np.testing.assert_allclose(mean_small, mean_big, atol=6)  # same picture, smaller
    stamp = os.path.getmtime(dest)
    fails(os.path.dirname(dest), "already exists (pass --overwrite", "convert", "--source", ffhq16, "--dest", dest,
          "--resolution", 8)
    assert os.path.getmtime(dest) == stamp
    ok("convert", "--source", ffhq16, "--dest", dest, "--resolution", 16, "--overwrite")
    assert ImageFolderDataset(str(dest)).resolution == 16


# ----------------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written.

def _valid_label(yaw=0.0):
    return [float(v) for v in eg3d_label(torch.from_numpy(_camera(yaw)), 4.2647).numpy()]


def _source(tmp_path, labels_doc, images=("x.png",), mode="RGB"):
    src = tmp_path / "src"
    for name in images:
        path = src / name
        os.makedirs(path.parent, exist_ok=True)
        Image.new(mode, (16, 16)).save(path)
    os.makedirs(src, exist_ok=True)
    if labels_doc is not None:
        (src / "dataset.json").write_text(labels_doc if isinstance(labels_doc, str) else json.dumps(labels_doc))
    return src


BAD_SOURCES = {
    "missing dataset.json": (None, "dataset.json: missing"),
    "malformed json": ("{not json", "not valid JSON"),
    "wrong structure": ({"labels": [["x.png"]]}, "expected [relative_path, [25 floats]]"),
    "24 numbers": ({"labels": [["x.png", [0.0] * 24]]}, "expected a label of 25 numbers"),
    "non-finite": ({"labels": [["x.png", [float("nan")] * 25]]}, "non-finite"),
    "missing image": ({"labels": [["x.png", _valid_label()], ["gone.png", _valid_label(1.0)]]},
                      "gone.png: listed in the cameras but missing"),
    "empty": ({"labels": []}, "lists no images"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_convert_bad_source(tmp_path, case):
    doc, message = BAD_SOURCES[case]
    src = _source(tmp_path, doc)
    out = tmp_path / "out"
    out.mkdir()
    fails(out, message, "convert", "--source", src, "--dest", out / "d.zip",
          "--resolution", 16)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_convert_image_not_rgb(tmp_path, mode):
    src = _source(tmp_path, {"labels": [["x.png", _valid_label()], ["y.png", _valid_label(1.0)]]},
                  images=("x.png",), mode="RGB")
    Image.new(mode, (16, 16)).save(src / "y.png")
    out = tmp_path / "out"
    out.mkdir()
    # y.png fails after x.png was already written to the temporary zip: that must be cleaned up.
    fails(out, f"y.png: expected an RGB image, got mode {mode}", "convert", "--source", src,
          "--dest", out / "d.zip", "--resolution", 16)


def test_convert_bad_camera_file(tmp_path):
    src = _source(tmp_path, None)
    out = tmp_path / "out"
    out.mkdir()
    cams = tmp_path / "cams.json"
    cases = [
        ({"x.png": {"cam2world": [[1, 0, 0]]}}, "expected an object with 'cam2world' and 'intrinsics'"),
        ({"x.png": {"cam2world": [0.0] * 15, "intrinsics": [0.0] * 9}}, "cam2world: expected a 4x4 matrix"),
        ({"x.png": {"cam2world": np.eye(4).tolist(), "intrinsics": [[500.0, 0, 256], [0, 500, 256], [0, 0, 1]]}},
         "intrinsics look like pixel units"),
        ({"x.png": {"cam2world": (2 * np.eye(4)).tolist(), "intrinsics": np.eye(3).tolist()}}, "last row 0 0 0 1"),
    ]
    for doc, message in cases:
        cams.write_text(json.dumps(doc))
        fails(out, message, "convert", "--source", src, "--cameras", cams,
              "--dest", out / "d.zip", "--resolution", 16)


def test_bad_zip_and_options(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    fails(out, "not a readable zip file", "convert", "--source", corrupt,
          "--dest", out / "d.zip", "--resolution", 16)
    fails(out, "not a readable zip file", "info", "--source", corrupt)
    fails(out, "no such folder", "info", "--source", tmp_path / "nothing")
    result = run("synth", "--count", 4, "--resolution", 24, "--dest", out / "d.zip")
    assert result.exit_code != 0 and "power of two" in result.output and not os.listdir(out)
    fails(out, "--dest: expected a .zip path", "synth", "--count", 4, "--dest", out / "d.tar")
    (out / "exists.zip").write_bytes(b"keep me")
    fails(out, "already exists", "synth", "--count", 4, "--dest", out / "exists.zip")
    assert (out / "exists.zip").read_bytes() == b"keep me"


@pytest.mark.parametrize("args, message", [
    (["--resolution", 1048576], "--resolution"),
    (["--count", 10 ** 7], "--count"),
    (["--seed", 2 ** 64], "--seed"),
])
def test_synth_refuses_unbounded_work_up_front(tmp_path, args, message):
    out = tmp_path / "out"
    out.mkdir()
    result = run("synth", *args, "--dest", out / "d.zip")
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not os.listdir(out)


def test_dest_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "file").write_text("x")
    synth = ["synth", "--count", 4, "--resolution", 8, "--dest"]
    fails(out, "--dest: " + str(out / "file") + " is a file, not a folder", *synth,
          out / "file" / "d.zip")
    fails(out, "does not exist, so the '..' after it", *synth,
          out / "missing" / ".." / "d.zip")
    fails(out, "does not exist, so the '..' after it", "contact-sheet", "--source", out,
          "--dest", out / "missing" / ".." / "s.png")
    read_only = read_only_dir(tmp_path)
    result = run(*synth, os.path.join(read_only, "sub", "d.zip"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: --dest: cannot write into {read_only}")
    assert not os.path.exists(os.path.join(read_only, "sub"))
    # '..' after an existing folder resolves as the OS does it, and missing parents are created.
    (out / "here").mkdir()
    ok(*synth, out / "here" / ".." / "new" / "d.zip")
    assert os.listdir(out / "new") == ["d.zip"] and os.listdir(out / "here") == []


def test_disk_full_while_writing_keeps_the_old_zip_and_no_temp_file(tmp_path, monkeypatch):
    import errno

    out = tmp_path / "out"
    out.mkdir()
    dest = out / "d.zip"
    dest.write_bytes(b"the previous dataset")
    calls = []
    original = dataset_tool._zip_write

    def full_after_two(zf, name, data):
        calls.append(name)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(zf, name, data)
    monkeypatch.setattr(dataset_tool, "_zip_write", full_after_two)
    fails(os.path.dirname(dest), f"{dest}: cannot write (No space left on device); nothing was left behind",
          "synth", "--count", 4, "--resolution", 8, "--dest", dest, "--overwrite")
    assert dest.read_bytes() == b"the previous dataset"
    # The same when the folder was created for this run: it goes too.
    fails(os.path.dirname(dest), "No space left on device", "synth", "--count", 4, "--resolution", 8,
          "--dest", out / "new" / "d.zip")
    assert not (out / "new").exists()


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupted_synth_with_workers_leaves_nothing_and_no_traceback(tmp_path, signame):
    """Ctrl+C reaches the whole process group (workers included); SIGTERM only the main process."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, os.path.join(repo, "dataset_tool.py"), "synth", "--count", "100000",
                             "--resolution", "32", "--workers", "2", "--dest", str(out / "big.zip")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.exists() and os.listdir(out)):
            time.sleep(0.1)
        assert out.exists() and os.listdir(out), "synth never started writing"
        time.sleep(0.5)  # the workers may still be importing: they must stay quiet then too
        sig = getattr(signal, signame)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert not out.exists()  # the temporary zip, then the folder made for it, removed


def test_info_reports_bad_image(tmp_path):
    src = _source(tmp_path, {"labels": [["x.png", _valid_label()], ["y.png", _valid_label(1.0)]]})
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, format="PNG")
    (src / "y.png").write_bytes(buf.getvalue())
    fails(src, "y.png: expected an RGB image, got mode L", "info", "--source", src)


# ----------------------------------------------------------------------------------------------------------
# The analytic ray caster behind `synth`

def _single(center, radii, rotation=None):
    rot = np.eye(3) if rotation is None else rotation
    one = ss.random_head_scene(np.random.default_rng(0), 0.3)
    return dataclasses.replace(one, centers=np.array([center], float), radii=np.array([radii], float),
                               rotations=rot[None], color_a=one.color_a[:1], color_b=one.color_b[:1],
                               texture=one.texture[:1] * 0, tex_freq=one.tex_freq[:1], tex_axis=one.tex_axis[:1],
                               tex_phase=one.tex_phase[:1], spots=one.spots[:1], waves=one.waves[:1],
                               kind=one.kind[:1], tube=one.tube[:1])


FRONTAL = np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 3.0], [0, 0, 0, 1]])  # at (0, 0, 3), looking at -z
K1 = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]])


def test_ray_caster_sphere_silhouette_and_depth():
    scene = _single([0, 0, 0], [0.5] * 3)
    # Silhouette: a disc of normalized radius f * tan(asin(r / d)).
    rho = np.tan(np.arcsin(0.5 / 3.0))
    np.testing.assert_allclose(ss.coverage(scene, FRONTAL, K1, 256), np.pi * rho ** 2, rtol=0.01)
    t, part, local = ss.intersect(scene, FRONTAL, K1, 64, 64)
    origin, dirs = ss.camera_rays(FRONTAL, K1, 64, 64)
    hit = np.isfinite(t)
    points = origin + t[..., None] * dirs
    np.testing.assert_allclose(np.linalg.norm(points[hit], axis=1), 0.5, rtol=1e-9)
    assert (points[hit][:, 2] > 0).all()  # the near side of the sphere
    np.testing.assert_allclose(np.linalg.norm(local[hit], axis=1), 1.0, rtol=1e-9)
    assert (part[hit] == 0).all()


def test_ray_caster_pixel_convention():
    """World +x appears on the right and world +y at the top, where the pinhole model puts them."""
    scene = _single([0.6, 0.3, 0], [0.1] * 3)
    t, _, _ = ss.intersect(scene, FRONTAL, K1, 128, 128)
    rows, cols = np.nonzero(np.isfinite(t))
    # u = fx * x_cam / z_cam + cx with x_cam = 0.6, y_cam = -0.3, z_cam = 3 (pixel centres at i + 0.5).
    np.testing.assert_allclose(cols.mean() + 0.5, 128 * (0.6 / 3 + 0.5), atol=0.6)
    np.testing.assert_allclose(rows.mean() + 0.5, 128 * (-0.3 / 3 + 0.5), atol=0.6)


def test_ray_caster_nearest_hit_against_ray_marching():
    rng = np.random.default_rng(1)
    scene = ss.random_head_scene(rng, 0.3)
    label = ss.synth_labels("ffhq", 1, seed=9)[0]
    cam, k = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    t, part, _ = ss.intersect(scene, cam, k, 32, 32)
    origin, dirs = ss.camera_rays(cam, k, 32, 32)
    pick = rng.choice(32 * 32, size=150, replace=False)
    t, part, dirs = t.reshape(-1)[pick], part.reshape(-1)[pick], dirs.reshape(-1, 3)[pick]

    def inside(points):  # [..., 3] -> [...] inside any ellipsoid
        local = np.einsum("pji,...pj->...pi", scene.rotations, points[..., None, :] - scene.centers) / scene.radii
        return (np.einsum("...pi,...pi->...p", local, local) < 1).any(-1)

    steps = np.linspace(2.0, 3.4, 1400)  # the object lies within distance ~0.5 of the origin, cameras at 2.7
    marched = origin + steps[None, :, None] * dirs[:, None, :]
    inside_any = inside(marched)
    first = np.where(inside_any.any(1), steps[inside_any.argmax(1)], np.inf)
    hit = np.isfinite(t)
    assert hit.sum() > 40 and (~hit).sum() > 10
    np.testing.assert_array_equal(np.isfinite(first), hit)
    step = steps[1] - steps[0]
    assert np.all(np.abs(first[hit] - t[hit]) <= step + 1e-9)


def test_stop_signal_while_the_temp_file_is_made_leaves_nothing(tmp_path, sigint_after_mkstemp):
    """A SIGINT right after mkstemp: deferred until the temp file is named, so it is removed with the folder."""
    from torch_utils.run_control import stop_signals_interrupt

    with pytest.raises(KeyboardInterrupt), stop_signals_interrupt():
        with dataset_tool.atomic_output(str(tmp_path / "new" / "data.zip")):
            pytest.fail("the block ran although the output was interrupted")
    assert os.listdir(tmp_path) == []
