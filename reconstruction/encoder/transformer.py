"""Multi-view transformer over 1/4-resolution feature tokens: self-attention within each view, then
cross-attention from each view to all other views, then a feed-forward layer (pre-norm residual blocks).

Cross-view attention lets features of the same 3D point agree before the cost volume compares them. At 256^2 a
view has 4096 tokens; `attn_splits` = s cuts every map into s x s windows and attends within a window (and the
same window of the other views), shifting the windows by half a window on every second layer (Swin-style, with a
mask so tokens that the shift wrapped around the border never attend to each other).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import EncoderError


def other_view_index(num_views: int, device=None) -> Tensor:
    """[V, V-1] long: row i lists the views other than i, in order."""
    full = torch.arange(num_views, device=device)
    return torch.stack([torch.cat([full[:i], full[i + 1:]]) for i in range(num_views)])


def sine_position_encoding(height: int, width: int, channels: int, device=None, dtype=None) -> Tensor:
    """[channels, height, width] fixed 2D sine/cosine encoding (half the channels for y, half for x)."""
    quarter = channels // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1)))
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5)[:, None] * freqs   # [h, q]
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5)[:, None] * freqs    # [w, q]
    enc_y = torch.cat([ys.sin(), ys.cos()], dim=-1)[:, None, :].expand(height, width, 2 * quarter)
    enc_x = torch.cat([xs.sin(), xs.cos()], dim=-1)[None, :, :].expand(height, width, 2 * quarter)
    enc = torch.cat([enc_y, enc_x], dim=-1)
    enc = F.pad(enc, (0, channels - enc.shape[-1]))
    return enc.permute(2, 0, 1).to(dtype or torch.get_default_dtype())


class Attention(nn.Module):
    """Multi-head attention of queries [N, Lq, C] over context tokens [N, Lk, C] (scaled_dot_product_attention)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise EncoderError(f"num_heads: {num_heads} attention heads do not divide the {channels} channels")
        self.num_heads = num_heads
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(channels, 2 * channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        n, lq, c = x.shape
        heads = self.num_heads
        q = self.to_q(x).reshape(n, lq, heads, c // heads).transpose(1, 2)
        k, v = self.to_kv(context).reshape(n, context.shape[1], 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(n, lq, c))


class Windows:
    """Splits maps [B, V, h, w, C] into s x s windows [B*V*s*s, L, C] and back, optionally shifted."""

    def __init__(self, height: int, width: int, splits: int, shifted: bool, device):
        self.height, self.width, self.splits = height, width, splits
        self.win_h, self.win_w = height // splits, width // splits
        self.shift = (self.win_h // 2, self.win_w // 2) if shifted and splits > 1 else (0, 0)
        self.mask = None
        if self.shift != (0, 0):
            # Label the regions that the roll moved across the border; equal labels may attend to each other.
            labels = torch.zeros(height, width, device=device, dtype=torch.long)
            rows = (slice(0, height - self.win_h), slice(height - self.win_h, height - self.shift[0]),
                    slice(height - self.shift[0], height))
            cols = (slice(0, width - self.win_w), slice(width - self.win_w, width - self.shift[1]),
                    slice(width - self.shift[1], width))
            for i, r in enumerate(rows):
                for j, c in enumerate(cols):
                    labels[r, c] = 3 * i + j
            windows = self._partition(labels[None, None, :, :, None])[..., 0]  # [s*s, L]
            self.mask = windows[:, :, None] == windows[:, None, :]             # [s*s, L, L]

    def _partition(self, x: Tensor) -> Tensor:
        b, v, _, _, c = x.shape
        s = self.splits
        x = x.reshape(b, v, s, self.win_h, s, self.win_w, c).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b * v * s * s, self.win_h * self.win_w, c)

    def split(self, x: Tensor) -> Tensor:
        if self.shift != (0, 0):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(2, 3))
        return self._partition(x)

    def merge(self, windows: Tensor, batch: int, views: int) -> Tensor:
        s, c = self.splits, windows.shape[-1]
        x = windows.reshape(batch, views, s, s, self.win_h, self.win_w, c).permute(0, 1, 2, 4, 3, 5, 6)
        x = x.reshape(batch, views, self.height, self.width, c)
        if self.shift != (0, 0):
            x = torch.roll(x, shifts=self.shift, dims=(2, 3))
        return x

    def attention_mask(self, batch: int, views: int, context_views: int) -> Tensor | None:
        """[B*V*s*s, 1, L, context_views*L] bool (True = may attend), or None when no window was shifted."""
        if self.mask is None:
            return None
        mask = self.mask.repeat(1, 1, context_views)
        return mask.repeat(batch * views, 1, 1)[:, None]


class TransformerLayer(nn.Module):
    """x += SelfAttn(LN x); x += CrossAttn(LN x -> LN x of the other views); x += FFN(LN x)."""

    def __init__(self, channels: int, num_heads: int, ffn_expansion: int = 4):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_ffn = (nn.LayerNorm(channels) for _ in range(3))
        self.self_attention = Attention(channels, num_heads)
        self.cross_attention = Attention(channels, num_heads)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn_expansion * channels), nn.GELU(),
                                 nn.Linear(ffn_expansion * channels, channels))

    def forward(self, x: Tensor, windows: Windows, others: Tensor) -> Tensor:
        """x [B, V, h, w, C] -> same shape; `others` = other_view_index(V)."""
        b, v = x.shape[:2]
        y = windows.split(self.norm_self(x))                                      # [B*V*W, L, C]
        x = x + windows.merge(self.self_attention(y, y, windows.attention_mask(b, v, 1)), b, v)
        y = windows.split(self.norm_cross(x))
        per_view = y.reshape(b, v, -1, *y.shape[1:])                              # [B, V, W, L, C]
        context = per_view[:, others].permute(0, 1, 3, 2, 4, 5)                   # [B, V, W, V-1, L, C]
        context = context.reshape(y.shape[0], -1, y.shape[-1])                    # [B*V*W, (V-1)*L, C]
        x = x + windows.merge(self.cross_attention(y, context, windows.attention_mask(b, v, v - 1)), b, v)
        return x + self.ffn(self.norm_ffn(x))


class MultiViewTransformer(nn.Module):
    """features [B, V, C, h, w] -> [B, V, C, h, w], V >= 2; h and w must be multiples of attn_splits."""

    def __init__(self, channels: int = 128, num_layers: int = 6, num_heads: int = 1, attn_splits: int = 2,
                 ffn_expansion: int = 4):
        super().__init__()
        self.attn_splits = attn_splits
        self.layers = nn.ModuleList(TransformerLayer(channels, num_heads, ffn_expansion) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(channels)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in self.layers:  # residual branches start small so the stack starts close to the identity
            for out in (layer.self_attention.to_out, layer.cross_attention.to_out, layer.ffn[-1]):
                out.weight.data.mul_(1 / math.sqrt(2 * max(num_layers, 1)))

    def forward(self, features: Tensor) -> Tensor:
        b, v, c, h, w = features.shape
        x = features + sine_position_encoding(h, w, c, features.device, features.dtype)
        x = x.permute(0, 1, 3, 4, 2)                                               # [B, V, h, w, C]
        others = other_view_index(v, features.device)
        plain = Windows(h, w, self.attn_splits, False, features.device)
        shifted = Windows(h, w, self.attn_splits, True, features.device)
        for index, layer in enumerate(self.layers):
            x = layer(x, shifted if index % 2 else plain, others)
        return self.norm_out(x).permute(0, 1, 4, 2, 3)
