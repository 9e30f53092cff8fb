"""GaussianDensifier: the coarse Gaussians of the encoder -> a denser set, in one forward pass (GDM, scene model).

Per context view v of a scene: select the k_num coarse Gaussians of v with the largest view-space positional
gradient (selection.py), give each an input vector from its pixel feature and its fine-detail tokens (tokens.py),
and let the point decoder (decoder.py) replace it by a small tree of finer Gaussians. The result per view is the
decoder's output (leaves of every stage, then the last stage's children) followed by the view's unselected coarse
Gaussians, views concatenated. Top-K and the mask ratios are fixed, so every scene of a batch has the same counts
(densified_counts) and results stay batched [B, N].
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from splatting import Gaussians

from .decoder import PointDecoder, gaussians_from_raw, raw_attributes, raw_dim
from .masks import keep_counts
from .segment import DensifyError
from .selection import Selection, check_k_num, select_gaussians
from .serialization import ORDERS
from .tokens import TOKEN_DIM, DetailCrossAttention, detail_tokens


def densified_counts(num_views: int, height: int, width: int, k_num: int, ratios, upscale) -> dict:
    """Gaussians per stage and in total for one scene of V context views at H x W (exact, the module's rule).

    Returns {"stages": [{"parents", "children", "leaves", "continuing"} per stage, per view],
    "fine_per_view", "coarse_kept_per_view", "per_view", "per_scene"}."""
    k = check_k_num(k_num, height, width)
    if len(ratios) != len(upscale) or not ratios:
        raise DensifyError(f"ratios/upscale: expected one entry per stage each, got {list(ratios)} and "
                           f"{list(upscale)}")
    stages, parents, fine = [], k, 0
    for s, (ratio, factor) in enumerate(zip(ratios, upscale)):
        children = parents * int(factor)
        last = s == len(ratios) - 1
        continuing = 0 if last else int(keep_counts(torch.tensor([children]), float(ratio))[0])
        leaves = children if last else children - continuing
        stages.append({"parents": parents, "children": children, "leaves": leaves, "continuing": continuing})
        fine += leaves
        parents = continuing
    kept = height * width - k
    return {"stages": stages, "fine_per_view": fine, "coarse_kept_per_view": kept, "per_view": fine + kept,
            "per_scene": num_views * (fine + kept)}


@dataclass
class DensifyOutput:
    """gaussians [B, N]: per view, the densified Gaussians then the unselected coarse ones; counts: see
    densified_counts; stage_ids [B, N] int64: 0 = unselected coarse, l = leaves of stage l (1-based; the last
    stage's children carry L); selection: the Selection used; timings: seconds per part of the forward."""

    gaussians: Gaussians
    counts: dict
    stage_ids: Tensor
    selection: Selection
    timings: dict


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise DensifyError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """values [B, N, ...] at index [B, M] -> [B, M, ...]."""
    expanded = index.reshape(*index.shape, *([1] * (values.ndim - 2))).expand(*index.shape, *values.shape[2:])
    return values.gather(1, expanded)


class GaussianDensifier(nn.Module):
    """forward(context, encoder_output, generator=None, backend="auto") -> DensifyOutput; build through
    presets.build_densifier. `generator` (a CPU torch.Generator) drives the order shuffles and stochastic depth
    in training; evaluation is deterministic."""

    def __init__(self, feature_dim: int = 163, sh_degree: int = 3, k_num: int = 30_000, detail_dim: int = 160,
                 detail_heads: int = 16, channels=(320, 256, 128), num_heads=(40, 32, 16), depths=(2, 2, 2),
                 upscale=(2, 2, 2), non_leaf_ratios=(0.5, 0.8, 1.0), grid_size: float = 0.01, patch_size: int = 48,
                 mlp_ratio: float = 4.0, drop_path: float = 0.3, n_frequencies: int = 15,
                 offset_scale: float = 0.1, orders=ORDERS, opacity_split: str = "coverage"):
        self_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in locals().items()
                       if k not in ("self", "__class__")}
        super().__init__()
        self.init_kwargs = self_kwargs
        self.feature_dim = _positive_int("feature_dim", feature_dim)
        self.k_num = _positive_int("k_num", k_num)
        if sh_degree not in (0, 1, 2, 3):
            raise DensifyError(f"sh_degree: expected 0, 1, 2 or 3 (the coarse Gaussians' degree), got {sh_degree!r}")
        self.sh_degree = int(sh_degree)
        if not channels or channels[0] != 2 * detail_dim:
            raise DensifyError(f"channels: the first stage takes concat[feature embedding, detail] = 2 x detail_dim "
                               f"= {2 * detail_dim} channels, got channels={list(channels)}")
        self.ratios, self.upscale = tuple(float(r) for r in non_leaf_ratios), tuple(int(u) for u in upscale)
        self.detail = DetailCrossAttention(feature_dim, detail_dim, detail_heads)
        self.decoder = PointDecoder(channels, num_heads, depths, upscale, non_leaf_ratios, grid_size, patch_size,
                                    mlp_ratio, drop_path, n_frequencies, offset_scale, orders, raw_dim(sh_degree),
                                    opacity_split)

    def counts(self, num_views: int, height: int, width: int) -> dict:
        """densified_counts for this module's k_num, ratios and up-sampling factors."""
        return densified_counts(num_views, height, width, self.k_num, self.ratios, self.upscale)

    def _check(self, context: dict, encoder_output) -> None:
        gaussians, features = getattr(encoder_output, "gaussians", None), getattr(encoder_output, "features", None)
        if not isinstance(gaussians, Gaussians) or not isinstance(features, Tensor):
            raise DensifyError("encoder_output: expected an EncoderOutput (gaussians and features)")
        image = context.get("image") if isinstance(context, dict) else None
        if not isinstance(image, Tensor) or image.ndim != 5:
            raise DensifyError("context.image: expected a tensor of shape [B, V, 3, H, W]")
        b, v, _, h, w = image.shape
        if features.ndim != 5 or tuple(features.shape[:2]) != (b, v) or tuple(features.shape[3:]) != (h, w):
            raise DensifyError(f"encoder_output.features: expected shape [{b}, {v}, F, {h}, {w}], got "
                               f"{list(features.shape)}")
        if features.shape[2] != self.feature_dim:
            raise DensifyError(f"encoder_output.features: the densifier takes feature_dim={self.feature_dim} "
                               f"per-pixel features, the encoder gives {features.shape[2]}")
        if gaussians.sh_degree != self.sh_degree:
            raise DensifyError(f"encoder_output.gaussians: SH degree {gaussians.sh_degree}, the densifier was "
                               f"built for sh_degree={self.sh_degree}")

    def forward(self, context: dict, encoder_output, generator: torch.Generator | None = None,
                backend: str = "auto", profile: bool = False) -> DensifyOutput:
        """Densify `encoder_output` (EncoderOutput of the same context views). profile=True synchronizes CUDA
        before every timestamp so the timings measure work, not kernel launches."""
        self._check(context, encoder_output)
        gaussians, features = encoder_output.gaussians, encoder_output.features
        b, v, f, h, w = features.shape
        sync = profile and gaussians.means.is_cuda
        clock = [time.perf_counter()]

        def tick():
            if sync:
                torch.cuda.synchronize(gaussians.device)
            clock.append(time.perf_counter())

        selection = select_gaussians(gaussians, context, self.k_num, backend)
        tick()
        k, hw = self.k_num, h * w
        flat = selection.index.reshape(b, v * k)
        raw_all = raw_attributes(gaussians)
        means = _gather(gaussians.means, flat)                                  # [B, V K, 3]
        pixel_features = features.permute(0, 1, 3, 4, 2).reshape(b, v * hw, f)
        tokens = detail_tokens(means, context, selection.coarse_render)         # [B, V K, V, 8]
        inputs = self.detail(_gather(pixel_features, flat).reshape(-1, f), tokens.reshape(-1, v, TOKEN_DIM))
        tick()
        decoded = self.decoder(means.reshape(-1, 3), inputs, _gather(raw_all, flat).reshape(b * v * k, -1),
                               num_clouds=b * v, generator=generator)
        tick()
        # The unselected Gaussians of every view, ascending: a stable sort puts the unselected (0) first.
        selected = torch.zeros(b, v * hw, dtype=torch.int8, device=flat.device).scatter_(1, flat, 1)
        rest = torch.sort(selected.reshape(b, v, hw), dim=-1, stable=True).indices[..., :hw - k]
        rest = (rest + (torch.arange(v, device=flat.device) * hw)[None, :, None]).reshape(b, -1)
        fine = decoded.coords.shape[1]
        union_means = torch.cat([decoded.coords.reshape(b, v, fine, 3),
                                 _gather(gaussians.means, rest).reshape(b, v, hw - k, 3)], dim=2)
        union_raw = torch.cat([decoded.raw.reshape(b, v, fine, -1),
                               _gather(raw_all, rest).reshape(b, v, hw - k, -1)], dim=2)
        out = gaussians_from_raw(union_means.reshape(b, -1, 3), union_raw.reshape(b, v * (fine + hw - k), -1))
        stage_ids = torch.cat([decoded.stage, decoded.stage.new_zeros(hw - k)]).repeat(v).expand(b, -1)
        tick()
        counts = {"stages": decoded.stage_counts, "fine_per_view": fine, "coarse_kept_per_view": hw - k,
                  "per_view": fine + hw - k, "per_scene": v * (fine + hw - k)}
        names = ("selection", "tokens", "decoder", "union")
        timings = {name: clock[i + 1] - clock[i] for i, name in enumerate(names)}
        timings["total"] = clock[-1] - clock[0]
        return DensifyOutput(gaussians=out, counts=counts, stage_ids=stage_ids, selection=selection,
                             timings=timings)
