"""GSGAN generator: mapping -> hierarchical foreground + background Gaussians -> one batched splatting.render call."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from splatting.backends import BACKENDS
from splatting.gaussians import Gaussians
from training.backdrop import BackdropField, check_backdrop
from training.background import BackgroundGenerator
from training.gs_params import GSParams
from training.mapping import MappingNetwork
from training.point_generator import PointGenerator
from training.precision import check_dtype_name, feature_precision

# Opacity logit used by gs_params.opacity_ones. The official code sets the *logit* to 1 (opacity 0.73); the clean
# mode means what the name says: opacity 0.999 (the rasterizer caps alpha at 0.99 anyway).
OPACITY_ONES_LOGIT_COMPAT = 1.0
OPACITY_ONES_LOGIT_CLEAN = math.log(0.999 / 0.001)
COMPAT_TRUNCATION_CUTOFF = 14  # EG3D leftover used by the official scripts
# Refused at construction, before any parameter is allocated: a configuration (or a snapshot's init_kwargs) asking
# for more Gaussians per sample than this cannot be rendered in any reasonable memory (the paper's FFHQ-512 model
# has about 0.36 M; 16.8 M Gaussians are ~1 GB of raw parameters per sample before any activation).
MAX_GAUSSIANS_PER_SAMPLE = 2 ** 24


def check_backend_name(name) -> str:
    """'auto' or a splatting backend name; ValueError naming the valid ones otherwise."""
    if not isinstance(name, str) or (name != "auto" and name not in BACKENDS):
        raise ValueError(f"backend: unknown name {name!r}; valid: 'auto', {', '.join(map(repr, BACKENDS))}")
    return name


def check_backend_usable(name: str, device) -> str:
    """`name` must be known, available here and able to render `device` tensors; otherwise ValueError with the
    first line of the reason (the CLIs check --backend with this before any rendering)."""
    from splatting.backends import get_backend

    try:
        get_backend(check_backend_name(name), device)
    except RuntimeError as error:
        raise ValueError(str(error).splitlines()[0]) from None
    return name


def _configured_gaussians(num_points, res_end, up_ratio, bg_num_points, bg_up_ratio) -> int | None:
    """Gaussians per sample implied by the constructor arguments (PointGenerator.level_counts: num_points *
    up_ratio^l for l < log2(res_end / 4), plus the background's num_points * (1 + up_ratio)); None when the
    arguments are malformed (the sub-modules then raise their own precise message)."""
    ints = (num_points, res_end, up_ratio, bg_num_points, bg_up_ratio)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or res_end < 8 or up_ratio < 1:
        return None
    levels = max(res_end // 4, 1).bit_length() - 1
    return num_points * sum(up_ratio ** level for level in range(levels)) + max(bg_num_points, 0) * (1 + bg_up_ratio)


@dataclass(frozen=True)
class GeneratedScene:
    """B generated scenes whose colours lack their view term, so that they can be rendered from any number of
    cameras (GSGenerator.render_scene) without running the generator again.

    view_levels: (count, level) runs in Gaussian order: a run of foreground level `level` >= 0 gets that level's
    view colour offset for the camera it is seen from; -1 marks runs without one (anchors, background).
    fixed_view: gs_params.camera_cond, the colour direction is (0, 0, -1) whatever the camera.
    backdrop: the backdrop coefficients [B, F, 3] (training/backdrop.py), or None: black behind the Gaussians.
    """

    gaussians: Gaussians
    anchors: list[Gaussians]
    view_levels: tuple[tuple[int, int], ...]
    fixed_view: bool = False
    backdrop: Tensor | None = None


class GSGenerator(nn.Module):
    """z [B, z_dim], c [B, 25] -> image [B, 3, H, W] in [-1, 1] rendered from Gaussians (see docs/interfaces.md).

    The rasterizer backend is a render-time choice, not part of the model: `synthesis(..., backend=...)` for one
    call, otherwise the `backend` attribute ('auto' after construction and after loading a snapshot; 'auto'
    follows GSGAN_BACKEND, then gsplat on CUDA / cpu on CPU). `rendering_backend` is accepted and ignored: snapshots
    written while the backend was a constructor argument carry it in their init_kwargs.
    """

    def __init__(self, img_resolution: int = 256, z_dim: int = 512, w_dim: int = 512, c_dim: int = 25,
                 num_points: int = 256, res_end: int = 128, up_ratio: int = 4, channel_base: int = 8192,
                 channel_min: int = 128, channel_max: int = 512, num_heads: int = 8, num_transformer_layers: int = 6,
                 knn_k: int = 16, start_pe: bool = True, xyz_output_scale: float = 0.1, opacity_init: float = 0.1,
                 scale_clamp_min: float = -8.0, view_dim: int = 32, const_pe_length: int = 512,
                 ada_max_points_factor: int = 16, head_weight_init: dict | None = None, bg_num_points: int = 2000,
                 bg_radius: float = 3.0, bg_channels: int = 128, bg_up_ratio: int = 4, bg_scale_init: float = -2.0,
                 bg_percent_dense: float = 0.05, bg_split_ratio: float = 2.0 ** (2.0 / 3.0),
                 bg_scale_clamp_min: float = -10.0, near_plane: float = 0.2, compat: bool = False,
                 c_scale: float = 1.0, gen_pose_cond: bool = True, map_depth: int = 2,
                 map_lr_multiplier: float = 0.01, w_avg_beta: float = 0.998,
                 neural_rendering_resolution: int | None = None, backdrop: str = "off",
                 backdrop_color: tuple[float, float, float] = (0.0, 0.0, 0.0), rendering_backend: str = "auto"):
        self_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__", "rendering_backend")}
        backdrop, self_kwargs["backdrop_color"] = check_backdrop(backdrop, backdrop_color)
        if backdrop == "off":  # recorded only when on: generators without one keep their snapshots' init_kwargs
            del self_kwargs["backdrop"], self_kwargs["backdrop_color"]
        total = _configured_gaussians(num_points, res_end, up_ratio, bg_num_points, bg_up_ratio)
        if total is not None and total > MAX_GAUSSIANS_PER_SAMPLE:
            raise ValueError(f"GSGenerator: num_points={num_points}, res_end={res_end}, up_ratio={up_ratio}, "
                             f"bg_num_points={bg_num_points} give {total:,} Gaussians per sample; at most "
                             f"{MAX_GAUSSIANS_PER_SAMPLE:,} are supported")
        super().__init__()
        self.init_kwargs = self_kwargs
        self.backend = "auto"
        self.inference_dtype = "fp32"
        self.img_resolution, self.z_dim, self.w_dim, self.c_dim = img_resolution, z_dim, w_dim, c_dim
        self.compat = compat
        self.near_plane = near_plane
        self.neural_rendering_resolution = neural_rendering_resolution or img_resolution
        self.points = PointGenerator(
            w_dim=w_dim, num_points=num_points, res_end=res_end, img_resolution=img_resolution, up_ratio=up_ratio,
            channel_base=channel_base, channel_min=channel_min, channel_max=channel_max, num_heads=num_heads,
            num_transformer_layers=num_transformer_layers, knn_k=knn_k, start_pe=start_pe, compat=compat,
            xyz_output_scale=xyz_output_scale, opacity_init=opacity_init, scale_clamp_min=scale_clamp_min,
            view_dim=view_dim, const_pe_length=const_pe_length, ada_max_points_factor=ada_max_points_factor,
            head_weight_init=head_weight_init)
        if bg_num_points < 0:
            raise ValueError(f"GSGenerator: bg_num_points must be >= 0 (0 = no background), got {bg_num_points}")
        # bg_num_points=0 builds no background at all: for data whose background is empty (the synthetic `shapes`).
        self.background = BackgroundGenerator(
            w_dim=w_dim, num_points=bg_num_points, radius=bg_radius, channels=bg_channels, up_ratio=bg_up_ratio,
            scale_init=bg_scale_init, opacity_init=opacity_init, percent_dense=bg_percent_dense,
            split_ratio=bg_split_ratio, scale_clamp_min=bg_scale_clamp_min) if bg_num_points > 0 else None
        # The last w drives the background Gaussians and the backdrop (one extra w when either exists).
        self.num_ws = self.points.num_ws + (1 if self.background is not None or backdrop != "off" else 0)
        self.mapping_network = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, num_layers=map_depth,
                                              lr_multiplier=map_lr_multiplier, c_scale=c_scale,
                                              w_avg_beta=w_avg_beta, pose_cond=gen_pose_cond)
        self.backdrop = BackdropField(w_dim, backdrop_color) if backdrop == "field" else None

    @property
    def backend(self) -> str:
        """Rasterizer backend of calls that name none (a runtime setting: never saved in snapshots)."""
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = check_backend_name(name)

    @property
    def inference_dtype(self) -> str:
        """'fp32' or 'bf16': the precision of the point generator's feature networks in calls that name none
        (training/precision.py; a runtime setting like `backend`, never saved)."""
        return self._inference_dtype

    @inference_dtype.setter
    def inference_dtype(self, name: str) -> None:
        self._inference_dtype = check_dtype_name(name)

    # ----------------------------------------------------------------------------------------------
    def gaussian_counts(self) -> dict:
        """Gaussians per sample, from the configuration alone (no forward pass)."""
        levels, anchor_levels = list(self.points.level_counts), list(self.points.anchor_counts)
        background = self.background.num_gaussians if self.background is not None else 0
        return {"levels": levels, "foreground": sum(levels), "anchor_levels": anchor_levels,
                "anchors": sum(anchor_levels), "background": background, "total": sum(levels) + background}

    def mapping(self, z: Tensor, c: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool = False) -> Tensor:
        """-> ws [B, num_ws, w_dim]. truncation_cutoff=None truncates all ws, in both modes: the official mapping
        does too; the official video script's cutoff of 14 (COMPAT_TRUNCATION_CUTOFF) is a choice of the CLIs."""
        return self.mapping_network(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                                    update_emas=update_emas)

    def synthesis(self, ws: Tensor, c: Tensor, neural_rendering_resolution: int | None = None,
                  gs_params: GSParams | None = None, background: bool = True, backend: str | None = None,
                  validate: bool = True, dtype: str | None = None) -> dict:
        """ws [B, num_ws, w_dim], c [B, 25] rendering camera -> dict(image, image_depth, image_alpha, gaussians,
        anchors). background=False (the training schedule's delay) leaves the background generator unused but keeps
        the backdrop; gs_params.disable_background leaves out both (black behind the foreground).
        backend: rasterizer for this call (None = self.backend). validate: see render_scene. dtype: 'fp32' or
        'bf16' feature networks for this call (None = self.inference_dtype; see training/precision.py)."""
        self._check_ws(ws)
        if c.ndim != 2 or c.shape != (ws.shape[0], 25):
            raise ValueError(f"GSGenerator.synthesis: c must be [B, 25] EG3D labels with B = {ws.shape[0]}, "
                             f"got {list(c.shape)}")
        scene = self.generate_scene(ws, gs_params, background, dtype=dtype)
        out = self.render_scene(scene, c, neural_rendering_resolution, backend, validate=validate)
        return dict(out, anchors=scene.anchors)

    def generate_scene(self, ws: Tensor, gs_params: GSParams | None = None, background: bool = True,
                       dtype: str | None = None) -> GeneratedScene:
        """ws [B, num_ws, w_dim] -> the Gaussians of B scenes without their colours' view term (GeneratedScene).
        dtype: as in synthesis (the Gaussians are float32 either way)."""
        self._check_ws(ws)
        gp = gs_params or GSParams()
        gp.check_for(self.gaussian_counts())
        with feature_precision(self.points, self.inference_dtype if dtype is None else dtype, ws.device):
            levels, anchors = self.points(ws[:, :self.points.num_ws], None)
        foreground, view_levels = self._select_foreground(levels, anchors, gp)
        parts = [foreground]
        if background and not gp.disable_background and self.background is not None:
            parts.append(self.background(ws[:, -1]))
            view_levels += ((parts[-1].num_gaussians, -1),)
        backdrop = self.backdrop(ws[:, -1]) if self.backdrop is not None and not gp.disable_background else None
        return GeneratedScene(Gaussians.cat(parts), anchors, view_levels, gp.camera_cond, backdrop)

    def render_scene(self, scene: GeneratedScene, c: Tensor, neural_rendering_resolution: int | None = None,
                     backend: str | None = None, validate: bool = True) -> dict:
        """Render B generated scenes from c [B, 25] (one camera each) or [B, V, 25] (V cameras each, all B * V
        images in one rasterizer call) -> dict(image [B, (V,) 3, H, W], image_depth, image_alpha [B, (V,) 1, H, W],
        gaussians: what was rendered, with the view colour of each camera; B * V scenes in (b, v) order).
        validate=False skips the value checks of the labels, cameras and Gaussians (each reads tensors back from
        the device); the training loop uses it and checks its losses, gradients and rendered Gaussians for
        non-finite values instead (training.steps.nonfinite_probe)."""
        from splatting import Cameras, render  # the rasterizer is only needed here

        g = scene.gaussians
        b = g.batch_size
        if c.ndim not in (2, 3) or c.shape[0] != b or c.shape[-1] != 25:
            raise ValueError(f"GSGenerator.render_scene: c must be [B, 25] or [B, V, 25] EG3D labels with B = {b}, "
                             f"got {list(c.shape)}")
        labels = c if c.ndim == 3 else c[:, None]
        v = labels.shape[1]
        res = neural_rendering_resolution or self.neural_rendering_resolution
        cameras = Cameras.from_eg3d_labels(labels.to(g.means.dtype), res, res, near=self.near_plane,
                                           compat=self.compat, validate=validate)
        view_dir = cameras.forward.reshape(b * v, 3)
        if scene.fixed_view:
            view_dir = view_dir.new_tensor([0.0, 0.0, -1.0]).expand_as(view_dir)
        offsets = self.points.view_color_offsets(view_dir).view(b, v, 1, -1, 3)  # [B, V, 1, levels, 3]
        sh, start = [], 0
        for count, level in scene.view_levels:  # one [B, V, count, 1, 3] piece per run of one level
            part = g.sh[:, start:start + count].unsqueeze(1)
            sh.append(part + offsets[:, :, :, level, None] if level >= 0 else part.expand(b, v, *part.shape[2:]))
            start += count
        sh = torch.cat(sh, dim=2).reshape(b * v, *g.sh.shape[1:])
        if v == 1:
            seen = dataclasses.replace(g, sh=sh)
        else:
            seen = Gaussians(sh=sh, **{name: getattr(g, name).repeat_interleave(v, dim=0)
                                       for name in ("means", "log_scales", "quats", "opacity_logits")})
        cameras = Cameras(cameras.world_to_cam.reshape(b * v, 1, 4, 4), cameras.K.reshape(b * v, 1, 3, 3),
                          width=res, height=res, near=cameras.near, validate=validate)
        out = render(seen, cameras, background=None,
                     backend=self.backend if backend is None else check_backend_name(backend), validate=validate)
        color, depth, alpha = out.color[:, 0], out.depth[:, 0], out.alpha[:, 0]
        if scene.backdrop is not None:  # render's own (1 - alpha) * background, with a colour per pixel
            backdrop = self.backdrop.image(scene.backdrop.repeat_interleave(v, dim=0), cameras.world_to_cam[:, 0],
                                           cameras.K[:, 0], res, res)
            color = color + (1 - alpha) * backdrop.to(color.dtype)
        if self.compat:  # official depth: sum of w * z (not alpha-normalized), empty pixels set to the image's max
            depth = depth * alpha
            max_depth = depth.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
            depth = torch.where(depth == 0, max_depth, depth)
        shape = (b, v) if c.ndim == 3 else (b,)
        return {"image": (color * 2 - 1).reshape(*shape, *color.shape[1:]),
                "image_depth": depth.reshape(*shape, *depth.shape[1:]),
                "image_alpha": alpha.reshape(*shape, *alpha.shape[1:]), "gaussians": seen}

    def forward(self, z: Tensor, c: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool = False, **synthesis_kwargs) -> dict:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, c, **synthesis_kwargs)

    # ----------------------------------------------------------------------------------------------
    def _check_ws(self, ws: Tensor) -> None:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"GSGenerator.synthesis: ws must be [B, {self.num_ws}, {self.w_dim}], "
                             f"got {list(ws.shape)}")

    def _select_foreground(self, levels: list[Gaussians], anchors: list[Gaussians],
                           gp: GSParams) -> tuple[Gaussians, tuple[tuple[int, int], ...]]:
        """-> (the foreground to render, its (count, view level) runs: see GeneratedScene.view_levels)."""
        source = anchors if gp.visualize_anchor else levels
        keep = gp.res_visualize if gp.res_visualize is not None else tuple(range(len(source)))
        point_index = self._resolve_point_index(gp)
        parts = []
        for level in keep:
            g = source[level]
            if point_index is not None:
                r = self.points.up_ratio ** level
                idx = (point_index.view(-1, 1) * r + torch.arange(r, device=g.device)).flatten()
                g = g.select(idx)
            parts.append(g)
        view_levels = tuple((g.num_gaussians, -1 if gp.visualize_anchor else level) for g, level in zip(parts, keep))
        fg = Gaussians.cat(parts)
        if gp.opacity_ones or gp.visualize_anchor:
            value = OPACITY_ONES_LOGIT_COMPAT if self.compat else OPACITY_ONES_LOGIT_CLEAN
            fg = dataclasses.replace(fg, opacity_logits=torch.full_like(fg.opacity_logits, value))
        if gp.rendering_scale != 0:
            fg = dataclasses.replace(fg, log_scales=fg.log_scales + gp.rendering_scale)
        return fg, view_levels

    def _resolve_point_index(self, gp: GSParams) -> Tensor | None:
        """The initial points whose descendants are kept (gp was checked by GSParams.check_for)."""
        if gp.point_index is None:
            return None
        xyz = self.points._xyz.detach()
        if gp.num_init_near_point is None:
            return torch.tensor(gp.point_index, device=xyz.device)
        dist = (xyz - xyz[gp.point_index[0]]).square().sum(-1)
        return dist.topk(gp.num_init_near_point, largest=False).indices
