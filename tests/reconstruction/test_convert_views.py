"""`dataset_tool.py convert-views` and reconstruction.convert_views: transforms.json (OpenGL) and COLMAP text
models -> one chunk example whose cameras project known 3D points where the source convention does; every bad
input gives one line and writes nothing; the Middlebury Motorcycle fixture round-trips exactly."""
import functools
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from reconstruction import convert_views as cv
from reconstruction.chunks import ChunkStore, parse_cameras, write_chunks
from splatting.cameras import look_at
from tests import dataset_tool_cli as cli
from tests.dataset_tool_cli import ok

fails = functools.partial(cli.fails, only_line=True)

POINTS = np.array([[0.1, 0.2, 0.0], [-0.3, 0.1, 0.4], [0.25, -0.2, -0.3]])


def _png(width, height, seed=0, fmt="PNG"):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _cameras_cv(n=3):
    """OpenCV camera-to-world matrices looking at the origin from a small arc."""
    angles = np.linspace(-0.4, 0.4, n)
    origins = np.stack([2.5 * np.sin(angles), 0.3 + 0.1 * angles, 2.5 * np.cos(angles)], axis=1)
    return look_at(torch.from_numpy(origins), torch.zeros(n, 3, dtype=torch.float64)).numpy()


def _stored(root, split="test"):
    store = ChunkStore(str(root), split)
    (key,) = store.keys()
    example = store.get(key)
    extrinsics, intrinsics = parse_cameras(example["cameras"])
    return key, example, extrinsics.double().numpy(), intrinsics.double().numpy()


def _project_opencv(points, cam2world, k_norm):
    """Normalized image coordinates of world points through a stored (OpenCV) camera."""
    cam = (points - cam2world[:3, 3]) @ cam2world[:3, :3]
    return np.stack([k_norm[0, 0] * cam[:, 0] / cam[:, 2] + k_norm[0, 2],
                     k_norm[1, 1] * cam[:, 1] / cam[:, 2] + k_norm[1, 2]], axis=1)


# ----------------------------------------------------------------------------------------------------------
# transforms.json


def _blender_folder(tmp_path, width=24, height=16, angle_x=0.9):
    """A Blender-style scene: camera_angle_x, file_path without extension, OpenGL matrices."""
    src = tmp_path / "lego"
    (src / "train").mkdir(parents=True)
    frames = []
    for i, c2w in enumerate(_cameras_cv()):
        (src / "train" / f"r_{i}.png").write_bytes(_png(width, height, seed=i))
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": (c2w @ cv.OPENGL_TO_OPENCV).tolist()})
    (src / "transforms.json").write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}, indent=2))
    return src


def _project_opengl(points, c2w_gl, angle_x, width, height):
    """Blender/NeRF convention: camera looks down -z, y up; focal from camera_angle_x, square pixels."""
    cam = (points - c2w_gl[:3, 3]) @ c2w_gl[:3, :3]
    focal = 0.5 * width / np.tan(angle_x / 2)
    u = width / 2 + focal * cam[:, 0] / -cam[:, 2]
    v = height / 2 - focal * cam[:, 1] / -cam[:, 2]
    return np.stack([u / width, v / height], axis=1)


def test_transforms_json_projects_like_opengl(tmp_path):
    src = _blender_folder(tmp_path)
    root = tmp_path / "out"
    ok("convert-views", "--source", src, "--dest", root)
    key, example, extrinsics, intrinsics = _stored(root)
    assert key == "lego" and example["timestamps"].tolist() == [0, 1, 2]
    doc = json.loads((src / "transforms.json").read_text())
    for i, frame in enumerate(doc["frames"]):
        expected = _project_opengl(POINTS, np.array(frame["transform_matrix"]), 0.9, 24, 16)
        np.testing.assert_allclose(_project_opencv(POINTS, extrinsics[i], intrinsics[i]), expected, atol=1e-5)
        assert bytes(example["images"][i].numpy()) == (src / "train" / f"r_{i}.png").read_bytes()  # unchanged


def test_opengl_to_opencv_flips_camera_y_and_z():
    gl = np.eye(4)
    gl[:3, 3] = [1.0, 2.0, 3.0]
    opencv = gl @ cv.OPENGL_TO_OPENCV
    np.testing.assert_array_equal(opencv[:3, 0], [1, 0, 0])  # right stays
    np.testing.assert_array_equal(opencv[:3, 1], [0, -1, 0])  # OpenCV image-down = OpenGL -up
    np.testing.assert_array_equal(opencv[:3, 2], [0, 0, -1])  # OpenCV forward = OpenGL -z (the viewing direction)
    np.testing.assert_array_equal(opencv[:3, 3], gl[:3, 3])  # same centre


def test_transforms_json_instant_ngp_intrinsics(tmp_path):
    """fl_x/fl_y/cx/cy/w/h globally, one frame overriding fl_x, images stored at half the stated size,
    file_path with extension, a JPEG kept byte for byte and a BMP re-encoded as PNG."""
    src = tmp_path / "ngp"
    (src / "images").mkdir(parents=True)
    c2w = _cameras_cv()
    names = ["a.jpg", "b.png", "c.bmp"]
    fmts = ["JPEG", "PNG", "BMP"]
    for i, (name, fmt) in enumerate(zip(names, fmts)):
        (src / "images" / name).write_bytes(_png(20, 10, seed=i, fmt=fmt))
    frames = [{"file_path": f"images/{name}", "transform_matrix": (m @ cv.OPENGL_TO_OPENCV).tolist()}
              for name, m in zip(names, c2w)]
    frames[1]["fl_x"] = 30.0
    doc = {"fl_x": 36.0, "fl_y": 34.0, "cx": 19.0, "cy": 11.0, "w": 40, "h": 20, "k1": 0.0, "frames": frames}
    (src / "transforms.json").write_text(json.dumps(doc))
    root = tmp_path / "out"
    ok("convert-views", "--source", src, "--dest", root, "--split", "train", "--key", "mine")
    key, example, _, intrinsics = _stored(root, "train")
    assert key == "mine"
    np.testing.assert_allclose(intrinsics[0], [[36 / 40, 0, 19 / 40], [0, 34 / 20, 11 / 20], [0, 0, 1]], atol=1e-7)
    np.testing.assert_allclose(intrinsics[1, 0, 0], 30 / 40, atol=1e-7)
    images = [bytes(image.numpy()) for image in example["images"]]
    assert images[0] == (src / "images" / "a.jpg").read_bytes() and images[0][:2] == b"\xff\xd8"
    assert images[2][:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(images[2]))),
                          np.asarray(Image.open(src / "images" / "c.bmp").convert("RGB")))


# ----------------------------------------------------------------------------------------------------------
# COLMAP text model


def _quaternion(rot):
    """(w, x, y, z) of a rotation matrix (test-side reference, Shepperd's method on the largest diagonal)."""
    m = rot
    trace = np.trace(m)
    if trace > 0:
        s = 2 * np.sqrt(1 + trace)
        return np.array([s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s])
    i = int(np.argmax(np.diag(m)))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = 2 * np.sqrt(1 + m[i, i] - m[j, j] - m[k, k])
    q = np.zeros(4)
    q[0] = (m[k, j] - m[j, k]) / s
    q[1 + i] = s / 4
    q[1 + j] = (m[j, i] + m[i, j]) / s
    q[1 + k] = (m[k, i] + m[i, k]) / s
    return q


CAMERAS_TXT = """# Camera list with one line of data per camera:
#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]
1 PINHOLE 32 24 30.0 28.0 15.5 12.5
2 SIMPLE_PINHOLE 32 24 26.0 16.0 12.0
3 OPENCV 32 24 30.0 30.0 16.0 12.0 0 0 0 0
"""


def _colmap_folder(tmp_path, cameras_txt=CAMERAS_TXT, images_txt=None, in_sparse=True):
    src = tmp_path / "colmap"
    model = src / "sparse" / "0" if in_sparse else src
    model.mkdir(parents=True, exist_ok=True)
    (src / "images").mkdir(exist_ok=True)
    rows = ["# Image list with two lines of data per image:",
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME"]
    w2c = [np.linalg.inv(m) for m in _cameras_cv()]
    for image_id, (name, camera_id, m) in enumerate(zip(["c.png", "a.png", "b.png"], [1, 2, 3], w2c), 1):
        q = _quaternion(m[:3, :3])
        rows.append(f"{image_id} {' '.join(f'{v:.17g}' for v in q)} {' '.join(f'{v:.17g}' for v in m[:3, 3])} "
                    f"{camera_id} {name}")
        rows.append("" if image_id == 2 else "10.5 3.25 -1 4.0 5.0 7")
        (src / "images" / name).write_bytes(_png(32, 24, seed=image_id))
    (model / "cameras.txt").write_text(cameras_txt)
    (model / "images.txt").write_text(images_txt if images_txt is not None else "\n".join(rows) + "\n")
    return src, w2c


def _project_colmap(points, w2c, fx, fy, cx, cy, width, height):
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    return np.stack([(fx * cam[:, 0] / cam[:, 2] + cx) / width, (fy * cam[:, 1] / cam[:, 2] + cy) / height], axis=1)


def test_colmap_text_projects_like_colmap(tmp_path):
    src, w2c = _colmap_folder(tmp_path)
    root = tmp_path / "out"
    ok("convert-views", "--source", src, "--dest", root, "--context", "0,2", "--target", "1")
    key, example, extrinsics, intrinsics = _stored(root)
    # Sorted by name: a.png (camera 2, pose 1), b.png (camera 3, pose 2), c.png (camera 1, pose 0).
    params = {1: (30.0, 28.0, 15.5, 12.5), 2: (26.0, 26.0, 16.0, 12.0), 3: (30.0, 30.0, 16.0, 12.0)}
    for frame, (pose, camera) in enumerate([(1, 2), (2, 3), (0, 1)]):
        expected = _project_colmap(POINTS, w2c[pose], *params[camera], 32, 24)
        np.testing.assert_allclose(_project_opencv(POINTS, extrinsics[frame], intrinsics[frame]), expected,
                                   atol=1e-5)
    names = ["a.png", "b.png", "c.png"]
    assert [bytes(im.numpy()) for im in example["images"]] == [(src / "images" / n).read_bytes() for n in names]
    index = json.loads((root / "evaluation_index.json").read_text())
    assert index == {"colmap": {"context": [0, 2], "target": [1]}}


def test_colmap_model_in_the_folder_itself(tmp_path):
    src, _ = _colmap_folder(tmp_path, in_sparse=False)
    ok("convert-views", "--source", src, "--dest", tmp_path / "out", "--key", "k1")
    assert _stored(tmp_path / "out")[0] == "k1"


def test_quaternion_to_rotation_round_trip():
    for m in _cameras_cv(5):
        np.testing.assert_allclose(cv.quaternion_to_rotation(*_quaternion(m[:3, :3])), m[:3, :3], atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Bad inputs: one line each, nothing written


def _edit_transforms(src, edit):
    doc = json.loads((src / "transforms.json").read_text())
    edit(doc)
    (src / "transforms.json").write_text(json.dumps(doc))


def _set_matrix(value):
    def edit(doc):
        doc["frames"][1]["transform_matrix"] = value
    return edit


@pytest.mark.parametrize("edit, match", [
    (lambda doc: doc.pop("camera_angle_x"), "no intrinsics"),
    (lambda doc: doc["frames"][0].pop("transform_matrix"), "frames[0]: missing transform_matrix"),
    (_set_matrix([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), "frames[1].transform_matrix: expected 4x4"),
    (_set_matrix([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("nan")], [0, 0, 0, 1]]), "non-finite"),
    (_set_matrix([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]), "not a rotation"),
    (_set_matrix([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]]), "not a rotation"),
    (_set_matrix([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]), "bottom row"),
    (lambda doc: doc["frames"][2].update(file_path="./train/missing"),
     "frames[2].file_path: image './train/missing' not found"),
    (lambda doc: doc.update(frames=[]), 'non-empty "frames"'),
    (lambda doc: doc.update(camera_angle_x="wide"), "camera_angle_x: expected a finite number"),
    (lambda doc: doc.update(camera_angle_x=4.0), "camera_angle_x: expected radians"),
    (lambda doc: doc.update(k1=0.1), "k1: lens distortion is not supported"),
    (lambda doc: doc.update(fl_x=20.0, w=48, h=48), "different aspect ratio"),
])
def test_transforms_json_errors(tmp_path, edit, match):
    src = _blender_folder(tmp_path)
    _edit_transforms(src, edit)
    fails(tmp_path, match, "convert-views", "--source", src, "--dest", tmp_path / "out")


def test_transforms_json_malformed_and_undecodable(tmp_path):
    src = _blender_folder(tmp_path)
    (src / "transforms.json").write_text('{"camera_angle_x": 0.9,\n "frames": [\n  {"file_path": x}]}')
    line = fails(tmp_path, "transforms.json: not valid JSON (line 3", "convert-views", "--source", src,
                 "--dest", tmp_path / "out")
    assert str(src) in line
    src = _blender_folder(tmp_path / "second")
    (src / "train" / "r_1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    fails(tmp_path, "r_1.png: not a readable image", "convert-views", "--source", src, "--dest", tmp_path / "out")
    (src / "train" / "r_1.png").write_bytes(_png(24, 16)[:60])  # truncated
    fails(tmp_path, "r_1.png: not a readable image", "convert-views", "--source", src, "--dest", tmp_path / "out")


def _replace_line(text, old, new):
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize("cameras, match", [
    ("1 SIMPLE_RADIAL 32 24 30 16 12 0.01\n", "camera 1: model SIMPLE_RADIAL is not supported"),
    ("1 PINHOLE 32 24 30 28 15.5 12.5\n2 SIMPLE_PINHOLE 32 24 26 16 12\n3 OPENCV 32 24 30 30 16 12 0.1 0 0 0\n",
     "cameras.txt:3: camera 3: model OPENCV with non-zero distortion"),
    ("1 PINHOLE 32 24 30 28 15.5\n", "cameras.txt:1: camera 1: model PINHOLE takes 4 parameters, got 3"),
    ("# comment\n1 PINHOLE 32 24 thirty 28 15.5 12.5\n", "cameras.txt:2: expected numbers"),
    ("1 PINHOLE 32 24 30 28 15.5 12.5\n3 OPENCV 32 24 30 30 16 12 0 0 0 0\n",
     "uses camera 2, which"),
    ("1 PINHOLE 64 24 30 28 15.5 12.5\n2 SIMPLE_PINHOLE 32 24 26 16 12\n3 OPENCV 32 24 30 30 16 12 0 0 0 0\n",
     "different aspect ratio"),
])
def test_colmap_camera_errors(tmp_path, cameras, match):
    src, _ = _colmap_folder(tmp_path, cameras_txt=cameras)
    fails(tmp_path, match, "convert-views", "--source", src, "--dest", tmp_path / "out")


def test_colmap_image_errors(tmp_path):
    src, _ = _colmap_folder(tmp_path)
    images = src / "sparse" / "0" / "images.txt"
    good = images.read_text()
    lines = good.splitlines()
    out = tmp_path / "out"

    images.write_text(good.replace(lines[2].split()[1], "0.5", 1))  # non-unit quaternion on line 3
    fails(tmp_path, "images.txt:3: quaternion", "convert-views", "--source", src, "--dest", out)
    images.write_text("\n".join(lines[:2] + ["1 1 0 0 0 0 0 zero 1 c.png", ""]) + "\n")
    fails(tmp_path, "images.txt:3: expected numbers", "convert-views", "--source", src, "--dest", out)
    images.write_text("\n".join(lines[:2] + ["1 1 0 0 0 0 0 1 c.png", ""]) + "\n")
    fails(tmp_path, "images.txt:3: expected IMAGE_ID QW", "convert-views", "--source", src, "--dest", out)
    images.write_text("\n".join(lines[:2] + ["1 1 0 0 0 0 0 1 x 1 c.png", ""]) + "\n")
    fails(tmp_path, "images.txt:3: CAMERA_ID must be an integer", "convert-views", "--source", src, "--dest", out)
    images.write_text(good.replace(" c.png", " gone.png"))
    fails(tmp_path, "image 'gone.png' not found", "convert-views", "--source", src, "--dest", out)
    images.write_text(good.replace(" c.png", " a.png"))
    fails(tmp_path, "'a.png' is listed twice", "convert-views", "--source", src, "--dest", out)
    images.write_text("# nothing\n")
    fails(tmp_path, "lists no image", "convert-views", "--source", src, "--dest", out)
    images.write_bytes(b"\xff\xfe\x00binary")
    fails(tmp_path, "not a UTF-8 text file", "convert-views", "--source", src, "--dest", out)


def test_source_and_option_errors(tmp_path):
    fails(tmp_path, "is not a folder", "convert-views", "--source", tmp_path / "nope", "--dest", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    fails(tmp_path, "neither transforms.json nor a COLMAP", "convert-views", "--source", tmp_path / "empty",
          "--dest", tmp_path / "out")
    src = _blender_folder(tmp_path)
    args = ("convert-views", "--source", src, "--dest", tmp_path / "out")
    fails(tmp_path, "give both", *args, "--context", "0,2")
    fails(tmp_path, "--context: frame 3 out of range (the scene has 3 frames)", *args, "--context", "0,3",
          "--target", "1")
    fails(tmp_path, "--target: frame 0 is also a context view", *args, "--context", "0,2", "--target", "0,1")
    fails(tmp_path, "--context: expected comma-separated", *args, "--context", "a,b", "--target", "1")
    fails(tmp_path, "--target: repeats a frame", *args, "--context", "0,2", "--target", "1,1")
    fails(tmp_path, "--split: expected a folder name", *args, "--split", "../up")
    fails(tmp_path, "--key: expected a non-empty name", *args, "--key", "")


def test_existing_output_needs_overwrite(tmp_path):
    src = _blender_folder(tmp_path)
    root = tmp_path / "out"
    ok("convert-views", "--source", src, "--dest", root, "--context", "0,2", "--target", "1")
    fails(tmp_path, "test already exists (pass --overwrite", "convert-views", "--source", src, "--dest", root)
    fails(tmp_path, "already exists", "convert-views", "--source", src, "--dest", root, "--split", "train",
          "--context", "0,1", "--target", "2")  # a new split, but the evaluation index exists
    ok("convert-views", "--source", src, "--dest", root, "--key", "again", "--overwrite", "--context", "1,2",
       "--target", "0")
    assert _stored(root)[0] == "again"
    assert json.loads((root / "evaluation_index.json").read_text()) == {"again": {"context": [1, 2], "target": [0]}}
    assert sorted(os.listdir(root)) == ["evaluation_index.json", "test"]  # no temporary folders left


# ----------------------------------------------------------------------------------------------------------
# Real fixture


def test_motorcycle_example_round_trips_exactly(tmp_path):
    from skimage import data

    example, disparity = cv.motorcycle_example()
    left, right, truth = data.stereo_motorcycle()
    np.testing.assert_array_equal(disparity, truth)
    write_chunks(str(tmp_path), "test", [example])
    key, stored, extrinsics, intrinsics = _stored(tmp_path)
    assert key == example["key"] and torch.equal(stored["cameras"], example["cameras"])
    w, h = 741, 500
    np.testing.assert_allclose(intrinsics[0], [[994.978 / w, 0, 311.193 / w], [0, 994.978 / h, 254.877 / h],
                                               [0, 0, 1]], atol=1e-7)
    np.testing.assert_allclose(intrinsics[1, 0, 2] * w, 311.193 + 31.086, atol=1e-4)
    np.testing.assert_allclose(extrinsics[0], np.eye(4), atol=1e-7)
    expected_right = np.eye(4)
    expected_right[0, 3] = 0.193001
    np.testing.assert_allclose(extrinsics[1], expected_right, atol=1e-7)
    for image, reference in zip(stored["images"], (left, right)):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(bytes(image.numpy())))), reference)


def test_motorcycle_example_scaled():
    full, _ = cv.motorcycle_example()
    half, disparity = cv.motorcycle_example(scale=0.5)
    assert Image.open(io.BytesIO(bytes(half["images"][0].numpy()))).size == (370, 250)
    assert disparity.shape == (250, 370)
    finite = np.isfinite(disparity)
    assert 3.0 < np.nanmedian(disparity[finite]) < 30.0  # halved pixel disparities (the full pair spans ~7-60)
    np.testing.assert_array_equal(half["cameras"], full["cameras"])  # normalized intrinsics do not change
    with pytest.raises(cv.ConvertViewsError, match="scale"):
        cv.motorcycle_example(scale=0.0)
