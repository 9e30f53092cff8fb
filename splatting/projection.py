"""Projection of 3D Gaussians to screen-space 2D Gaussians, shared by every rasterizer backend.

Written in plain PyTorch (batched over scenes and cameras) so that all backends see exactly the same 2D
Gaussians; the compiled backends only bin, sort and composite. Semantics follow docs/interfaces.md
("Projection semantics"): EWA splatting with gsplat's Jacobian clamp, a 0.3 px^2 dilation, 3-sigma integer
radii, near-plane and off-screen culling, and SH colour per view direction.

Speed (the GAN trains through this on CPU): every 3x3 / 2x3 matrix product is spelled out as element-wise
multiply-adds on per-component [B, C, N] tensors (batched matmuls of tiny matrices are slow), and the
geometric part runs inside one autograd.Function with a hand-written backward (_ewa_backward), so
autograd does not record and replay ~100 small ops. When a camera tensor requires grad, the same forward
code runs under plain autograd instead (it is written out-of-place for that), so camera gradients still work.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Cameras
from .gaussians import Gaussians
from .sh import sh_to_color

DILATION = 0.3  # px^2 added to the 2D covariance (low-pass filter, keeps tiny Gaussians at least ~1 px wide)
JACOBIAN_CLAMP_MARGIN = 0.3  # fraction of tan(fov/2) beyond the image where the EWA linearization is frozen
RADIUS_SIGMAS = 3.0
EIGEN_FLOOR = 0.01  # floor of the discriminant in the largest-eigenvalue formula
MAX_RADIUS = 2.0 ** 30  # keeps absurdly large (or overflowed) radii representable as int32


@dataclass(frozen=True)
class Projected:
    """2D Gaussians of I = B*C images (image index = b*C + c). Entries with radii == 0 are culled: their other
    values are finite but meaningless."""

    means2d: Tensor    # [I, N, 2] pixel coordinates (x, y), pixel centres at i + 0.5
    conics: Tensor     # [I, N, 3] (a, b, c) of the inverse dilated 2D covariance [[a, b], [b, c]]
    depths: Tensor     # [I, N]    view-space z
    radii: Tensor      # [I, N]    int32, 0 = culled
    opacities: Tensor  # [I, N]
    colors: Tensor     # [I, N, 3]


def _rotation(w: Tensor, x: Tensor, y: Tensor, z: Tensor) -> tuple[list[list[Tensor]], tuple[Tensor, ...], Tensor]:
    """Rotation matrix entries r[i][j] of quaternion components (w, x, y, z), normalized here; also the unit
    components and the (floored) norm, which the hand-written backward needs."""
    norm = torch.sqrt(w * w + x * x + y * y + z * z).clamp_min(1e-12)  # as torch.nn.functional.normalize
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rot = [[1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy)],
           [2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx)],
           [2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)]]
    return rot, (w, x, y, z), norm


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrices from quaternions [..., 4] (w, x, y, z), normalized here."""
    rot, _, _ = _rotation(*quats.unbind(-1))
    return torch.stack([e for row in rot for e in row], dim=-1).reshape(*quats.shape[:-1], 3, 3)


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of quaternions [..., 4] (w, x, y, z): the rotation b followed by a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def covariances3d(gaussians: Gaussians) -> Tensor:
    """[B, N, 3, 3] world-space covariances R S S^T R^T."""
    m = quat_to_rotmat(gaussians.quats) * gaussians.scales()[..., None, :]  # R @ diag(s)
    return m @ m.transpose(-1, -2)


def camera_entries(w2c: Tensor, k: Tensor, width: int, height: int) -> dict:
    """Per-camera scalars as [B, C, 1] tensors (broadcast against per-Gaussian [B, 1, N] ones): rotation r[i][j],
    translation t[i], fx, fy, cx, cy and the Jacobian clamp limits (x/z in [-lim_x_neg, lim_x_pos], same for y)."""
    cam = {"r": [[w2c[..., i, j, None] for j in range(3)] for i in range(3)],
           "t": [w2c[..., i, 3, None] for i in range(3)],
           "fx": k[..., 0, 0, None], "fy": k[..., 1, 1, None], "cx": k[..., 0, 2, None], "cy": k[..., 1, 2, None]}
    fx, fy, cx, cy = cam["fx"], cam["fy"], cam["cx"], cam["cy"]
    tan_fov_x, tan_fov_y = 0.5 * width / fx, 0.5 * height / fy
    cam["lim_x_pos"] = (width - cx) / fx + JACOBIAN_CLAMP_MARGIN * tan_fov_x
    cam["lim_x_neg"] = cx / fx + JACOBIAN_CLAMP_MARGIN * tan_fov_x
    cam["lim_y_pos"] = (height - cy) / fy + JACOBIAN_CLAMP_MARGIN * tan_fov_y
    cam["lim_y_neg"] = cy / fy + JACOBIAN_CLAMP_MARGIN * tan_fov_y
    return cam


def _split_last(t: Tensor) -> list[Tensor]:
    """[..., D] -> D contiguous [...] tensors (one strided pass; element-wise ops on strided views of the last
    dimension are several times slower than on contiguous ones)."""
    return list(t.movedim(-1, 0).contiguous().unbind(0))


def _components(t: Tensor) -> list[Tensor]:
    """Per-Gaussian [B, N, D] -> D contiguous [B, 1, N] tensors (broadcast over the cameras)."""
    return [part[:, None] for part in _split_last(t)]


def _stack_last(parts: list[Tensor]) -> Tensor:
    """torch.stack(parts, -1), through empty + copy_ when no graph is recorded (torch.stack / torch.cat along a
    short last dimension is ~3x slower on CPU)."""
    if torch.is_grad_enabled() and any(p.requires_grad for p in parts):
        return torch.stack(parts, dim=-1)
    out = parts[0].new_empty(*parts[0].shape, len(parts))
    for i, part in enumerate(parts):
        out[..., i].copy_(part)
    return out


def _dot3(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """sum_k a[k] * b[k], broadcasting; out-of-place so that autograd can record it."""
    return torch.addcmul(torch.addcmul(a[0] * b[0], a[1], b[1]), a[2], b[2])


def _mask(condition: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean condition as a 0/1 float tensor: masks are applied by multiply-adds (torch.where is slow on CPU)."""
    return condition.to(dtype)


def ewa_forward(means: Tensor, log_scales: Tensor, quats: Tensor, cam: dict, near: float) -> dict:
    """Screen-space terms of B scenes of N Gaussians in C cameras, every one a [B, C, N] tensor (or [B, 1, N] for
    per-Gaussian ones), including the intermediates the hand-written backward reuses.

    Covariance: cov2d = V V^T with V = T M, T = J R_cw (2x3) and M = R_q diag(s) (3x3), i.e. J R_cw Sigma R_cw^T
    J^T. Culled entries (behind the near plane, det <= 0) use z = 1 / det = 1 so everything stays finite."""
    m = _components(means)
    rot_q, quat_unit, quat_norm = _rotation(*_components(quats))
    s = [torch.exp(t) for t in _components(log_scales)]
    mm = [[rot_q[j][kk] * s[kk] for kk in range(3)] for j in range(3)]  # M = R_q diag(s)

    r, fx, fy, cx, cy = cam["r"], cam["fx"], cam["fy"], cam["cx"], cam["cy"]
    x, y, z = (_dot3(r[i], m) + cam["t"][i] for i in range(3))
    front = _mask(z >= near, z.dtype)
    z_safe = torch.addcmul(1 - front, z, front)  # z, or 1 behind the near plane
    inv_z = 1 / z_safe

    # EWA Jacobian, x/z and y/z clamped to a margin around the view frustum: t_x = z * clamp(x / z).
    ratio_x = torch.clamp(x / z_safe, -cam["lim_x_neg"], cam["lim_x_pos"])
    ratio_y = torch.clamp(y / z_safe, -cam["lim_y_neg"], cam["lim_y_pos"])
    j00, j11 = fx * inv_z, fy * inv_z
    j02 = -j00 * (z_safe * ratio_x) * inv_z
    j12 = -j11 * (z_safe * ratio_y) * inv_z

    t0 = [torch.addcmul(j00 * r[0][kk], j02, r[2][kk]) for kk in range(3)]  # rows of T = J R_cw
    t1 = [torch.addcmul(j11 * r[1][kk], j12, r[2][kk]) for kk in range(3)]
    v0 = [_dot3(t0, [mm[0][kk], mm[1][kk], mm[2][kk]]) for kk in range(3)]  # rows of V = T M
    v1 = [_dot3(t1, [mm[0][kk], mm[1][kk], mm[2][kk]]) for kk in range(3)]
    a = _dot3(v0, v0) + DILATION
    b = _dot3(v0, v1)
    c = _dot3(v1, v1) + DILATION
    det = a * c - b * b
    det_ok = _mask(det > 0, det.dtype)
    inv_det = 1 / torch.addcmul(1 - det_ok, det, det_ok)  # 1 / det, or 1 where det <= 0

    return dict(rot_q=rot_q, quat_unit=quat_unit, quat_norm=quat_norm, s=s, mm=mm, x=x, y=y, z=z, front=front,
                z_safe=z_safe, inv_z=inv_z, ratio_x=ratio_x, ratio_y=ratio_y, j00=j00, j02=j02, j11=j11, j12=j12,
                t0=t0, t1=t1, v0=v0, v1=v1, a=a, b=b, c=c, det=det, det_ok=det_ok, inv_det=inv_det,
                u=j00 * x + cx, v=j11 * y + cy, conics=[c * inv_det, -b * inv_det, a * inv_det])


@torch.no_grad()
def _radii(terms: dict, width: int, height: int) -> Tensor:
    """[B, C, N] int32 3-sigma radii; 0 where culled (near plane, det <= 0, or the square is off-screen)."""
    a, c, det = terms["a"], terms["c"], terms["det"]
    half_trace = 0.5 * (a + c)
    lambda_max = half_trace + torch.sqrt(torch.clamp_min(half_trace * half_trace - det, EIGEN_FLOOR))
    radius = torch.clamp(torch.ceil(RADIUS_SIGMAS * torch.sqrt(lambda_max)), max=MAX_RADIUS)
    mx, my = terms["u"], terms["v"]
    on_screen = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
    keep = _mask(on_screen, radius.dtype) * terms["front"] * terms["det_ok"]
    return (radius * keep).nan_to_num_(0.0).to(torch.int32)  # NaN radius (overflowed covariance) * 0 -> 0


def _to_gaussians(t: Tensor) -> Tensor:
    """Sum a [B, C, N] gradient over the cameras -> [B, 1, N]."""
    return t if t.shape[1] == 1 else t.sum(dim=1, keepdim=True)


def _ewa_backward(terms: dict, cam: dict, grad_means2d: Tensor, grad_conics: Tensor, grad_depths: Tensor):
    """Gradients of (means2d, conics, depths) w.r.t. (means, log_scales, quats): ewa_forward's chain rule written
    out step by step in reverse, on the saved intermediates. Mirrors the forward exactly, including the culled
    entries (z = 1 and det = 1 substitutes carry no gradient), so gradcheck holds for every Gaussian."""
    e = terms
    r = cam["r"]
    g_u, g_v = _split_last(grad_means2d)
    g_ca, g_cb, g_cc = _split_last(grad_conics)
    a, b, c, inv_det = e["a"], e["b"], e["c"], e["inv_det"]

    # conics = (c, -b, a) / det, det = a c - b^2 (the det = 1 substitute of culled entries has no gradient).
    g_det = torch.addcmul(torch.addcmul(g_ca * c, g_cb, b, value=-1), g_cc, a)
    g_det = g_det.mul_(inv_det).mul_(inv_det).mul_(e["det_ok"]).neg_()
    g_a = torch.addcmul(g_cc * inv_det, g_det, c)
    g_c = torch.addcmul(g_ca * inv_det, g_det, a)
    g_b = torch.addcmul(-g_cb * inv_det, g_det, b, value=-2)

    # a = |V0|^2 + 0.3, b = V0.V1, c = |V1|^2 + 0.3
    g_a2, g_c2 = 2 * g_a, 2 * g_c
    v0, v1 = e["v0"], e["v1"]
    g_v0 = [torch.addcmul(g_a2 * v0[k], g_b, v1[k]) for k in range(3)]
    g_v1 = [torch.addcmul(g_c2 * v1[k], g_b, v0[k]) for k in range(3)]

    # V = T M: dT_ij = sum_k dV_ik M_jk, dM_jk = sum_i dV_ik T_ij (summed over cameras)
    mm, t0, t1 = e["mm"], e["t0"], e["t1"]
    g_t0 = [_dot3(g_v0, mm[j]) for j in range(3)]
    g_t1 = [_dot3(g_v1, mm[j]) for j in range(3)]
    g_mm = [[_to_gaussians(torch.addcmul(g_v0[k] * t0[j], g_v1[k], t1[j])) for k in range(3)] for j in range(3)]

    # T0k = j00 r0k + j02 r2k, T1k = j11 r1k + j12 r2k
    g_j00, g_j02 = _dot3(g_t0, r[0]), _dot3(g_t0, r[2])
    g_j11, g_j12 = _dot3(g_t1, r[1]), _dot3(g_t1, r[2])

    # j00 = fx/z, j02 = -fx t_x/z^2 (same for y), u = fx x/z + cx, v = fy y/z + cy; t_x = z clamp(x/z).
    x, y, inv_z, j00, j02, j11, j12 = e["x"], e["y"], e["inv_z"], e["j00"], e["j02"], e["j11"], e["j12"]
    g_x, g_y = g_u * j00, g_v * j11
    g_zs = torch.addcmul(j00 * torch.addcmul(g_j00, g_u, x), j11, torch.addcmul(g_j11, g_v, y))
    g_zs = torch.addcmul(torch.addcmul(g_zs, g_j02, j02, value=2), g_j12, j12, value=2).mul_(inv_z).neg_()
    g_tx, g_ty = -(j00 * inv_z) * g_j02, -(j11 * inv_z) * g_j12
    z_safe = e["z_safe"]
    for g_coord, coord, ratio, g_t in ((g_x, x, e["ratio_x"], g_tx), (g_y, y, e["ratio_y"], g_ty)):
        inside = _mask(ratio == coord / z_safe, g_t.dtype)  # not clamped: t = coord; clamped: t = z * limit
        g_coord.addcmul_(g_t, inside)
        g_zs.addcmul_(g_t * ratio, 1 - inside)
    g_z = torch.addcmul(grad_depths, g_zs, e["front"])  # no gradient through the z = 1 substitute

    # (x, y, z) = R_cw m + t
    g_cam = (g_x, g_y, g_z)
    g_means = [_to_gaussians(_dot3(g_cam, [r[0][j], r[1][j], r[2][j]])) for j in range(3)]

    g_log_scales, g_quats = _scale_rotation_backward(e, g_mm)
    return _stack_last(g_means)[:, 0], _stack_last(g_log_scales)[:, 0], _stack_last(g_quats)[:, 0]


def _scale_rotation_backward(e: dict, g_mm: list[list[Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
    """Per-Gaussian gradients of log_scales and quats ([B, 1, N] components) from those of M = R_q diag(s)."""
    # M_jk = R_jk s_k, s = exp(log_scales)
    rot, s = e["rot_q"], e["s"]
    g_rot = [[g_mm[j][k] * s[k] for k in range(3)] for j in range(3)]
    g_log_scales = [_dot3([g_mm[0][k], g_mm[1][k], g_mm[2][k]], [rot[0][k], rot[1][k], rot[2][k]]).mul_(s[k])
                    for k in range(3)]

    # R(unit quaternion (w, x, y, z)), then the normalization q / |q|
    qw, qx, qy, qz = e["quat_unit"]
    (g00, g01, g02), (g10, g11, g12), (g20, g21, g22) = g_rot
    s01, s02, s12 = g01 + g10, g02 + g20, g12 + g21
    d10, d02, d21 = g10 - g01, g02 - g20, g21 - g12
    g_qw = 2 * _dot3([qz, qy, qx], [d10, d02, d21])
    g_qx = torch.addcmul(2 * _dot3([qy, qz, qw], [s01, s02, d21]), qx, g11 + g22, value=-4)
    g_qy = torch.addcmul(2 * _dot3([qx, qz, qw], [s01, s12, d02]), qy, g00 + g22, value=-4)
    g_qz = torch.addcmul(2 * _dot3([qx, qy, qw], [s02, s12, d10]), qz, g00 + g11, value=-4)
    along = torch.addcmul(_dot3([qx, qy, qz], [g_qx, g_qy, g_qz]), qw, g_qw)
    inv_norm = 1 / e["quat_norm"]
    g_quats = [torch.addcmul(g, q, along, value=-1).mul_(inv_norm) for g, q in
               ((g_qw, qw), (g_qx, qx), (g_qy, qy), (g_qz, qz))]
    return g_log_scales, g_quats


def _flatten(terms: dict) -> tuple[list, list[Tensor]]:
    """Dict of tensors / (nested) lists of tensors -> (structure, flat tensor list) for save_for_backward."""
    names, flat = [], []
    for key, value in terms.items():
        if isinstance(value, Tensor):
            names.append((key, None))
            flat.append(value)
        elif isinstance(value[0], Tensor):
            names.append((key, len(value)))
            flat.extend(value)
        else:
            names.append((key, (len(value), len(value[0]))))
            flat.extend(t for row in value for t in row)
    return names, flat


def _unflatten(names: list, flat: list[Tensor]) -> dict:
    """Inverse of _flatten."""
    terms, pos = {}, 0
    for key, shape in names:
        if shape is None:
            terms[key], pos = flat[pos], pos + 1
        elif isinstance(shape, int):
            terms[key], pos = list(flat[pos:pos + shape]), pos + shape
        else:
            rows, cols = shape
            terms[key] = [list(flat[pos + i * cols:pos + (i + 1) * cols]) for i in range(rows)]
            pos += rows * cols
    return terms


class _EWAProjection(torch.autograd.Function):
    """means, log_scales, quats -> means2d [B, C, N, 2], conics [B, C, N, 3], depths [B, C, N], radii (no grad).
    Camera tensors get no gradient here (project() uses plain autograd when they need one)."""

    @staticmethod
    def forward(ctx, means, log_scales, quats, w2c, k, width, height, near):
        cam = camera_entries(w2c, k, width, height)
        terms = ewa_forward(means, log_scales, quats, cam, near)
        radii = _radii(terms, width, height)
        outputs = (_stack_last([terms.pop("u"), terms.pop("v")]), _stack_last(terms.pop("conics")), terms.pop("z"),
                   radii)
        ctx.mark_non_differentiable(radii)
        names, flat = _flatten(terms)
        ctx.save_for_backward(w2c, k, *flat)  # saved tensors are released by autograd after the backward
        ctx.names, ctx.cam_shape = names, (width, height)
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_means2d, grad_conics, grad_depths, _grad_radii):
        w2c, k, *flat = ctx.saved_tensors
        cam = camera_entries(w2c, k, *ctx.cam_shape)
        grad_means, grad_log_scales, grad_quats = _ewa_backward(_unflatten(ctx.names, flat), cam, grad_means2d,
                                                                grad_conics, grad_depths)
        return grad_means, grad_log_scales, grad_quats, None, None, None, None, None


def project(gaussians: Gaussians, cameras: Cameras) -> Projected:
    """Project B scenes of N Gaussians into their C cameras each (no Python loop over images).

    Camera tensors are cast to the Gaussians' dtype. Culled Gaussians get radius 0; all values stay finite so
    gradients never pick up NaNs from culled entries.
    """
    b, n = gaussians.batch_size, gaussians.num_gaussians
    c = cameras.num_cameras
    dtype = gaussians.means.dtype
    w2c = cameras.world_to_cam.to(dtype)
    k = cameras.K.to(dtype)
    width, height = cameras.width, cameras.height

    if torch.is_grad_enabled() and (w2c.requires_grad or k.requires_grad):
        terms = ewa_forward(gaussians.means, gaussians.log_scales, gaussians.quats,
                            camera_entries(w2c, k, width, height), cameras.near)
        radii = _radii(terms, width, height)
        means2d = torch.stack([terms["u"], terms["v"]], dim=-1)
        conics, depths = torch.stack(terms["conics"], dim=-1), terms["z"]
    else:
        means2d, conics, depths, radii = _EWAProjection.apply(gaussians.means, gaussians.log_scales,
                                                              gaussians.quats, w2c, k, width, height, cameras.near)

    if gaussians.sh.shape[2] == 1:  # degree 0: no view dependence, computed once per Gaussian
        colors = sh_to_color(gaussians.sh[:, None], None).expand(b, c, n, 3)
    else:
        view_dirs = gaussians.means[:, None] - cameras.centers.to(dtype)[:, :, None]  # [B, C, N, 3]
        colors = sh_to_color(gaussians.sh[:, None], view_dirs)
    opacities = gaussians.opacities()[:, None].expand(b, c, n)

    i = b * c
    return Projected(
        means2d=means2d.reshape(i, n, 2),
        conics=conics.reshape(i, n, 3),
        depths=depths.reshape(i, n),
        radii=radii.reshape(i, n),
        opacities=opacities.reshape(i, n),
        colors=colors.reshape(i, n, 3),
    )
