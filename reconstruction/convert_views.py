"""Users' own posed images -> one scene in the pixelSplat chunk format (`dataset_tool.py convert-views`).

Two common sources are read:
- a NeRF-style `transforms.json` (Blender / instant-ngp): per-frame OpenGL camera-to-world `transform_matrix`
  (camera x right, y up, looking down -z), converted to OpenCV by negating the camera y and z axes; intrinsics
  from `camera_angle_x` (and `camera_angle_y`) or `fl_x`/`fl_y`/`cx`/`cy`/`w`/`h`, global or per frame;
- a COLMAP text model (`cameras.txt`, `images.txt`, in DIR or DIR/sparse/0): world-to-camera quaternion and
  translation per image, PINHOLE / SIMPLE_PINHOLE / OPENCV (all-zero distortion) cameras.

Intrinsics are normalized by the size they were given for (w/h or the COLMAP camera's WIDTH/HEIGHT, else the
image file's own size), which stays right when the images on disk are a uniformly resized copy; an image whose
aspect ratio differs from that size is an error. Encoded PNG/JPEG bytes are stored unchanged; other formats are
re-encoded as PNG. Every problem raises ConvertViewsError with one line naming the file (and line or frame).

Also here: `motorcycle_example`, a real posed 2-view fixture (the Middlebury 2014 Motorcycle pair that
scikit-image ships) for geometry tests.
"""
from __future__ import annotations

import io
import json
import math
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
STORED_FORMATS = {"PNG", "JPEG"}  # kept byte for byte; anything else PIL reads is re-encoded as PNG
ROTATION_TOLERANCE = 1e-3  # |R^T R - I| beyond this is not a camera pose (a scaled or sheared matrix)
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # right-multiplied: negates the camera y and z axes
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


class ConvertViewsError(ValueError):
    """A source folder that cannot be converted; the message names the file / line / field and what was expected."""


# ----------------------------------------------------------------------------------------------------------
# Images


def read_image(path: str) -> tuple[bytes, int, int]:
    """(encoded bytes to store, width, height) of an image file; PNG/JPEG bytes unchanged, others as PNG.

    The image is fully decoded once, so a truncated or corrupt file fails here rather than during training."""
    if not os.path.isfile(path):
        raise ConvertViewsError(f"{path}: image file not found")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
            image.load()
            width, height = image.size
            if fmt not in STORED_FORMATS:
                buf = io.BytesIO()
                image.convert("RGB").save(buf, format="PNG")
                data = buf.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ConvertViewsError(f"{path}: not a readable image ({exc})") from None
    return data, width, height


def _normalize_intrinsics(k_pixels: np.ndarray, size: tuple[float, float], image_size: tuple[int, int],
                          where: str) -> np.ndarray:
    """Pixel intrinsics given for `size` (w, h) -> normalized; the image must have the same aspect ratio."""
    width, height = size
    img_w, img_h = image_size
    if abs(width * img_h - height * img_w) > max(width, height):  # more than about a pixel of disagreement
        raise ConvertViewsError(f"{where}: the intrinsics are for {width:g}x{height:g} images but the image is "
                                f"{img_w}x{img_h} (a different aspect ratio: cropped?)")
    out = np.array(k_pixels, dtype=np.float64)
    out[0] /= width
    out[1] /= height
    out[2] = [0.0, 0.0, 1.0]
    return out


def _check_pose(matrix: np.ndarray, where: str) -> np.ndarray:
    """A finite rigid 4x4 (bottom row 0 0 0 1, rotation orthonormal with det +1), re-orthonormalized exactly."""
    if not np.isfinite(matrix).all():
        raise ConvertViewsError(f"{where}: has non-finite values (NaN or inf)")
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise ConvertViewsError(f"{where}: bottom row must be 0 0 0 1, got {matrix[3].tolist()}")
    rot = matrix[:3, :3]
    error = np.abs(rot.T @ rot - np.eye(3)).max()
    if error > ROTATION_TOLERANCE or np.linalg.det(rot) <= 0:
        raise ConvertViewsError(f"{where}: the rotation part is not a rotation (|R^T R - I| = {error:.2g}, det "
                                f"{np.linalg.det(rot):.3g}); expected a rigid camera pose without scale")
    u, _, vt = np.linalg.svd(rot)
    out = matrix.copy()
    out[:3, :3] = u @ vt  # nearest rotation, so the stored world-to-camera is an exact rigid inverse
    return out


# ----------------------------------------------------------------------------------------------------------
# transforms.json


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConvertViewsError(f"{where}: expected a finite number, got {json.dumps(value)[:40]}")
    return float(value)


def _find_image(folder: str, file_path: str, where: str) -> str:
    """file_path relative to the folder, with or without an image extension."""
    if not isinstance(file_path, str) or not file_path:
        raise ConvertViewsError(f"{where}.file_path: expected a non-empty string, got {json.dumps(file_path)[:40]}")
    base = os.path.normpath(os.path.join(folder, file_path))
    for candidate in [base] + [base + ext for ext in IMAGE_EXTENSIONS]:
        if os.path.isfile(candidate):
            return candidate
    raise ConvertViewsError(f"{where}.file_path: image {file_path!r} not found in {folder} (also tried "
                            f"{', '.join(IMAGE_EXTENSIONS[:3])})")


def _transforms_intrinsics(fields: dict, image_size: tuple[int, int], where: str) -> np.ndarray:
    """Normalized intrinsics of one frame from its (frame-over-global) fields."""
    for key in _DISTORTION_KEYS:
        if key in fields and _number(fields[key], f"{where}.{key}") != 0.0:
            raise ConvertViewsError(f"{where}.{key}: lens distortion is not supported (got {fields[key]}); "
                                    f"undistort the images first")
    img_w, img_h = image_size
    if "fl_x" in fields or "fl_y" in fields:
        fx = _number(fields.get("fl_x", fields.get("fl_y")), f"{where}.fl_x")
        fy = _number(fields.get("fl_y", fx), f"{where}.fl_y")
        width = _number(fields["w"], f"{where}.w") if "w" in fields else float(img_w)
        height = _number(fields["h"], f"{where}.h") if "h" in fields else float(img_h)
        cx = _number(fields["cx"], f"{where}.cx") if "cx" in fields else width / 2
        cy = _number(fields["cy"], f"{where}.cy") if "cy" in fields else height / 2
        if fx <= 0 or fy <= 0 or width <= 0 or height <= 0:
            raise ConvertViewsError(f"{where}: fl_x, fl_y, w and h must be positive")
        return _normalize_intrinsics(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), (width, height),
                                     image_size, where)
    if "camera_angle_x" not in fields:
        raise ConvertViewsError(f"{where}: no intrinsics: expected camera_angle_x or fl_x (global or per frame)")
    angle_x = _number(fields["camera_angle_x"], f"{where}.camera_angle_x")
    if not 0 < angle_x < math.pi:
        raise ConvertViewsError(f"{where}.camera_angle_x: expected radians in (0, pi), got {angle_x}")
    fx = 0.5 / math.tan(angle_x / 2)  # normalized by the width
    if "camera_angle_y" in fields:
        angle_y = _number(fields["camera_angle_y"], f"{where}.camera_angle_y")
        if not 0 < angle_y < math.pi:
            raise ConvertViewsError(f"{where}.camera_angle_y: expected radians in (0, pi), got {angle_y}")
        fy = 0.5 / math.tan(angle_y / 2)
    else:
        fy = fx * img_w / img_h  # square pixels
    return np.array([[fx, 0, 0.5], [0, fy, 0.5], [0, 0, 1.0]])


def read_transforms_json(folder: str) -> list[dict]:
    """Frames [{"path", "cam2world" (OpenCV), "intrinsics" (normalized), "data"}] of folder/transforms.json,
    in file order."""
    path = os.path.join(folder, "transforms.json")
    try:
        with open(path, "rb") as handle:
            doc = json.loads(handle.read())
    except OSError as exc:
        raise ConvertViewsError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f"line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "encoding"
        raise ConvertViewsError(f"{path}: not valid JSON ({where}: {exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list) or not doc["frames"]:
        raise ConvertViewsError(f'{path}: expected an object with a non-empty "frames" list')
    shared = {key: value for key, value in doc.items() if key != "frames"}
    frames = []
    for number, frame in enumerate(doc["frames"]):
        where = f"{path}: frames[{number}]"
        if not isinstance(frame, dict):
            raise ConvertViewsError(f"{where}: expected an object, got {type(frame).__name__}")
        if "transform_matrix" not in frame:
            raise ConvertViewsError(f"{where}: missing transform_matrix")
        try:
            matrix = np.array(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            matrix = None
        if matrix is None or matrix.shape != (4, 4):
            raise ConvertViewsError(f"{where}.transform_matrix: expected 4x4 numbers, got "
                                    f"{json.dumps(frame['transform_matrix'])[:60]}")
        cam2world_gl = _check_pose(matrix, f"{where}.transform_matrix")
        image_path = _find_image(folder, frame.get("file_path"), where)
        data, width, height = read_image(image_path)
        intrinsics = _transforms_intrinsics({**shared, **frame}, (width, height), where)
        frames.append({"path": image_path, "cam2world": cam2world_gl @ OPENGL_TO_OPENCV, "intrinsics": intrinsics,
                       "data": data})
    return frames


# ----------------------------------------------------------------------------------------------------------
# COLMAP text model


def find_colmap_model(folder: str) -> str | None:
    """The folder holding cameras.txt and images.txt: folder itself or folder/sparse/0 (None if neither)."""
    for candidate in (folder, os.path.join(folder, "sparse", "0")):
        if all(os.path.isfile(os.path.join(candidate, name)) for name in ("cameras.txt", "images.txt")):
            return candidate
    return None


def _data_lines(path: str):
    """(line number, stripped text) of the non-comment lines; blank lines are kept (they carry meaning in
    images.txt, where an image without 2D points has an empty second line)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConvertViewsError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConvertViewsError(f"{path}: not a UTF-8 text file (a binary COLMAP model? export it with "
                                f"`colmap model_converter --output_type TXT`)") from None
    return [(number, line.strip()) for number, line in enumerate(lines, 1) if not line.lstrip().startswith("#")]


def _floats(tokens, where: str) -> list[float]:
    try:
        values = [float(token) for token in tokens]
    except ValueError:
        raise ConvertViewsError(f"{where}: expected numbers, got {' '.join(tokens)[:60]!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ConvertViewsError(f"{where}: has non-finite values (NaN or inf)")
    return values


_COLMAP_PARAMS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "OPENCV": 8}


def read_colmap_cameras(path: str) -> dict[int, tuple[np.ndarray, tuple[float, float]]]:
    """{camera id: (pixel intrinsics [3, 3], (width, height))} of a cameras.txt."""
    cameras = {}
    for number, line in _data_lines(path):
        if not line:
            continue
        where = f"{path}:{number}"
        tokens = line.split()
        if len(tokens) < 4:
            raise ConvertViewsError(f"{where}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS..., got {line[:60]!r}")
        try:
            camera_id = int(tokens[0])
        except ValueError:
            raise ConvertViewsError(f"{where}: CAMERA_ID must be an integer, got {tokens[0]!r}") from None
        model = tokens[1]
        if model not in _COLMAP_PARAMS:
            raise ConvertViewsError(f"{where}: camera {camera_id}: model {model} is not supported (expected one of "
                                    f"{', '.join(_COLMAP_PARAMS)}; undistort with `colmap image_undistorter`)")
        width, height, *params = _floats(tokens[2:], where)
        if len(params) != _COLMAP_PARAMS[model]:
            raise ConvertViewsError(f"{where}: camera {camera_id}: model {model} takes {_COLMAP_PARAMS[model]} "
                                    f"parameters, got {len(params)}")
        if model == "SIMPLE_PINHOLE":
            fx = fy = params[0]
            cx, cy = params[1:3]
        else:
            fx, fy, cx, cy = params[:4]
            if model == "OPENCV" and any(params[4:]):
                raise ConvertViewsError(f"{where}: camera {camera_id}: model OPENCV with non-zero distortion "
                                        f"{params[4:]} is not supported (undistort with `colmap image_undistorter`)")
        if width <= 0 or height <= 0 or fx <= 0 or fy <= 0:
            raise ConvertViewsError(f"{where}: camera {camera_id}: width, height and focal lengths must be positive")
        if camera_id in cameras:
            raise ConvertViewsError(f"{where}: camera {camera_id} is defined twice")
        cameras[camera_id] = (np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), (width, height))
    if not cameras:
        raise ConvertViewsError(f"{path}: defines no camera")
    return cameras


def quaternion_to_rotation(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    """Rotation matrix of a unit quaternion (Hamilton convention, scalar first, as COLMAP writes it)."""
    return np.array([
        [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)],
        [2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)],
        [2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)],
    ])


def read_colmap_images(path: str) -> list[tuple[str, np.ndarray, int, str]]:
    """[(name, world-to-camera [4, 4], camera id, where)] of an images.txt (pairs of lines; the second, the
    image's 2D points, is skipped and may be empty)."""
    lines = _data_lines(path)
    entries = []
    for row in range(0, len(lines), 2):
        number, line = lines[row]
        where = f"{path}:{number}"
        if not line:
            if all(not text for _, text in lines[row:]):
                break  # trailing blank lines
            raise ConvertViewsError(f"{where}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got an empty "
                                    f"line (every image takes two lines: its pose, then its 2D points)")
        tokens = line.split(maxsplit=9)
        if len(tokens) != 10:
            raise ConvertViewsError(f"{where}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got "
                                    f"{line[:60]!r}")
        qw, qx, qy, qz, tx, ty, tz = _floats(tokens[1:8], where)
        try:
            camera_id = int(tokens[8])
        except ValueError:
            raise ConvertViewsError(f"{where}: CAMERA_ID must be an integer, got {tokens[8]!r}") from None
        norm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
        if abs(norm - 1.0) > 1e-3:
            raise ConvertViewsError(f"{where}: quaternion ({qw}, {qx}, {qy}, {qz}) is not unit length "
                                    f"(|q| = {norm:.4g})")
        world_to_cam = np.eye(4)
        world_to_cam[:3, :3] = quaternion_to_rotation(qw / norm, qx / norm, qy / norm, qz / norm)
        world_to_cam[:3, 3] = [tx, ty, tz]
        entries.append((tokens[9], world_to_cam, camera_id, where))
    if not entries:
        raise ConvertViewsError(f"{path}: lists no image")
    return entries


def rigid_inverse_np(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 [R t; 0 1] (numpy twin of splatting.cameras.rigid_inverse)."""
    out = np.eye(4)
    out[:3, :3] = matrix[:3, :3].T
    out[:3, 3] = -matrix[:3, :3].T @ matrix[:3, 3]
    return out


def read_colmap_model(folder: str, model_dir: str) -> list[dict]:
    """Frames (as read_transforms_json) of a COLMAP text model, sorted by image name."""
    cameras_path = os.path.join(model_dir, "cameras.txt")
    cameras = read_colmap_cameras(cameras_path)
    images = read_colmap_images(os.path.join(model_dir, "images.txt"))
    names = [name for name, *_ in images]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise ConvertViewsError(f"{os.path.join(model_dir, 'images.txt')}: image {duplicate!r} is listed twice")
    frames = []
    for name, world_to_cam, camera_id, where in sorted(images, key=lambda item: item[0]):
        if camera_id not in cameras:
            raise ConvertViewsError(f"{where}: image {name!r} uses camera {camera_id}, which {cameras_path} does "
                                    f"not define")
        candidates = [os.path.join(folder, "images", name), os.path.join(folder, name)]
        image_path = next((c for c in candidates if os.path.isfile(c)), None)
        if image_path is None:
            raise ConvertViewsError(f"{where}: image {name!r} not found (looked in {folder}/images and {folder})")
        data, width, height = read_image(image_path)
        k_pixels, size = cameras[camera_id]
        intrinsics = _normalize_intrinsics(k_pixels, size, (width, height), f"{image_path} (camera {camera_id})")
        cam2world = _check_pose(rigid_inverse_np(world_to_cam), where)
        frames.append({"path": image_path, "cam2world": cam2world, "intrinsics": intrinsics, "data": data})
    return frames


# ----------------------------------------------------------------------------------------------------------
# Examples


def read_posed_folder(folder: str) -> list[dict]:
    """Frames of a transforms.json or a COLMAP text model in `folder` (transforms.json wins if both exist)."""
    if not os.path.isdir(folder):
        raise ConvertViewsError(f"--source: {folder} is not a folder")
    if os.path.isfile(os.path.join(folder, "transforms.json")):
        return read_transforms_json(folder)
    model_dir = find_colmap_model(folder)
    if model_dir is not None:
        return read_colmap_model(folder, model_dir)
    raise ConvertViewsError(f"--source: {folder} holds neither transforms.json nor a COLMAP text model "
                            f"(cameras.txt + images.txt in the folder or in sparse/0)")


def frames_to_example(frames: list[dict], key: str, url: str = "") -> dict:
    """A chunk example {key, url, timestamps, cameras, images} of frames in order (timestamps = frame order)."""
    import torch

    from reconstruction.chunks import pack_cameras

    if not isinstance(key, str) or not key:
        raise ConvertViewsError(f"--key: expected a non-empty name, got {key!r}")
    cam2world = torch.from_numpy(np.stack([f["cam2world"] for f in frames]))
    intrinsics = torch.from_numpy(np.stack([f["intrinsics"] for f in frames]))
    return {"key": key, "url": url, "timestamps": torch.arange(len(frames), dtype=torch.int64),
            "cameras": pack_cameras(cam2world, intrinsics),
            "images": [torch.frombuffer(bytearray(f["data"]), dtype=torch.uint8) for f in frames]}


def parse_frame_list(text: str | None, option: str, num_frames: int) -> list[int] | None:
    """"0,5" -> [0, 5], each a frame index in [0, num_frames)."""
    if text is None:
        return None
    try:
        values = [int(token) for token in text.split(",") if token.strip()]
    except ValueError:
        raise ConvertViewsError(f"{option}: expected comma-separated frame indices like 0,5, got {text!r}") from None
    if not values:
        raise ConvertViewsError(f"{option}: expected at least one frame index, got {text!r}")
    for value in values:
        if not 0 <= value < num_frames:
            raise ConvertViewsError(f"{option}: frame {value} out of range (the scene has {num_frames} frames)")
    if len(set(values)) != len(values):
        raise ConvertViewsError(f"{option}: repeats a frame ({text})")
    return values


def evaluation_entry(context: str | None, target: str | None, num_frames: int) -> dict | None:
    """{"context": [...], "target": [...]} from the --context/--target options (both or neither)."""
    if (context is None) != (target is None):
        raise ConvertViewsError("--context/--target: give both (e.g. --context 0,5 --target 2,3) or neither")
    if context is None:
        return None
    ctx = parse_frame_list(context, "--context", num_frames)
    tgt = parse_frame_list(target, "--target", num_frames)
    shared = sorted(set(ctx) & set(tgt))
    if shared:
        raise ConvertViewsError(f"--target: frame {shared[0]} is also a context view")
    return {"context": ctx, "target": tgt}


# ----------------------------------------------------------------------------------------------------------
# Real fixture: Middlebury 2014 "Motorcycle" (the down-sampled pair scikit-image ships)

MOTORCYCLE_FOCAL_PX = 994.978
MOTORCYCLE_PRINCIPAL_PX = (311.193, 254.877)  # left camera; the right one's x is MOTORCYCLE_DOFFS_PX larger
MOTORCYCLE_DOFFS_PX = 31.086
MOTORCYCLE_BASELINE_M = 0.193001


def motorcycle_example(scale: float = 1.0) -> tuple[dict, np.ndarray]:
    """(chunk example of the rectified pair, left-image disparity [H, W] in pixels of the returned images).

    Poses: identity rotation, the right camera translated by +baseline along x (camera-to-world; world units =
    metres), so a left pixel with disparity d lies at z-depth f * B / (d + doffs), with f and doffs in pixels of
    the returned size. `scale` resizes both images (Lanczos) and the disparity (nearest, values scaled);
    normalized intrinsics do not change. NaN marks pixels without ground truth."""
    import torch

    from reconstruction.chunks import pack_cameras
    from skimage import data

    if not (isinstance(scale, (int, float)) and 0 < scale <= 1.0):
        raise ConvertViewsError(f"motorcycle_example: scale must be in (0, 1], got {scale!r}")
    left, right, disparity = data.stereo_motorcycle()
    height, width = left.shape[:2]
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    frames = []
    for image in (left, right):
        pil = Image.fromarray(image)
        if (out_w, out_h) != (width, height):
            pil = pil.resize((out_w, out_h), Image.LANCZOS)
        buf = io.BytesIO()
        pil.save(buf, format="PNG", compress_level=1)
        frames.append(buf.getvalue())
    disparity = np.asarray(disparity, dtype=np.float32)
    if (out_w, out_h) != (width, height):
        rows = np.minimum(((np.arange(out_h) + 0.5) * height / out_h).astype(np.int64), height - 1)
        cols = np.minimum(((np.arange(out_w) + 0.5) * width / out_w).astype(np.int64), width - 1)
        disparity = disparity[rows][:, cols] * np.float32(out_w / width)
    fx, cy = MOTORCYCLE_FOCAL_PX / width, MOTORCYCLE_PRINCIPAL_PX[1] / height
    fy = MOTORCYCLE_FOCAL_PX / height
    cx_left = MOTORCYCLE_PRINCIPAL_PX[0] / width
    cx_right = (MOTORCYCLE_PRINCIPAL_PX[0] + MOTORCYCLE_DOFFS_PX) / width
    intrinsics = torch.tensor([[[fx, 0, cx_left], [0, fy, cy], [0, 0, 1]],
                               [[fx, 0, cx_right], [0, fy, cy], [0, 0, 1]]], dtype=torch.float64)
    cam2world = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    cam2world[1, 0, 3] = MOTORCYCLE_BASELINE_M
    example = {"key": "middlebury2014-motorcycle", "url": "https://vision.middlebury.edu/stereo/data/scenes2014/",
               "timestamps": torch.arange(2, dtype=torch.int64), "cameras": pack_cameras(cam2world, intrinsics),
               "images": [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in frames]}
    return example, disparity
