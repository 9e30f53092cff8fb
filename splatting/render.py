"""The public entry point: render B scenes of 3D Gaussians, each seen by C cameras, in one call."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .backends import BACKENDS, get_backend
from .cameras import Cameras
from .gaussians import Gaussians
from .projection import project


@dataclass(frozen=True)
class RenderOutput:
    """Rendered images; B scenes x C cameras.

    means2d/radii are filled only with render(..., return_means2d=True): means2d is the screen-space mean
    tensor actually used by the rasterizer (retain_grad() is set, so after backward `means2d.grad` holds the
    view-space positional gradient that densification heuristics read); radii == 0 marks culled Gaussians.
    """

    color: Tensor                  # [B, C, 3, H, W] linear colour, background composited, not clamped above
    depth: Tensor                  # [B, C, 1, H, W] expected view-space depth (0 where alpha == 0)
    alpha: Tensor                  # [B, C, 1, H, W] accumulated opacity
    means2d: Tensor | None = None  # [B, C, N, 2] pixel coordinates
    radii: Tensor | None = None    # [B, C, N] int32 pixel radii


def _validate_inputs(gaussians, cameras, check_values: bool = True) -> None:
    """Types, batch sizes, devices, dtypes and image size always (no device reads); with check_values, also the
    finite values and non-zero quaternions, which read tensors back from the device."""
    if not isinstance(gaussians, Gaussians):
        raise ValueError(f"gaussians: expected a splatting.Gaussians, got {type(gaussians).__name__}")
    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras: expected a splatting.Cameras, got {type(cameras).__name__}")
    if cameras.batch_size != gaussians.batch_size:
        raise ValueError(f"cameras: batch size B = {cameras.batch_size} (world_to_cam [B, C, 4, 4]) does not match "
                         f"gaussians B = {gaussians.batch_size} (means [B, N, 3]); one scene per camera batch entry")
    if cameras.device != gaussians.device:
        raise ValueError(f"cameras: on {cameras.device}, but gaussians are on {gaussians.device}; move both to "
                         f"the same device")
    _check_precision(gaussians, cameras)
    for name in ("width", "height"):
        value = getattr(cameras, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"cameras.{name}: expected a positive int (pixels), got {value!r}")
    if not check_values:
        return
    _validate_gaussians(gaussians)
    if not bool(torch.isfinite(cameras.world_to_cam).all() & torch.isfinite(cameras.K).all()):
        raise ValueError("cameras: world_to_cam or K contains non-finite values (NaN or inf)")


RENDER_DTYPES = (torch.float32, torch.float64)


def _check_precision(gaussians: Gaussians, cameras: Cameras) -> None:
    """Refuse half precision up front: the projection overflows float16 (inverse covariances, depth products) and
    the rasterizers accumulate in the input dtype, so it fails deep inside with an unhelpful overflow error."""
    fields = [(f"gaussians.{name}", getattr(gaussians, name))
              for name in ("means", "log_scales", "quats", "opacity_logits", "sh")]
    for name, tensor in fields + [("cameras.world_to_cam", cameras.world_to_cam), ("cameras.K", cameras.K)]:
        if tensor.dtype not in RENDER_DTYPES:
            raise ValueError(f"{name}: {tensor.dtype} is not supported; render() needs float32 or float64 "
                             f"(convert with gaussians.map(torch.Tensor.float) / cameras.to(dtype=torch.float32))")


def _validate_gaussians(gaussians: Gaussians) -> None:
    """Gaussians.validate() at a fraction of its CPU cost (it runs on every render of the training loop).

    NaN and inf propagate into a per-field min/max, and the smallest squared quaternion norm is compared with a
    margin; only when one of these looks wrong does the full validate() run, which decides and raises the precise
    message. So exactly the inputs that validate() rejects are rejected."""
    with torch.no_grad():
        extremes = [v for t in (gaussians.means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits,
                                gaussians.sh) if t.numel() > 0 for v in torch.aminmax(t.detach())]
        suspicious = bool(extremes) and not bool(torch.isfinite(torch.stack(extremes)).all())
        if not suspicious and gaussians.quats.numel() > 0:
            quats = gaussians.quats.detach()
            squared_norms = quats.square() @ quats.new_ones(4)  # a matrix-vector product: fast on CPU
            suspicious = bool(squared_norms.min() <= 4e-24)  # validate() rejects norm <= 1e-12
    if suspicious:
        gaussians.validate()


class _ColorDepthFeats(torch.autograd.Function):
    """[colors, depth] -> feats [I, N, 4]; torch.cat along a last dimension of 4 is ~3x slower on CPU."""

    @staticmethod
    def forward(ctx, colors, depths):
        feats = colors.new_empty(*colors.shape[:-1], 4)
        feats[..., :3].copy_(colors)
        feats[..., 3].copy_(depths)
        return feats

    @staticmethod
    def backward(ctx, grad_feats):
        return grad_feats[..., :3], grad_feats[..., 3]


def _background(background, gaussians: Gaussians, batch: int, cams: int, check_values: bool = True) -> Tensor | None:
    """[B, C, 3] background colour in the Gaussians' dtype, or None (black)."""
    if background is None:
        return None
    if not isinstance(background, Tensor):
        try:
            background = torch.as_tensor(background, dtype=gaussians.means.dtype, device=gaussians.device)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"background: expected None or a tensor broadcastable to [B, C, 3] = "
                             f"[{batch}, {cams}, 3], got {type(background).__name__}") from None
    if background.device != gaussians.device:
        raise ValueError(f"background: on {background.device}, but gaussians are on {gaussians.device}")
    try:
        if torch.broadcast_shapes(background.shape, (batch, cams, 3)) != (batch, cams, 3):
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"background: expected a tensor broadcastable to [B, C, 3] = [{batch}, {cams}, 3], "
                         f"got shape {list(background.shape)}") from None
    if not background.is_floating_point() or (check_values and not bool(torch.isfinite(background).all())):
        raise ValueError("background: expected finite floating-point colour values (linear RGB, 0..1)")
    return background.to(gaussians.means.dtype).expand(batch, cams, 3)


def render(gaussians: Gaussians, cameras: Cameras, background=None, backend: str = "auto",
           return_means2d: bool = False, validate: bool = True) -> RenderOutput:
    """Render every scene b of `gaussians` from each of its C cameras (one rasterizer call for all B*C images).

    Args:
        gaussians: B scenes of N Gaussians (raw parameters; see splatting.Gaussians).
        cameras: Cameras with world_to_cam [B, C, 4, 4] (OpenCV) and pixel intrinsics K [B, C, 3, 3]; all images
            are cameras.height x cameras.width.
        background: None (black) or a colour tensor broadcastable to [B, C, 3] (linear RGB, 0..1), added as
            (1 - alpha) * background.
        backend: 'auto' (gsplat on CUDA, cpu on CPU; GSGAN_BACKEND overrides) or one of
            'reference', 'cpu', 'gsplat', 'inria'. See splatting.available_backends().
        return_means2d: also return the screen-space means (with retained grad) and radii.
        validate: False skips the checks that read tensor values back from the device (non-finite values,
            zero-norm quaternions, a non-finite background): one host sync each. Only for callers that build the
            inputs themselves and check what comes out, like the training loop, where a non-finite Gaussian gives
            a non-finite loss that stops the run. Types, shapes, devices and dtypes are checked either way.

    Returns:
        RenderOutput(color [B, C, 3, H, W], depth [B, C, 1, H, W], alpha [B, C, 1, H, W]); differentiable
        w.r.t. all Gaussian parameters.

    Example:
        >>> import torch
        >>> from splatting import Gaussians, Cameras, render
        >>> from splatting.cameras import look_at
        >>> B, N, C = 2, 100, 3
        >>> g = Gaussians(means=torch.randn(B, N, 3) * 0.3, log_scales=torch.full((B, N, 3), -3.0),
        ...               quats=torch.randn(B, N, 4), opacity_logits=torch.zeros(B, N), sh=torch.rand(B, N, 1, 3))
        >>> origins = torch.tensor([[0.0, 0, 2.7], [1.0, 0, 2.5], [-1.0, 0, 2.5]]).expand(B, C, 3)
        >>> w2c = torch.linalg.inv(look_at(origins, torch.zeros(3)))
        >>> K = torch.tensor([[4.26 * 64, 0, 32], [0, 4.26 * 64, 32], [0, 0, 1]]).expand(B, C, 3, 3)
        >>> out = render(g, Cameras(w2c, K, width=64, height=64), background=torch.ones(3), backend="reference")
        >>> out.color.shape, out.depth.shape, out.alpha.shape
        (torch.Size([2, 3, 3, 64, 64]), torch.Size([2, 3, 1, 64, 64]), torch.Size([2, 3, 1, 64, 64]))
    """
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
        raise ValueError(f"backend: unknown name {backend!r}; valid: 'auto', {', '.join(map(repr, BACKENDS))}")
    if not isinstance(validate, bool):
        raise ValueError(f"validate: expected True or False, got {validate!r}")
    _validate_inputs(gaussians, cameras, check_values=validate)
    b, c, n = gaussians.batch_size, cameras.num_cameras, gaussians.num_gaussians
    width, height = cameras.width, cameras.height
    bg = _background(background, gaussians, b, c, check_values=validate)
    module = get_backend(backend, gaussians.device)

    means2d_bc = radii_bc = None
    if getattr(module, "PROJECTS_ITSELF", False):
        if return_means2d:
            raise ValueError("return_means2d: not supported by the 'inria' backend (it projects internally); "
                             "use 'gsplat', 'cpu' or 'reference'")
        color, depth, alpha = module.render_images(gaussians, cameras)  # [B, C, ., H, W] each
    else:
        proj = project(gaussians, cameras)
        means2d = proj.means2d
        if return_means2d:
            means2d_bc = means2d.reshape(b, c, n, 2)
            if means2d_bc.requires_grad:
                means2d_bc.retain_grad()
            means2d = means2d_bc.reshape(b * c, n, 2)
            radii_bc = proj.radii.reshape(b, c, n)
        feats = _ColorDepthFeats.apply(proj.colors, proj.depths)  # [I, N, 4]
        if n == 0:  # nothing to rasterize; never hand empty tensors to an extension
            out = feats.new_zeros(b * c, height, width, 4)
            alpha = feats.new_zeros(b * c, height, width, 1)
        else:
            out, alpha = module.rasterize(means2d.contiguous(), proj.conics.contiguous(), feats.contiguous(),
                                          proj.opacities.contiguous(), proj.depths.contiguous(),
                                          proj.radii.contiguous(), width, height)
        out = out.permute(0, 3, 1, 2).reshape(b, c, 4, height, width)
        alpha = alpha.permute(0, 3, 1, 2).reshape(b, c, 1, height, width)
        color, depth_sum = out[:, :, :3], out[:, :, 3:]
        covered = (alpha > 0).to(alpha.dtype)  # a 0/1 mask applied arithmetically (torch.where is slow on CPU)
        depth = depth_sum / torch.addcmul(1 - covered, alpha, covered) * covered  # 0 where alpha == 0
    if bg is not None:
        color = color + (1 - alpha) * bg[..., None, None]
    return RenderOutput(color=color, depth=depth, alpha=alpha, means2d=means2d_bc, radii=radii_bc)
