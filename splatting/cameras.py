"""Camera batches (OpenCV world-to-camera + pixel intrinsics) and conversions from and to EG3D labels.

The generator, datasets and video tools speak EG3D's 25-float labels; the rasterizer wants world-to-camera
matrices and pixel intrinsics. Converting in this one file keeps the conventions, and the official GSGAN
quirks behind `compat=True`, out of every other file.

Conventions:
- Camera axes follow OpenCV: x right, y down, z forward. The world is EG3D's: y up, the frontal camera sits at
  (0, 0, 2.7) looking toward -z.
- Pixel (i, j) covers [i, i+1) x [j, j+1) and is centred at (i + 0.5, j + 0.5), so u = fx * x / z + cx with
  fx = fx_norm * W and cx = cx_norm * W is exact for EG3D's normalized intrinsics (cx_norm = 0.5 is the
  image centre).
- EG3D label: 16 floats cam2world (row-major) + 9 floats normalized intrinsics [[fx,0,cx],[0,fy,cy],[0,0,1]].
"""
from __future__ import annotations

import math
import numbers
from dataclasses import InitVar, dataclass

import numpy as np
import torch
from torch import Tensor

LABEL_DIM = 25
# The official code sets FoV = 12.96 "degrees" but passes it to tan(fov / 2) as radians (docs/official-release.md).
COMPAT_FOV = 12.96
COMPAT_TAN_HALF_FOV = math.tan(COMPAT_FOV / 2)  # 0.19940...
# Label entries that change sign when the scene is mirrored across the world x = 0 plane (see mirror_eg3d_labels).
_MIRROR_SIGN_FLIPS = (1, 2, 3, 4, 8)
_LABEL_CX = 18  # index of the normalized principal point x in a label


def _as_float_tensor(name: str, value, expected: str) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape {expected}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor of shape {expected}, got {value.dtype}")
    return value


def _check_matrix_batch(name: str, t, size: int) -> None:
    expected = f"[B, C, {size}, {size}]"
    if not isinstance(t, Tensor):
        raise ValueError(f"Cameras.{name}: expected a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.ndim != 4 or tuple(t.shape[-2:]) != (size, size):
        raise ValueError(f"Cameras.{name}: expected shape {expected}, got {list(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"Cameras.{name}: expected a floating-point tensor, got {t.dtype}")


def _check_image_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"Cameras.{name}: expected a positive int (pixels), got {value!r}")
    return int(value)


def _check_near(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Cameras.near: expected a finite float > 0 (view-space z cull distance), got {value!r}")
    return float(value)


def rigid_inverse(matrix: Tensor) -> Tensor:
    """[..., 4, 4] inverse of a rigid transform [R t; 0 1]: [R^T, -R^T t; 0 1] (exact, no general solve)."""
    rot = matrix[..., :3, :3]
    trans = matrix[..., :3, 3:]
    rot_t = rot.transpose(-1, -2)
    top = torch.cat([rot_t, -rot_t @ trans], dim=-1)
    bottom = torch.zeros_like(matrix[..., 3:, :])
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


# Pixel rays of pinhole cameras with normalized intrinsics (row 0 divided by W, row 1 by H): the same
# matrices serve an image and any resampling of it, so every function takes the grid size it works on.


def pixel_centers(height: int, width: int, device=None, dtype=None) -> Tensor:
    """[height, width, 2] pixel-centre coordinates (u, v) = (x + 0.5, y + 0.5) in pixels."""
    if height <= 0 or width <= 0:
        raise ValueError(f"pixel_centers: expected a positive size, got {height}x{width}")
    dtype = dtype or torch.get_default_dtype()
    v = torch.arange(height, device=device, dtype=dtype) + 0.5
    u = torch.arange(width, device=device, dtype=dtype) + 0.5
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)


def camera_rays(intrinsics: Tensor, height: int, width: int) -> Tensor:
    """[..., height, width, 3] camera-space points at z = 1 through every pixel centre: K^-1 [u/W, v/H, 1]."""
    if not isinstance(intrinsics, Tensor) or intrinsics.ndim < 2 or tuple(intrinsics.shape[-2:]) != (3, 3):
        shape = list(intrinsics.shape) if isinstance(intrinsics, Tensor) else type(intrinsics).__name__
        raise ValueError(f"intrinsics: expected shape [..., 3, 3], got {shape}")
    uv = pixel_centers(height, width, intrinsics.device, intrinsics.dtype)
    scale = uv.new_tensor([width, height])
    return image_to_camera(uv / scale, intrinsics)


def image_to_camera(uv_norm: Tensor, intrinsics: Tensor) -> Tensor:
    """Camera-space points at z = 1 of normalized image coordinates uv_norm [..., H, W, 2] (pixels / size),
    for normalized pinhole intrinsics [..., 3, 3] (zero skew, as the data layout guarantees); the two image
    dimensions broadcast against the camera dimensions."""
    k = intrinsics[..., None, None, :, :]
    x = (uv_norm[..., 0] - k[..., 0, 2]) / k[..., 0, 0]
    y = (uv_norm[..., 1] - k[..., 1, 2]) / k[..., 1, 1]
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


@dataclass
class Cameras:
    """B scenes seen by C cameras each (dimension letters: B batch, C cameras).

    world_to_cam: [B, C, 4, 4] rigid world-to-camera transforms, OpenCV axes (x right, y down, z forward)
    K:            [B, C, 3, 3] pixel intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], pixel centres at i + 0.5
    width, height: image size in pixels
    near:         view-space z below which Gaussians are culled
    validate:     False skips the value checks (finite entries, pinhole K), which read the tensors back from the
                  device; shapes, dtypes, devices and sizes are always checked. For hot loops whose cameras are
                  known good (the training loop); not stored.
    """

    world_to_cam: Tensor
    K: Tensor
    width: int
    height: int
    near: float = 0.01
    validate: InitVar[bool] = True

    def __post_init__(self, validate: bool = True) -> None:
        _check_matrix_batch("world_to_cam", self.world_to_cam, 4)
        _check_matrix_batch("K", self.K, 3)
        if tuple(self.K.shape[:2]) != tuple(self.world_to_cam.shape[:2]):
            raise ValueError(
                f"Cameras.K: expected leading dimensions [B, C] = {list(self.world_to_cam.shape[:2])} "
                f"(from world_to_cam), got {list(self.K.shape[:2])}")
        if self.K.device != self.world_to_cam.device or self.K.dtype != self.world_to_cam.dtype:
            raise ValueError(
                f"Cameras.K: is {self.K.dtype} on {self.K.device}, but world_to_cam is "
                f"{self.world_to_cam.dtype} on {self.world_to_cam.device}; they must match")
        self.width = _check_image_size("width", self.width)
        self.height = _check_image_size("height", self.height)
        self.near = _check_near(self.near)
        if validate:
            self._check_values()

    def _check_values(self) -> None:
        """Finite values and a pinhole K, checked with a single host sync."""
        w2c, k = self.world_to_cam.detach(), self.K.detach()
        zero_entries = k[..., [0, 1, 2, 2], [1, 0, 0, 1]]
        flags = torch.stack([
            torch.isfinite(w2c).all(),
            torch.isfinite(k).all(),
            (zero_entries == 0).all() & (k[..., 2, 2] == 1).all(),
            (k[..., 0, 0] > 0).all() & (k[..., 1, 1] > 0).all(),
        ]).tolist()
        if not flags[0]:
            raise ValueError("Cameras.world_to_cam: contains non-finite values (NaN or inf)")
        if not flags[1]:
            raise ValueError("Cameras.K: contains non-finite values (NaN or inf)")
        if not flags[2]:
            raise ValueError("Cameras.K: expected pinhole intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] "
                             "(zero skew, last row 0 0 1)")
        if not flags[3]:
            raise ValueError("Cameras.K: expected positive focal lengths fx = K[..., 0, 0] and fy = K[..., 1, 1]")

    # ----------------------------------------------------------------------------------------------
    # EG3D labels.
    @classmethod
    def from_eg3d_labels(cls, labels, width: int, height: int, near: float = 0.01, compat: bool = False,
                         tan_half: float | None = None, validate: bool = True) -> "Cameras":
        """Cameras from EG3D labels [B, 25] (C = 1) or [B, C, 25].

        Clean (default): world_to_cam is the exact rigid inverse of the label's cam2world and K is the label's
        normalized intrinsics with row 0 times width and row 1 times height.
        compat=True reproduces the official GSGAN renderer (docs/official-release.md): the label intrinsics are
        ignored and replaced by a centred pinhole with tan(half FoV) = `tan_half` on both axes (default
        COMPAT_TAN_HALF_FOV, the official 12.96 "degrees" read as radians), and world_to_cam's t_x has the wrong
        sign.
        validate=False skips the checks of the label values (finite, rigid, pinhole) and of the resulting cameras,
        each a device-to-host read; the shape and size checks stay (see Cameras).
        """
        labels = _as_float_tensor("labels", labels, "[B, 25] or [B, C, 25]")
        if labels.ndim == 2:
            labels = labels[:, None]
        if labels.ndim != 3 or labels.shape[-1] != LABEL_DIM:
            raise ValueError(f"labels: expected shape [B, 25] or [B, C, 25] (EG3D cam2world + intrinsics), "
                             f"got {list(labels.shape)}")
        width = _check_image_size("width", width)
        height = _check_image_size("height", height)
        if tan_half is not None and not compat:
            raise ValueError("tan_half: only used with compat=True (clean mode takes the focal length from the labels)")
        cam_to_world = labels[..., :16].reshape(*labels.shape[:-1], 4, 4)
        if validate:
            _check_labels(labels, cam_to_world)
        world_to_cam = rigid_inverse(cam_to_world)
        if compat:
            tan_half = COMPAT_TAN_HALF_FOV if tan_half is None else tan_half
            if isinstance(tan_half, bool) or not isinstance(tan_half, numbers.Real) or not (
                    math.isfinite(tan_half) and tan_half > 0):
                raise ValueError(f"tan_half: expected a finite float > 0, got {tan_half!r}")
            flip_tx = torch.ones(4, 4, dtype=labels.dtype, device=labels.device)
            flip_tx[0, 3] = -1
            world_to_cam = world_to_cam * flip_tx
            k = torch.tensor([[width / (2 * tan_half), 0.0, width / 2], [0.0, height / (2 * tan_half), height / 2],
                              [0.0, 0.0, 1.0]], dtype=labels.dtype, device=labels.device)
            k = k.expand(*labels.shape[:2], 3, 3).clone()
        else:
            zero, one = torch.zeros_like(labels[..., 16]), torch.ones_like(labels[..., 16])
            k = torch.stack([labels[..., 16] * width, zero, labels[..., 18] * width,
                             zero, labels[..., 20] * height, labels[..., 21] * height,
                             zero, zero, one], dim=-1).reshape(*labels.shape[:-1], 3, 3)
        return cls(world_to_cam=world_to_cam, K=k, width=width, height=height, near=near, validate=validate)

    def to_eg3d_labels(self) -> Tensor:
        """[B, C, 25] labels of these cameras as rendered (the inverse of from_eg3d_labels in clean mode)."""
        scale = torch.tensor([self.width, self.height, 1.0], dtype=self.K.dtype, device=self.K.device)
        k_norm = self.K / scale[:, None]
        return torch.cat([self.cam_to_world.flatten(-2), k_norm.flatten(-2)], dim=-1)

    # ----------------------------------------------------------------------------------------------
    # Derived quantities.
    @property
    def cam_to_world(self) -> Tensor:
        """[B, C, 4, 4] camera-to-world transforms."""
        return rigid_inverse(self.world_to_cam)

    @property
    def centers(self) -> Tensor:
        """[B, C, 3] camera centres in world coordinates."""
        return self.cam_to_world[..., :3, 3]

    @property
    def forward(self) -> Tensor:
        """[B, C, 3] unit viewing directions (camera +z) in world coordinates."""
        return torch.nn.functional.normalize(self.world_to_cam[..., 2, :3], dim=-1)

    @property
    def batch_size(self) -> int:
        return self.world_to_cam.shape[0]

    @property
    def num_cameras(self) -> int:
        return self.world_to_cam.shape[1]

    @property
    def device(self) -> torch.device:
        return self.world_to_cam.device

    @property
    def dtype(self) -> torch.dtype:
        return self.world_to_cam.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Cameras":
        """A copy with both tensors moved to `device` and/or cast to `dtype`."""
        return Cameras(world_to_cam=self.world_to_cam.to(device=device, dtype=dtype),
                       K=self.K.to(device=device, dtype=dtype), width=self.width, height=self.height, near=self.near)


def _check_labels(labels: Tensor, cam_to_world: Tensor) -> None:
    """Catch labels that are not row-major rigid cam2world + pinhole intrinsics (e.g. transposed or scaled)."""
    m, intrinsics = cam_to_world.detach(), labels.detach()[..., 16:]
    rot = m[..., :3, :3]
    eye = torch.eye(3, dtype=m.dtype, device=m.device)
    last_row = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=m.dtype, device=m.device)
    pinhole = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], dtype=m.dtype, device=m.device)
    free = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0, 0], dtype=torch.bool, device=m.device)  # fx, cx, fy, cy
    flags = torch.stack([
        torch.isfinite(labels.detach()).all(),
        ((m[..., 3, :] - last_row).abs() <= 1e-4).all(),
        ((rot.transpose(-1, -2) @ rot - eye).abs() <= 1e-2).all(),
        (((intrinsics - pinhole).abs() <= 1e-6) | free).all(),
        (intrinsics[..., 0] > 0).all() & (intrinsics[..., 4] > 0).all(),
    ]).tolist()
    if not flags[0]:
        raise ValueError("labels: contain non-finite values (NaN or inf)")
    if not flags[1]:
        raise ValueError("labels: cam2world (entries 0-15) must be a row-major 4x4 matrix with last row 0 0 0 1 "
                         "(is the label transposed?)")
    if not flags[2]:
        raise ValueError("labels: the rotation part of cam2world (entries 0-2, 4-6, 8-10) is not orthonormal")
    if not flags[3]:
        raise ValueError("labels: intrinsics (entries 16-24) must be [fx, 0, cx, 0, fy, cy, 0, 0, 1]")
    if not flags[4]:
        raise ValueError("labels: normalized focal lengths (entries 16 and 20) must be positive")


# --------------------------------------------------------------------------------------------------
# Building labels.
def _vector3(name: str, value, like: Tensor | None) -> Tensor:
    if isinstance(value, Tensor):
        t = value if value.is_floating_point() else value.to(torch.get_default_dtype())
    else:
        try:
            t = torch.as_tensor(np.asarray(value, dtype=np.float64),
                                dtype=like.dtype if like is not None else torch.get_default_dtype())
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected 3-vectors [..., 3], got {value!r}") from None
    if t.ndim == 0 or t.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [..., 3], got {list(t.shape)}")
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    return t


def look_at(origin, target, up=(0.0, 1.0, 0.0)) -> Tensor:
    """cam2world [..., 4, 4] of cameras at `origin` [..., 3] looking at `target` [..., 3] (EG3D's basis).

    forward = normalize(target - origin), right = -normalize(up x forward), up' = normalize(forward x right);
    the rotation columns are (right, up', forward) so the camera is OpenCV (y down in the image). The frontal
    camera look_at((0, 0, 2.7), (0, 0, 0)) has right = +x and image-down = -y (world).
    """
    origin = _vector3("origin", origin, None)
    target = _vector3("target", target, origin)
    up = _vector3("up", up, origin)
    shape = torch.broadcast_shapes(origin.shape, target.shape, up.shape)
    origin, target, up = (t.expand(shape) for t in (origin, target, up))
    offset = target - origin
    cross = torch.linalg.cross(up, offset, dim=-1)
    length, cross_len = offset.norm(dim=-1), cross.norm(dim=-1)
    tiny = 1e-12 if origin.dtype == torch.float64 else 1e-7
    if (length.detach() <= tiny).any():
        raise ValueError("look_at: origin and target coincide; the viewing direction is undefined")
    if (cross_len.detach() <= tiny * length.detach() * up.detach().norm(dim=-1)).any():
        raise ValueError("look_at: the viewing direction is parallel to `up`; pick another up vector")
    forward = offset / length[..., None]
    right = -cross / cross_len[..., None]
    new_up = torch.nn.functional.normalize(torch.linalg.cross(forward, right, dim=-1), dim=-1)
    rotation = torch.stack([right, new_up, forward], dim=-1)
    top = torch.cat([rotation, origin[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


def eg3d_label(cam2world: Tensor, fx_norm, fy_norm=None, cx=0.5, cy=0.5) -> Tensor:
    """[..., 25] EG3D label from cam2world [..., 4, 4] and normalized intrinsics (floats or tensors [...]).

    fy_norm defaults to fx_norm (square pixels on a square image, as in FFHQ/AFHQ: 4.2647).
    """
    cam2world = _as_float_tensor("cam2world", cam2world, "[..., 4, 4]")
    if cam2world.ndim < 2 or tuple(cam2world.shape[-2:]) != (4, 4):
        raise ValueError(f"cam2world: expected shape [..., 4, 4], got {list(cam2world.shape)}")
    batch = cam2world.shape[:-2]
    fy_norm = fx_norm if fy_norm is None else fy_norm
    parts = []
    for name, value in (("fx_norm", fx_norm), ("fy_norm", fy_norm), ("cx", cx), ("cy", cy)):
        t = torch.as_tensor(value, dtype=cam2world.dtype, device=cam2world.device)
        try:
            parts.append(torch.broadcast_to(t, batch))
        except RuntimeError:
            raise ValueError(f"{name}: expected a float or a tensor broadcastable to {list(batch)}, "
                             f"got shape {list(t.shape)}") from None
    fx, fy, px, py = parts
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    intrinsics = torch.stack([fx, zero, px, zero, fy, py, zero, zero, one], dim=-1)
    return torch.cat([cam2world.flatten(-2), intrinsics], dim=-1)


def mirror_eg3d_labels(labels):
    """Labels [..., 25] of the scene mirrored across the world x = 0 plane, seen in the horizontally flipped image.

    With M = diag(-1, 1, 1) the mirrored camera is R' = M R M, t' = M t (still a rigid, right-handed OpenCV
    camera). A mirrored point M X then lands at camera coordinates M x_cam, i.e. u' = W - u when cx' = W - cx.
    So entries 1, 2, 3, 4, 8 of the label change sign and cx_norm becomes 1 - cx_norm. Tensor or numpy in,
    the same type out; the input is not modified.
    """
    if isinstance(labels, np.ndarray):
        out = labels.copy()
    elif isinstance(labels, Tensor):
        out = labels.clone()
    else:
        raise ValueError(f"labels: expected a torch.Tensor or numpy array [..., 25], got {type(labels).__name__}")
    if out.ndim == 0 or out.shape[-1] != LABEL_DIM:
        raise ValueError(f"labels: expected shape [..., 25] (EG3D cam2world + intrinsics), got {list(out.shape)}")
    index = list(_MIRROR_SIGN_FLIPS)
    out[..., index] = -out[..., index]
    out[..., _LABEL_CX] = 1 - out[..., _LABEL_CX]
    return out
