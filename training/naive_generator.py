"""The naive Gaussian generator: GSGAN's ablation baseline, the same Gaussians without the hierarchy.

The paper's central claim is that the hierarchy (children placed inside their parent's box, scales that shrink
level by level, anchors that regularize the finer levels) is what lets a 3D-Gaussian GAN train. This generator
keeps everything else equal so that comparing the two measures just that: the same mapping network (the same
number of ws), the same number of Gaussians per sample (the hierarchical levels' sum), the same background
generator, the same style-modulated blocks and Gaussian heads, the same rendering. What it drops:

- no hierarchy: one flat set of N learned points (the hierarchical generator's total) is embedded like its level 0
  (learned Fourier features + per-axis lines of its learned positions) and passed through `num_ws` style-modulated
  residual MLP blocks (AdaMLP, one w each); attention over all N points would not fit at the paper's sizes
  (N = 87,296 at FFHQ-256), and attention over a few coarse points is part of the hierarchy;
- no constraints: one linear head per attribute gives every Gaussian's position (xyz_output_scale * head, no tanh,
  no clamp to the scene box, nothing parent-relative), log-scale (log(1 / sqrt(N)) + head, no soft minimum, no
  clipping, nothing monotone), rotation, opacity and colour;
- no anchors: `anchors` is empty, so the kNN and centre regularizers, which act on the hierarchical generator's
  level-0 anchors, have nothing to act on.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from splatting.gaussians import Gaussians
from training.generator import GSGenerator
from training.layers import LFF, AdaMLP, EqLinear
from training.point_generator import ConstPE, GaussianHeads, channel_count, with_identity_quat


class FlatPointGenerator(nn.Module):
    """ws [B, num_ws, w_dim] -> ([N Gaussians as one level], no anchors): the interface of PointGenerator that
    GSGenerator's scene generation and rendering use (num_ws, level_counts, anchor_counts, up_ratio, _xyz,
    view_color_offsets), so everything downstream (render_scene, videos, .ply export, metrics) is shared."""

    def __init__(self, w_dim: int, num_gaussians: int, num_blocks: int, width: int, start_pe: bool = True,
                 compat: bool = False, const_pe_length: int = 512, xyz_output_scale: float = 0.1,
                 opacity_init: float = 0.1, view_dim: int = 32, head_weight_init: dict | None = None):
        super().__init__()
        if num_gaussians < 1 or num_blocks < 1 or width < 2:
            raise ValueError(f"FlatPointGenerator: need num_gaussians >= 1, num_blocks >= 1 and width >= 2, got "
                             f"{num_gaussians}, {num_blocks}, {width}")
        self.w_dim, self.num_ws = w_dim, num_blocks
        self.level_counts, self.anchor_counts = [num_gaussians], []
        self.up_ratio = 1  # GSParams.point_index selects single Gaussians
        self.xyz_output_scale = xyz_output_scale
        self.scale_init = math.log(1.0 / math.sqrt(num_gaussians))
        self.opacity_logit_init = math.log(opacity_init / (1.0 - opacity_init))
        xyz = torch.randn(num_gaussians, 3)
        self._xyz = nn.Parameter(xyz / xyz.square().mean(dim=1, keepdim=True).sqrt() * 0.5)
        self.start_pe = start_pe
        if start_pe:
            self.lff = LFF(3, width // 2)
            self.const_pe = ConstPE(width - width // 2, const_pe_length, compat)
        else:
            self.embed = EqLinear(3, width)
        self.blocks = nn.ModuleList(AdaMLP(width, w_dim) for _ in range(num_blocks))
        self.view_embed = EqLinear(3, view_dim, activation="lrelu")
        self.heads = GaussianHeads(width, view_dim, head_weight_init)

    def initial_points(self) -> Tensor:
        """[N, 3] learned input positions (they only select each point's features; the head places it)."""
        return torch.tanh(self._xyz)

    def forward(self, ws: Tensor, view_dir: Tensor | None) -> tuple[list[Gaussians], list[Gaussians]]:
        """ws [B, >= num_ws, w_dim], view_dir [B, 3] or None (None leaves out the colour's view term: see
        view_color_offsets) -> ([Gaussians [B, N]], [])."""
        if ws.ndim != 3 or ws.shape[1] < self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"FlatPointGenerator: ws must be [B, >={self.num_ws}, {self.w_dim}], "
                             f"got {list(ws.shape)}")
        p = self.initial_points()
        emb = torch.cat([self.lff(p), self.const_pe(p)], dim=-1) if self.start_pe else self.embed(p)
        x = emb.unsqueeze(0).expand(ws.shape[0], -1, -1)
        for j, block in enumerate(self.blocks):
            x = block(x, ws[:, j])
        h = self.heads(x)
        g = Gaussians(means=self.xyz_output_scale * h["xyz"], log_scales=self.scale_init + h["scale"],
                      quats=with_identity_quat(h["rotation"]), opacity_logits=self.opacity_logit_init
                      + h["opacity"].squeeze(-1), sh=h["color"].unsqueeze(2))
        if view_dir is not None:
            g = dataclasses.replace(g, sh=g.sh + self.view_color_offsets(view_dir.to(ws.dtype))[:, 0, None, None])
        return [g], []

    def view_color_offsets(self, view_dir: Tensor) -> Tensor:
        """view_dir [B, 3] -> [B, 1, 3]: the view term of every colour (one level)."""
        return self.heads.view_color(self.view_embed(view_dir)).unsqueeze(1)


class NaiveGenerator(GSGenerator):
    """GSGenerator with its hierarchical point generator replaced by FlatPointGenerator (see the module docstring).

    Takes GSGenerator's constructor arguments, so one training configuration builds either architecture: N =
    num_points * (1 + up_ratio + ... ) over the levels res_end implies, num_ws = the hierarchical point generator's
    (2 per transformer layer, 2 per style-modulated level), width = the channel count of its finest level.
    Arguments that only shape the hierarchy (knn_k, scale_clamp_min, ada_max_points_factor, num_heads) are
    accepted and unused.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)  # validates the sizes, builds the mapping network and the background
        hierarchical, args = self.points, self.init_kwargs
        self.points = FlatPointGenerator(
            w_dim=self.w_dim, num_gaussians=sum(hierarchical.level_counts), num_blocks=hierarchical.num_ws,
            width=channel_count(args["res_end"], args["channel_base"], args["channel_min"], args["channel_max"]),
            start_pe=args["start_pe"], compat=args["compat"], const_pe_length=args["const_pe_length"],
            xyz_output_scale=args["xyz_output_scale"], opacity_init=args["opacity_init"], view_dim=args["view_dim"],
            head_weight_init=args["head_weight_init"])
