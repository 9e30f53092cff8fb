"""Hierarchical foreground point generator.

Level 0 turns P0 learnable points into features with a style-modulated transformer; every later level
upsamples the previous level's features by `up_ratio` and predicts children of the previous level's anchors.
All outputs are raw (pre-activation) Gaussian parameters; activations live in splatting.Gaussians.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splatting.gaussians import Gaussians
from splatting.projection import quat_to_rotmat
from training.layers import (AdaEdgeBlock, AdaMLP, EqLinear, LFF, LocalEdgeBlock, PlainMLP, SubpixelUpsample,
                             TransformerLayer)

HEAD_DIMS = {"xyz": 3, "scale": 3, "rotation": 4, "color": 3, "opacity": 1}
HEAD_WEIGHT_INIT = {"xyz": 1.0, "scale": 0.1, "rotation": 0.1, "color": 1.0, "opacity": 1.0}
# Output rows of a plain level computed per slice when no graph is recorded: small enough for the 4x-wide MLP
# tensor of a slice to stay in cache, large enough that the per-slice Python work is negligible.
INFERENCE_CHUNK_ROWS = 2048


# --------------------------------------------------------------------------------------------------
# Parameterisation helpers shared with the background generator.

def softmin(a: Tensor, t: float | Tensor) -> Tensor:
    """Smooth min(a, t) = t - softplus(t - a)."""
    return t - F.softplus(t - a)


def box_offset(quats: Tensor, log_scales: Tensor, u: Tensor) -> Tensor:
    """R(q) diag(exp s) u for u in [-1, 1]^3: a point of the Gaussian's box."""
    return (quat_to_rotmat(quats) @ (log_scales.exp() * u).unsqueeze(-1)).squeeze(-1)


def with_identity_quat(d: Tensor) -> Tensor:
    """q_init + d with q_init = (1, 0, 0, 0)."""
    return d + d.new_tensor([1.0, 0.0, 0.0, 0.0])


def make_children(parents: Gaussians, deltas: dict[str, Tensor], percent_dense: float, split_ratio: float,
                  scale_clamp_min: float, scale_clamp_max: float = 0.0) -> Gaussians:
    """Children of (already repeat-interleaved) parents; the hierarchical child rule, identical for anchors and rendered Gaussians.

    Position uses the parent's pre-split scale; a parent whose largest scale exceeds percent_dense is split
    (base log-scale reduced by log split_ratio, clamped to [-100, 0]); the child scale never exceeds the base.
    """
    means = parents.means + box_offset(parents.quats, parents.log_scales, torch.tanh(deltas["xyz"]))
    split = parents.log_scales.exp().amax(dim=-1, keepdim=True) > percent_dense
    base = torch.where(split, (parents.log_scales - math.log(split_ratio)).clamp(-100.0, 0.0), parents.log_scales)
    log_scales = (base + softmin(deltas["scale"], 0.0)).clamp(scale_clamp_min, scale_clamp_max)
    return Gaussians(means=means, log_scales=log_scales, quats=parents.quats + deltas["rotation"],
                     opacity_logits=parents.opacity_logits + deltas["opacity"].squeeze(-1),
                     sh=parents.sh + deltas["color"].unsqueeze(2))


def repeat_children(g: Gaussians, ratio: int) -> Gaussians:
    """Repeat every Gaussian `ratio` times (children of one parent are contiguous)."""
    return g.map(lambda t: t.repeat_interleave(ratio, dim=1))


class GaussianHeads(nn.Module):
    """EqLinear heads for xyz(3), scale(3), rotation(4), colour(3), opacity(1); colour optionally sees [feat, e]."""

    def __init__(self, in_features: int, view_dim: int = 0, weight_init: dict[str, float] | None = None):
        super().__init__()
        inits = dict(HEAD_WEIGHT_INIT, **(weight_init or {}))
        self.in_features, self.view_dim = in_features, view_dim
        for name, dim in HEAD_DIMS.items():
            extra = view_dim if name == "color" else 0
            self.add_module(name, EqLinear(in_features + extra, dim, weight_init=inits[name]))

    def forward(self, x: Tensor, view_embedding: Tensor | None = None) -> dict[str, Tensor]:
        """x [B, L, C] (+ e [B, view_dim]) -> head outputs [B, L, d]; one fused matmul over the point features.

        Without e, colour heads that see a view embedding return their view-independent part: the view term
        view_color(e) is one [B, 3] offset per sample, added by the caller for whichever camera it renders."""
        c = x.shape[-1]
        if c != self.in_features or (view_embedding is not None and self.view_dim == 0):
            raise ValueError(f"GaussianHeads: expected features [..., {self.in_features}] and "
                             f"{'an optional' if self.view_dim else 'no'} view embedding, got {list(x.shape)} and "
                             f"{None if view_embedding is None else list(view_embedding.shape)}")
        weights, biases = [], []
        for name in HEAD_DIMS:
            head = getattr(self, name)
            weights.append(head.weight.to(x.dtype)[:, :c] * head.weight_gain)
            biases.append(head.bias.to(x.dtype) * head.lr_multiplier)
        out = F.linear(x, torch.cat(weights), torch.cat(biases))
        out = dict(zip(HEAD_DIMS, out.split(list(HEAD_DIMS.values()), dim=-1)))
        if view_embedding is not None:
            out["color"] = out["color"] + self.view_color(view_embedding).unsqueeze(1).to(x.dtype)
        return out

    def view_color(self, view_embedding: Tensor) -> Tensor:
        """e [B, view_dim] -> [B, 3]: the colour head's e-part, computed once per sample instead of once per point."""
        head = self.color
        return F.linear(view_embedding, head.weight.to(view_embedding.dtype)[:, self.in_features:] * head.weight_gain)


# --------------------------------------------------------------------------------------------------
# Level-0 positional embedding.

class ConstPE(nn.Module):
    """One learnable feature line per axis, sampled at the point's coordinate, summed over axes / sqrt 3.

    compat=True reproduces the official swapped grid axes: the coordinate lands on the size-1 height axis and
    the width position is fixed at 0, so only the middle entries are used with a (1 - |p|/2) ramp.
    """

    def __init__(self, channels: int, length: int = 512, compat: bool = False):
        super().__init__()
        self.compat = compat
        self.lines = nn.Parameter(torch.randn(3, channels, 1, length))

    def forward(self, p: Tensor) -> Tensor:
        """p [P, 3] in [-1, 1] -> [P, channels]."""
        coord = p.t().unsqueeze(1)  # [3, 1, P]
        zero = torch.zeros_like(coord)
        grid = torch.stack([zero, coord] if self.compat else [coord, zero], dim=-1)  # [3, 1, P, 2] as (x, y)
        sampled = F.grid_sample(self.lines, grid.to(self.lines.dtype), mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # [3, C, 1, P]
        return sampled.sum(dim=0)[:, 0].t() / math.sqrt(3.0)


def channel_count(res: int, channel_base: int, channel_min: int, channel_max: int) -> int:
    return int(min(max(channel_base // res, channel_min), channel_max))


class LevelBlock(nn.Module):
    """Levels >= 1: edge block -> subpixel upsample -> MLP; "ada" blocks take two ws, plain blocks none."""

    def __init__(self, in_channels: int, out_channels: int, ada: bool, w_dim: int, up_ratio: int, knn_k: int):
        super().__init__()
        self.ada = ada
        self.edge = AdaEdgeBlock(in_channels, w_dim, knn_k) if ada else LocalEdgeBlock(in_channels, up_ratio)
        self.up = SubpixelUpsample(in_channels, out_channels, up_ratio)
        self.mlp = AdaMLP(out_channels, w_dim) if ada else PlainMLP(out_channels)

    def forward(self, x: Tensor, w_edge: Tensor | None, w_mlp: Tensor | None) -> Tensor:
        if self.ada:
            return self.mlp(self.up(self.edge(x, w_edge)), w_mlp)
        return self.mlp(self.up(self.edge(x)))


class PointGenerator(nn.Module):
    """ws [B, num_ws, w_dim] + view direction [B, 3] -> per-level rendered Gaussians and anchors (raw parameters).

    Levels are keyed by nominal resolution i = 4, 8, ... < res_end; level l outputs P0 * up_ratio^l Gaussians.
    Block i works at channel(i) -> channel(2i), channel(i) = clamp(channel_base / i, channel_min, channel_max).
    A level uses style-modulated blocks when its output count is <= ada_max_points_factor * P0.
    """

    def __init__(self, w_dim: int = 512, num_points: int = 256, res_end: int = 128, img_resolution: int = 256,
                 up_ratio: int = 4, channel_base: int = 8192, channel_min: int = 128, channel_max: int = 512,
                 num_heads: int = 8, num_transformer_layers: int = 6, knn_k: int = 16, start_pe: bool = True,
                 compat: bool = False, xyz_output_scale: float = 0.1, opacity_init: float = 0.1,
                 scale_clamp_min: float = -8.0, scale_init: float | None = None, percent_dense: float | None = None,
                 split_ratio: float | None = None, view_dim: int = 32, const_pe_length: int = 512,
                 ada_max_points_factor: int = 16, head_weight_init: dict | None = None):
        super().__init__()
        unknown = sorted(set(head_weight_init or {}) - set(HEAD_DIMS))
        if unknown:
            raise ValueError(f"PointGenerator: head_weight_init has unknown head(s) {unknown}; "
                             f"known: {list(HEAD_DIMS)}")
        if res_end < 8 or res_end & (res_end - 1):
            raise ValueError(f"PointGenerator: res_end must be a power of two >= 8, got {res_end}")
        if num_points < 1 or up_ratio < 2:
            raise ValueError(f"PointGenerator: need num_points >= 1 and up_ratio >= 2, got {num_points}, {up_ratio}")
        self.num_points, self.up_ratio, self.w_dim = num_points, up_ratio, w_dim
        self.xyz_output_scale = xyz_output_scale
        self.opacity_logit_init = math.log(opacity_init / (1.0 - opacity_init))
        self.scale_clamp_min = scale_clamp_min
        self.num_levels = int(math.log2(res_end // 4))
        # s_init = s_thr = log(1 / sqrt(P0)); percent_dense = exp(scale_end) = 1 / img_resolution.
        self.scale_init = math.log(1.0 / math.sqrt(num_points)) if scale_init is None else float(scale_init)
        self.percent_dense = 1.0 / img_resolution if percent_dense is None else float(percent_dense)
        if split_ratio is None:  # no children exist when there is a single level; any value is unused
            split_ratio = (math.exp((self.scale_init - math.log(self.percent_dense)) / (self.num_levels - 1))
                           if self.num_levels > 1 else 1.0)
        self.split_ratio = float(split_ratio)

        res = [4 * 2 ** l for l in range(self.num_levels)]
        ch = lambda i: channel_count(i, channel_base, channel_min, channel_max)  # noqa: E731
        self.level_counts = [num_points * up_ratio ** l for l in range(self.num_levels)]
        self.level_ada = [l > 0 and self.level_counts[l] <= ada_max_points_factor * num_points
                          for l in range(self.num_levels)]
        self.num_ws = 2 * num_transformer_layers + 2 * sum(self.level_ada)

        # Level 0: learnable points, embedding, transformer.
        xyz = torch.randn(num_points, 3)
        self._xyz = nn.Parameter(xyz / xyz.square().mean(dim=1, keepdim=True).sqrt() * 0.5)
        width0 = ch(res[0])
        if start_pe:
            self.lff = LFF(3, width0 // 2)
            self.const_pe = ConstPE(width0 - width0 // 2, const_pe_length, compat)
        else:
            self.embed = EqLinear(3, width0)
        self.start_pe = start_pe
        self.transformer = nn.ModuleList(TransformerLayer(width0, num_heads, w_dim)
                                         for _ in range(num_transformer_layers))
        self.level0_proj = EqLinear(width0, ch(2 * res[0])) if ch(2 * res[0]) != width0 else None
        self.blocks = nn.ModuleList(LevelBlock(ch(res[l]), ch(2 * res[l]), self.level_ada[l], w_dim, up_ratio, knn_k)
                                    for l in range(1, self.num_levels))
        # Heads; the last level's anchors would be dead, except level 0 which parents its own render.
        self.view_embed = EqLinear(3, view_dim, activation="lrelu")
        self.render_heads = nn.ModuleList(GaussianHeads(ch(2 * r), view_dim, head_weight_init)
                                          for r in res)
        self.num_anchor_levels = max(self.num_levels - 1, 1)
        self.anchor_heads = nn.ModuleList(GaussianHeads(ch(2 * r), 0, head_weight_init)
                                          for r in res[:self.num_anchor_levels])

    @property
    def anchor_counts(self) -> list[int]:
        return self.level_counts[:self.num_anchor_levels]

    def initial_points(self) -> Tensor:
        """[P0, 3] positions fed to the generator (tanh of the learnable raw points)."""
        return torch.tanh(self._xyz)

    def _level0_features(self, ws: Tensor) -> Tensor:
        p = self.initial_points()
        emb = torch.cat([self.lff(p), self.const_pe(p)], dim=-1) if self.start_pe else self.embed(p)
        x = emb.unsqueeze(0).expand(ws.shape[0], -1, -1)
        for j, layer in enumerate(self.transformer):
            x = layer(x, ws[:, 2 * j], ws[:, 2 * j + 1])
        return self.level0_proj(x) if self.level0_proj is not None else x

    def _level0_gaussians(self, f: Tensor) -> tuple[Gaussians, Gaussians]:
        s0, o0 = self.scale_init, self.opacity_logit_init
        a = self.anchor_heads[0](f)
        anchor = Gaussians(means=torch.tanh(self.xyz_output_scale * a["xyz"]),
                           log_scales=softmin(s0 + a["scale"], s0), quats=with_identity_quat(a["rotation"]),
                           opacity_logits=o0 + a["opacity"].squeeze(-1), sh=a["color"].unsqueeze(2))
        r = self.render_heads[0](f)
        render = Gaussians(means=anchor.means + box_offset(anchor.quats, anchor.log_scales, torch.tanh(r["xyz"])),
                           log_scales=softmin(s0 + r["scale"], s0), quats=with_identity_quat(r["rotation"]),
                           opacity_logits=o0 + r["opacity"].squeeze(-1), sh=r["color"].unsqueeze(2))
        return render, anchor

    def forward(self, ws: Tensor, view_dir: Tensor | None, clamp_xyz: bool = True
                ) -> tuple[list[Gaussians], list[Gaussians]]:
        """ws [B, >= num_ws, w_dim] (first num_ws used), view_dir [B, 3] -> (rendered per level, anchors per level).

        view_dir=None leaves out the colour's view term: add view_color_offsets(view_dir)[:, l] to level l's
        colour coefficients to see it from any direction (how a generated scene is re-rendered for many cameras).
        Rendered positions are hard-clamped to [-1, 1] unless clamp_xyz=False (anchors are never clamped).
        """
        if ws.ndim != 3 or ws.shape[1] < self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"PointGenerator: ws must be [B, >={self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        f = self._level0_features(ws)
        render, anchor = self._level0_gaussians(f)
        rendered, anchors = [render], [anchor]
        w_index = 2 * len(self.transformer)
        for level, block in enumerate(self.blocks, start=1):
            w_edge = w_mlp = None
            if block.ada:
                w_edge, w_mlp = ws[:, w_index], ws[:, w_index + 1]
                w_index += 2
            f, render, anchor = self._grow_level(level, block, f, anchors[-1], w_edge, w_mlp)
            rendered.append(render)
            if anchor is not None:
                anchors.append(anchor)
        if clamp_xyz:
            rendered = [dataclasses.replace(g, means=g.means.clamp(-1.0, 1.0)) for g in rendered]
        if view_dir is not None:
            offsets = self.view_color_offsets(view_dir.to(ws.dtype))
            rendered = [dataclasses.replace(g, sh=g.sh + offsets[:, level, None, None])
                        for level, g in enumerate(rendered)]
        return rendered, anchors

    def view_color_offsets(self, view_dir: Tensor) -> Tensor:
        """view_dir [B, 3] -> [B, num_levels, 3]: what the view direction adds to every colour coefficient of
        each level's rendered Gaussians (anchors and the background have no view term)."""
        e = self.view_embed(view_dir)
        return torch.stack([heads.view_color(e) for heads in self.render_heads], dim=1)

    def _grow_level(self, level: int, block: LevelBlock, f: Tensor, anchor: Gaussians,
                    w_edge: Tensor | None, w_mlp: Tensor | None) -> tuple[Tensor | None, Gaussians, Gaussians | None]:
        """Level >= 1 from the previous level's features and anchors -> (features, rendered, anchors or None).

        Without autograd a plain level, whose every output row depends only on its parent's sibling group, runs
        in group-aligned slices of rows: the same numbers, a fraction of the peak memory (the wide MLP tensors
        exist for one slice at a time) and cache-resident intermediates. The last level's features are dropped.
        """
        rule = dict(percent_dense=self.percent_dense, split_ratio=self.split_ratio,
                    scale_clamp_min=self.scale_clamp_min)
        with_anchor = level < self.num_anchor_levels
        keep_features = level < self.num_levels - 1

        def grow(f_part: Tensor, anchor_part: Gaussians):
            out = block(f_part, w_edge, w_mlp)
            parents = repeat_children(anchor_part, self.up_ratio)
            render = make_children(parents, self.render_heads[level](out), **rule)
            child_anchor = make_children(parents, self.anchor_heads[level](out), **rule) if with_anchor else None
            return (out if keep_features else None), render, child_anchor

        if block.ada or torch.is_grad_enabled():
            return grow(f, anchor)
        group = block.edge.group_size
        rows = max(INFERENCE_CHUNK_ROWS // (self.up_ratio * group), 1) * group  # parent rows per slice
        features, renders, child_anchors = [], [], []
        for start in range(0, f.shape[1], rows):
            out, render, child_anchor = grow(f[:, start:start + rows], anchor.map(lambda t: t[:, start:start + rows]))
            features.append(out)
            renders.append(render)
            child_anchors.append(child_anchor)
        return (torch.cat(features, dim=1) if keep_features else None, Gaussians.cat(renders),
                Gaussians.cat(child_anchors) if with_anchor else None)
