"""The point decoder: stages of serialized transformer blocks, up-sampling, a Gaussian head and a learned mask.

Every context view's selected Gaussians form one point cloud (all clouds have the same size, so every stage keeps
equal counts per cloud). Stage l, with grid size g_l = grid_size / 2^l:
  (a) serialize the points (space-filling curves at g_l; the order list shuffled with the generator in training,
      fixed in evaluation);
  (b) transformer blocks (PTv3): CPE = submanifold conv + Linear + LayerNorm as a residual, pre-norm serialized
      patch attention (block i uses serialization order i), pre-norm 4x GELU MLP, stochastic depth;
  (c) up-sampling by r_l (upsample.ChildUpsampler): children in a box of half-size c * g_l around the parent;
  (d) Gaussian head (Linear, GELU, Linear): each child's raw attributes = its parent's raw attributes (opacity
      split among the r children: see split_opacity_logit) + the head's prediction, position = parent position +
      offset;
  (e) mask: an MLP score per child; the top non_leaf_ratio of each cloud continue to stage l + 1, the rest are
      leaves, output at this stage. The continuing children's features are multiplied by the straight-through
      mask (value 1, gradient of the per-cloud softmax of the scores), so the render loss reaches the scorer
      through the next stages.
Output: the leaves of every stage plus all children of the last stage.

Our parameterization of (d): "raw" means splatting.Gaussians' stored world-frame values (log_scales, quats,
opacity logit, SH), and the base is the parent's raw values from the first stage on (the coarse Gaussian at stage
0). The official code instead predicts stage 0's attributes outright and runs them through the MVSplat adapter
(camera-relative scales, rotations and SH); our residual form needs no camera, and with the head's last layer
zero-initialized every child starts as a copy of its parent at its offset position, with the parent's opacity split
so that its rendered descendants cover as much alpha as the parent did: the fine render starts where the coarse
render is (0.002 dB apart on the built-in scenes), instead of over-accumulating copies. Stochastic-depth rates follow
the official decoder: linspace(0, drop_path, blocks) reversed (the first block drops the most), each stage's
up-sampling using its last block's rate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from splatting import Gaussians

from .masks import top_ratio_mask
from .patch_attention import PatchPartition, SerializedAttention, patch_partition
from .segment import DensifyError
from .serialization import ORDERS, serialize
from .sparse_conv import NeighbourTable, SubmanifoldConv3d, neighbour_table
from .upsample import ChildUpsampler, drop_path


def raw_dim(sh_degree: int) -> int:
    """Raw attributes per Gaussian: 3 log-scales + 4 quaternion + 1 opacity logit + 3 (degree + 1)^2 SH."""
    return 3 + 4 + 1 + 3 * (sh_degree + 1) ** 2


def raw_attributes(gaussians: Gaussians) -> Tensor:
    """[B, N, raw_dim] concat[log_scales, quats, opacity_logits, sh flattened] of Gaussians [B, N]."""
    b, n = gaussians.batch_size, gaussians.num_gaussians
    return torch.cat([gaussians.log_scales, gaussians.quats, gaussians.opacity_logits[..., None],
                      gaussians.sh.reshape(b, n, -1)], dim=-1)


OPACITY_INDEX = 7  # position of the opacity logit in the raw attributes
SPLIT_RULES = ("coverage", "centre")  # how a parent's opacity is shared among its children: split_opacity_logit
_NEWTON_STEPS = 6  # measured: 4 steps from a / parts reach the root to 2e-15 relative, for any opacity, parts <= 8


def check_split_rule(rule) -> str:
    if rule not in SPLIT_RULES:
        raise DensifyError(f"opacity_split: expected one of {', '.join(SPLIT_RULES)}, got {rule!r}")
    return rule


def _split_coverage(x: Tensor, parts: int) -> tuple[Tensor, Tensor]:
    """(f(x), f'(x)) for opacities x in (0, 1): f(x) = the integral over the image plane of 1 - (1 - x G)^parts,
    G a 2D Gaussian profile (peak 1), in units of G's own integral: the alpha that `parts` co-located Gaussians of
    opacity x cover together. f(x) = sum over j = 1..parts of (1 - (1 - x)^j) / j, f'(x) = (1 - (1 - x)^parts) / x
    (expm1 / log1p keep both exact for tiny x)."""
    log_keep = torch.log1p(-x)
    f = sum(-torch.expm1(j * log_keep) / j for j in range(1, parts + 1))
    return f, -torch.expm1(parts * log_keep) / x


def split_opacity_logit(logit: Tensor, parts: int, rule: str = "coverage") -> Tensor:
    """Logit of the opacity x of each of `parts` children of a Gaussian of opacity a = sigmoid(logit).

    "coverage" (the default): the children stacked at one place cover as much alpha, integrated over the image
    plane, as the parent: f(x) = a (see _split_coverage), so a tree of split Gaussians starts out rendering like
    its root. "centre": they let through what the parent let through at its centre, 1 - (1 - x)^parts = a; their
    tails are then up to `parts` times as opaque as the parent's (a fresh densifier's fine render started 0.2 dB
    below the coarse one on the built-in scenes); densifiers saved before the choice existed use it.
    Coverage is solved by Newton's method from x = a / parts, in float64: f is concave and f(x) <= parts x, so
    the iterates rise monotonically to the root. The last step runs under autograd with x detached, which gives
    the implicit function's gradient dx/da = 1 / f'(x)."""
    check_split_rule(rule)
    if parts == 1:
        return logit
    if rule == "centre":  # in log space: log(1 - a) = logsigmoid(-logit)
        log_keep = torch.nn.functional.logsigmoid(-logit) / parts      # log of each child's (1 - opacity), < 0
        return torch.log(-torch.expm1(log_keep)) - log_keep
    a = torch.sigmoid(logit.double()).clamp_min(1e-200)  # an opacity of exactly 0 has no finite child logit
    with torch.no_grad():
        x = a / parts
        for _ in range(_NEWTON_STEPS - 1):
            f, df = _split_coverage(x, parts)
            x = x + (a - f) / df
    f, df = _split_coverage(x, parts)
    return torch.logit(x + (a - f) / df).to(logit.dtype)


def split_raw(raw: Tensor, parts: int, rule: str = "coverage") -> Tensor:
    """Parent raw attributes [M, A] -> the base of each of its `parts` children [M * parts, A] (repeat, with the
    opacity logit split by `rule`: see split_opacity_logit)."""
    base = raw.clone()
    base[:, OPACITY_INDEX] = split_opacity_logit(raw[:, OPACITY_INDEX], parts, rule)
    return base.repeat_interleave(parts, dim=0)


def gaussians_from_raw(means: Tensor, raw: Tensor) -> Gaussians:
    """Inverse of raw_attributes: Gaussians [B, N] from means [B, N, 3] and raw [B, N, raw_dim]."""
    b, n, a = raw.shape
    log_scales, quats, opacity, sh = raw.split([3, 4, 1, a - 8], dim=-1)
    return Gaussians(means=means, log_scales=log_scales, quats=quats, opacity_logits=opacity[..., 0],
                     sh=sh.reshape(b, n, -1, 3))


@dataclass(frozen=True)
class StageGeometry:
    """Serialization of one stage's points, shared by its blocks: the grid coordinates and neighbour table of
    the CPE convolutions, each order's permutation and inverse, the patch partition (the same for every order:
    it depends only on the per-cloud counts) and the cloud ids."""

    grid_coord: Tensor
    neighbours: NeighbourTable
    order: Tensor
    inverse: Tensor
    partition: PatchPartition
    batch: Tensor


def stage_geometry(coords: Tensor, batch: Tensor, grid_size: float, orders, patch_size: int, shuffle: bool,
                   generator: torch.Generator | None, used: int | None = None) -> StageGeometry:
    """Serialize one stage's points (coords [N, 3] of clouds batch [N]) once for all of its blocks.

    Only the first `used` orders of the (shuffled) list are encoded: block i uses order i modulo their number, so
    a stage of two blocks needs two of the four curves. The shuffle still draws a permutation of the whole list,
    so the orders a block gets do not depend on `used`."""
    orders = tuple(orders)
    if shuffle:
        orders = tuple(orders[i] for i in torch.randperm(len(orders), generator=generator).tolist())
    if used is not None:
        orders = orders[:max(1, int(used))]
    ser = serialize(coords.detach(), batch, grid_size, orders, shuffle=False)
    partition = patch_partition(batch[ser.order[0]], patch_size)
    return StageGeometry(ser.grid_coord, neighbour_table(ser.grid_coord, batch), ser.order, ser.inverse, partition,
                         batch)


class PointBlock(nn.Module):
    """PTv3 block: CPE residual, pre-norm serialized attention, pre-norm MLP (LayerNorms without affine)."""

    def __init__(self, channels: int, num_heads: int, patch_size: int = 48, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, order_index: int = 0):
        super().__init__()
        self.order_index, self.drop_path_rate = int(order_index), float(drop_path_rate)
        self.cpe_conv = SubmanifoldConv3d(channels, channels)
        self.cpe_linear = nn.Linear(channels, channels)
        self.cpe_norm = nn.LayerNorm(channels, elementwise_affine=False)
        self.norm1 = nn.LayerNorm(channels, elementwise_affine=False)
        self.attn = SerializedAttention(channels, num_heads, patch_size)
        self.norm2 = nn.LayerNorm(channels, elementwise_affine=False)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def extra_repr(self) -> str:
        return f"order_index={self.order_index}, drop_path={self.drop_path_rate}"

    def forward(self, feats: Tensor, geometry: StageGeometry, generator: torch.Generator | None = None) -> Tensor:
        cpe = self.cpe_conv(feats, geometry.grid_coord, geometry.batch, geometry.neighbours)
        feats = feats + self.cpe_norm(self.cpe_linear(cpe))
        o = self.order_index % geometry.order.shape[0]
        attended = self.attn(self.norm1(feats), geometry.order[o], geometry.inverse[o], geometry.batch,
                             geometry.partition)
        feats = feats + drop_path(attended, self.drop_path_rate, self.training, generator)
        return feats + drop_path(self.mlp(self.norm2(feats)), self.drop_path_rate, self.training, generator)


@dataclass
class StageOutput:
    """One stage's children (coords [M, 3], raw [M, A], batch [M]) with `non_leaf` [M] bool (True: continues),
    the continuing children's features `next_feats` [M', C_out] (straight-through masked) and the scores [M]
    (None where every child continues)."""

    coords: Tensor
    raw: Tensor
    batch: Tensor
    non_leaf: Tensor
    next_feats: Tensor
    scores: Tensor | None


class DecoderStage(nn.Module):
    """Blocks, up-sampling, Gaussian head and mask of one stage (see the module docstring)."""

    def __init__(self, channels: int, out_channels: int, num_heads: int, depth: int, patch_size: int,
                 mlp_ratio: float, drop_path_rates, upscale: int, non_leaf_ratio: float, n_frequencies: int,
                 offset_scale: float, attribute_dim: int, opacity_split: str = "coverage"):
        super().__init__()
        self.non_leaf_ratio, self.opacity_split = float(non_leaf_ratio), opacity_split
        self.blocks = nn.ModuleList([PointBlock(channels, num_heads, patch_size, mlp_ratio, drop_path_rates[i], i)
                                     for i in range(depth)])
        self.upsample = ChildUpsampler(channels, out_channels, upscale, n_frequencies, offset_scale,
                                       drop_path_rates[-1] if depth else 0.0)
        self.head = nn.Sequential(nn.Linear(out_channels, out_channels), nn.GELU(),
                                  nn.Linear(out_channels, attribute_dim))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.scorer = None
        if self.non_leaf_ratio < 1.0:
            self.scorer = nn.Sequential(nn.Linear(out_channels, out_channels), nn.GELU(),
                                        nn.Linear(out_channels, 1))

    def forward(self, coords: Tensor, feats: Tensor, raw: Tensor, batch: Tensor, geometry: StageGeometry,
                grid_size: float, generator: torch.Generator | None = None) -> StageOutput:
        for block in self.blocks:
            feats = block(feats, geometry, generator)
        child_coords, child_feats, _ = self.upsample(coords, feats, grid_size, generator)
        r = self.upsample.factor
        child_batch = batch.repeat_interleave(r)
        child_raw = split_raw(raw, r, self.opacity_split) + self.head(child_feats)
        if self.scorer is None:
            keep = torch.ones(child_coords.shape[0], dtype=torch.bool, device=coords.device)
            return StageOutput(child_coords, child_raw, child_batch, keep, child_feats, None)
        scores = self.scorer(child_feats)[:, 0]
        mask = top_ratio_mask(scores, child_batch, self.non_leaf_ratio)
        keep = mask.detach() > 0.5
        next_feats = (child_feats * mask[:, None])[keep]
        return StageOutput(child_coords, child_raw, child_batch, keep, next_feats, scores)


@dataclass
class DecoderOutput:
    """Per cloud (rows of the [clouds, n, ...] tensors): coords [clouds, n, 3], raw [clouds, n, A],
    stage [n] int64 (l + 1 for stage l's leaves; L for the last stage's children), and per-stage
    `stage_counts` (children, leaves, continuing per cloud) and `scores` (each stage's mask scores or None)."""

    coords: Tensor
    raw: Tensor
    stage: Tensor
    stage_counts: list
    scores: list


class PointDecoder(nn.Module):
    """Stages of DecoderStage over equal-size clouds; see the module docstring."""

    def __init__(self, channels=(320, 256, 128), num_heads=(40, 32, 16), depths=(2, 2, 2), upscale=(2, 2, 2),
                 non_leaf_ratios=(0.5, 0.8, 1.0), grid_size: float = 0.01, patch_size: int = 48,
                 mlp_ratio: float = 4.0, drop_path: float = 0.3, n_frequencies: int = 15, offset_scale: float = 0.1,
                 orders=ORDERS, attribute_dim: int = raw_dim(3), opacity_split: str = "coverage"):
        super().__init__()
        check_split_rule(opacity_split)
        lengths = {len(channels), len(num_heads), len(depths), len(upscale), len(non_leaf_ratios)}
        if len(lengths) != 1 or not channels:
            raise DensifyError("channels, num_heads, depths, upscale and non_leaf_ratios: expected one entry per "
                               f"stage each, got lengths {len(channels)}, {len(num_heads)}, {len(depths)}, "
                               f"{len(upscale)}, {len(non_leaf_ratios)}")
        for ratio in non_leaf_ratios:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
                raise DensifyError(f"non_leaf_ratios: expected numbers in (0, 1], got {list(non_leaf_ratios)}")
        if non_leaf_ratios[-1] != 1:
            raise DensifyError(f"non_leaf_ratios: the last stage outputs all its children, so its ratio must be "
                               f"1.0, got {list(non_leaf_ratios)}")
        for c, h in zip(channels, num_heads):
            if c % h:
                raise DensifyError(f"channels/num_heads: {c} channels are not divisible by {h} heads")
        if not grid_size > 0:
            raise DensifyError(f"grid_size: expected a positive number (world units), got {grid_size!r}")
        if any(d < 0 for d in depths):
            raise DensifyError(f"depths: expected non-negative block counts, got {list(depths)}")
        self.grid_size, self.orders = float(grid_size), tuple(orders)
        if not self.orders or any(o not in ORDERS for o in self.orders):
            raise DensifyError(f"orders: expected a non-empty list of {', '.join(ORDERS)}, got {list(orders)}")
        self.patch_size = int(patch_size)
        total = sum(depths)
        rates = torch.linspace(0, drop_path, total).tolist()[::-1] if total else []
        stages, start = [], 0
        for s, channel in enumerate(channels):
            out = channels[s + 1] if s + 1 < len(channels) else channel
            stage_rates = rates[start:start + depths[s]] or [0.0]
            stages.append(DecoderStage(channel, out, num_heads[s], depths[s], patch_size, mlp_ratio, stage_rates,
                                       upscale[s], non_leaf_ratios[s], n_frequencies, offset_scale, attribute_dim,
                                       opacity_split))
            start += depths[s]
        self.stages = nn.ModuleList(stages)

    def stage_grid_size(self, stage: int) -> float:
        return self.grid_size / 2 ** stage

    def forward(self, coords: Tensor, feats: Tensor, raw: Tensor, num_clouds: int,
                generator: torch.Generator | None = None) -> DecoderOutput:
        """coords [clouds * n, 3], feats [clouds * n, C_0], raw [clouds * n, A] grouped by cloud (cloud c owns
        rows c*n .. (c+1)*n - 1) -> DecoderOutput."""
        n = coords.shape[0] // num_clouds
        batch = torch.arange(num_clouds, device=coords.device).repeat_interleave(n)
        outputs, leaves, counts, scores = [], [], [], []
        last = len(self.stages) - 1
        for s, stage in enumerate(self.stages):
            grid = self.stage_grid_size(s)
            geometry = stage_geometry(coords, batch, grid, self.orders, self.patch_size, self.training, generator,
                                      used=len(stage.blocks))
            result = stage(coords, feats, raw, batch, geometry, grid, generator)
            children = result.coords.shape[0] // num_clouds
            kept = int(result.non_leaf.sum()) // num_clouds
            if s == last:
                out_coords, out_raw = result.coords, result.raw
            else:
                leaf = ~result.non_leaf
                out_coords, out_raw = result.coords[leaf], result.raw[leaf]
            outputs.append((out_coords.reshape(num_clouds, -1, 3), out_raw.reshape(num_clouds, -1, raw.shape[1])))
            leaves.append(outputs[-1][0].shape[1])
            counts.append({"parents": n, "children": children, "leaves": leaves[-1],
                           "continuing": kept if s < last else 0})
            scores.append(result.scores)
            coords, raw, feats, batch = (result.coords[result.non_leaf], result.raw[result.non_leaf],
                                         result.next_feats, result.batch[result.non_leaf])
            n = kept
        stage_ids = torch.cat([torch.full((count,), s + 1, dtype=torch.int64, device=coords.device)
                               for s, count in enumerate(leaves)])
        return DecoderOutput(coords=torch.cat([c for c, _ in outputs], dim=1),
                             raw=torch.cat([r for _, r in outputs], dim=1), stage=stage_ids,
                             stage_counts=counts, scores=scores)
