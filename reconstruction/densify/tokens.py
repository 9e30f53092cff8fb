"""Fine-detail tokens: what each context view says about a selected Gaussian, and the cross-attention that turns
them, with the Gaussian's own pixel feature, into the point decoder's input vector.

A token is 8 numbers sampled (bilinear, border padding) at the Gaussian's centre projected into one context
view: the context RGB (3), the coarse render's RGB (3) and alpha (1), and |rendered depth - the centre's
z-depth in that view| (1). They show where the coarse reconstruction differs from the images, which is the
detail the densifier must add. Tokens are detached: they are observations, not a path for gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import project
from .segment import DensifyError
from .selection import CoarseRender

TOKEN_DIM = 8


@torch.no_grad()
def detail_tokens(points: Tensor, context: dict, coarse: CoarseRender) -> Tensor:
    """Tokens [B, P, V, 8] of world points [B, P, 3] in the V context views (see the module docstring)."""
    images = context["image"]
    b, v, _, h, w = images.shape
    if not isinstance(points, Tensor) or points.ndim != 3 or points.shape[0] != b or points.shape[2] != 3:
        got = list(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise DensifyError(f"detail_tokens: points must have shape [{b}, P, 3], got {got}")
    p = points.shape[1]
    dtype = coarse.color.dtype
    uv, z = project(points.detach()[:, None].expand(b, v, p, 3).to(dtype), context["intrinsics"].to(dtype),
                    context["extrinsics"].to(dtype), w, h)                       # [B, V, P, 2], [B, V, P]
    # grid_sample with align_corners=False: -1 and +1 are the outer pixel edges, so u / W maps to 2 u / W - 1.
    grid = uv / uv.new_tensor([w, h]) * 2 - 1
    maps = torch.cat([images.to(dtype), coarse.color, coarse.alpha, coarse.depth], dim=2)   # [B, V, 8, H, W]
    sampled = F.grid_sample(maps.reshape(b * v, TOKEN_DIM, h, w), grid.reshape(b * v, 1, p, 2), mode="bilinear",
                            padding_mode="border", align_corners=False).reshape(b, v, TOKEN_DIM, p)
    depth_gap = (sampled[:, :, 7] - z).abs()
    tokens = torch.cat([sampled[:, :, :7], depth_gap[:, :, None]], dim=2)       # [B, V, 8, P]
    return tokens.permute(0, 3, 1, 2).contiguous()


def _xavier_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear-ReLU-Linear with Xavier-uniform weights and zero biases (the official fine-detail MLPs)."""
    mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
    for layer in (mlp[0], mlp[2]):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return mlp


class DetailCrossAttention(nn.Module):
    """Per selected Gaussian: concat[embed(feature), MLP(cross-attention(query, its V tokens))] -> [M, 2E].

    embed = MLP(F -> E -> E) of the pixel feature; query = LayerNorm(embed); keys and values are the 8-d tokens
    (nn.MultiheadAttention with kdim = vdim = 8, no biases). The official scene model uses one embedding MLP for
    both the query and the concatenated part, as here (E = 160, 16 heads, F = 163)."""

    def __init__(self, feature_dim: int, embed_dim: int = 160, num_heads: int = 16):
        super().__init__()
        if embed_dim % num_heads:
            raise DensifyError(f"detail_dim ({embed_dim}) must be divisible by detail_heads ({num_heads})")
        self.feature_dim, self.embed_dim = int(feature_dim), int(embed_dim)
        self.embed = _xavier_mlp(feature_dim, embed_dim, embed_dim)
        self.query_norm = nn.LayerNorm(embed_dim)
        self.attention = nn.MultiheadAttention(embed_dim, num_heads, bias=False, kdim=TOKEN_DIM, vdim=TOKEN_DIM,
                                               batch_first=True)
        self.out = _xavier_mlp(embed_dim, embed_dim, embed_dim)

    @property
    def out_dim(self) -> int:
        return 2 * self.embed_dim

    def forward(self, features: Tensor, tokens: Tensor) -> Tensor:
        """features [M, F], tokens [M, V, 8] -> [M, 2E]."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise DensifyError(f"DetailCrossAttention: features must have shape [M, {self.feature_dim}], got "
                               f"{list(features.shape)}")
        if tokens.ndim != 3 or tokens.shape[0] != features.shape[0] or tokens.shape[2] != TOKEN_DIM:
            raise DensifyError(f"DetailCrossAttention: tokens must have shape [{features.shape[0]}, V, "
                               f"{TOKEN_DIM}], got {list(tokens.shape)}")
        embedded = self.embed(features)
        query = self.query_norm(embedded)[:, None]
        attended = self.attention(query, tokens, tokens, need_weights=False)[0][:, 0]
        return torch.cat([embedded, self.out(attended)], dim=-1)
