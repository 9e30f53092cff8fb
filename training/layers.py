"""Network building blocks of GSGAN, all with equalized learning rate.

Equalized learning rate: parameters are stored at unit scale (N(0,1) * weight_init / lr_multiplier) and the
He-style gain lr_multiplier / sqrt(fan_in) is applied at run time, so Adam sees every layer at the same scale.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("linear", "lrelu", "gelu")
_GAINS = {"linear": 1.0, "lrelu": math.sqrt(2.0), "gelu": math.sqrt(2.0)}


def apply_activation(x: Tensor, activation: str) -> Tensor:
    """Activation followed by its gain: lrelu = leaky-ReLU(0.2) * sqrt 2, gelu = GELU * sqrt 2, linear = identity."""
    if activation == "linear":
        return x
    if activation == "lrelu":
        return F.leaky_relu(x, 0.2) * _GAINS["lrelu"]
    if activation == "gelu":
        return F.gelu(x) * _GAINS["gelu"]
    raise ValueError(f"training/layers.py: activation must be one of {ACTIVATIONS}, got {activation!r}")


def at_least_fp32(x: Tensor) -> Tensor:
    """Upcast half precision to fp32 for numerically sensitive ops; keep fp32/fp64 as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"training/layers.py: activation must be one of {ACTIVATIONS}, got {activation!r}")


class EqLinear(nn.Module):
    """Fully connected layer with equalized learning rate; works on [..., in_features].

    The initial *effective* bias equals bias_init (stored as bias_init / lr_multiplier).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0, weight_init: float = 1.0):
        super().__init__()
        _check_activation(activation)
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.lr_multiplier = lr_multiplier
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (weight_init / lr_multiplier))
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.lr_multiplier if self.bias is not None else None
        return apply_activation(F.linear(x, w, b), self.activation)

    def linear_params(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """The effective (gain-applied) weight [out, in] and bias [out]: lets callers fold a following gain or
        scale into the weights instead of spending an extra pass over a wide activation tensor."""
        w = self.weight.to(dtype) * self.weight_gain
        return w, (self.bias.to(dtype) * self.lr_multiplier if self.bias is not None else None)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, act={self.activation}, "
                f"lr_mult={self.lr_multiplier}")


class EqConv1x1(nn.Module):
    """1x1 convolution with equalized learning rate on [B, C, N, k] edge tensors (weight stored [out, in, 1, 1])."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, activation: str = "linear",
                 weight_init: float = 1.0):
        super().__init__()
        _check_activation(activation)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1) * weight_init)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return apply_activation(F.conv2d(x, w, b), self.activation)

    def linear_params(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """The effective (gain-applied) weight [out, in] and bias [out], for channel-last use."""
        w = self.weight.to(dtype).flatten(1) * self.weight_gain
        return w, (self.bias.to(dtype) if self.bias is not None else None)

    def apply_linear(self, x: Tensor) -> Tensor:
        """The same layer on channel-last input [..., in] (identical to forward on the permuted tensor)."""
        w, b = self.linear_params(x.dtype)
        return apply_activation(F.linear(x, w, b), self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, act={self.activation}"


class LFF(nn.Module):
    """Learned Fourier features: a *plain* (not equalized) linear layer followed by sin.

    Weight ~ U(+-sqrt(9 / in_features)) (= +-sqrt 3 for xyz input); bias keeps PyTorch's default U(+-1/sqrt(in)).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        bound = math.sqrt(9.0 / in_features)
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.linear(x))


# --------------------------------------------------------------------------------------------------
# Style-conditioned normalization, MLPs and layer scales (point features are [B, L, C], styles w [B, w_dim]).

class AdaNorm(nn.Module):
    """Instance norm over the point axis (fp32, biased std + 1e-8), then x * gamma(w) + beta(w)."""

    def __init__(self, dim: int, w_dim: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.gamma = EqLinear(w_dim, dim, bias_init=1.0)
        self.beta = EqLinear(w_dim, dim, bias_init=0.0)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        xf = at_least_fp32(x)
        mean = xf.mean(dim=1, keepdim=True)
        std = xf.var(dim=1, unbiased=False, keepdim=True).sqrt()
        xn = ((xf - mean) / (std + self.eps)).to(x.dtype)
        return xn * self.gamma(w).unsqueeze(1).to(x.dtype) + self.beta(w).unsqueeze(1).to(x.dtype)


class GeluMLP(nn.Module):
    """width -> hidden_ratio*width (GELU * sqrt 2) -> width, equalized.

    The GELU gain is folded into fc2's weight: the wide hidden tensor is touched once by GELU and once by fc2
    (and, under autograd, only GELU's output is kept for fc2's weight gradient)."""

    def __init__(self, width: int, hidden_ratio: int = 4):
        super().__init__()
        self.fc1 = EqLinear(width, hidden_ratio * width, activation="gelu")
        self.fc2 = EqLinear(hidden_ratio * width, width)

    def forward(self, x: Tensor) -> Tensor:
        w1, b1 = self.fc1.linear_params(x.dtype)
        w2, b2 = self.fc2.linear_params(x.dtype)
        return F.linear(F.gelu(F.linear(x, w1, b1)), w2 * _GAINS["gelu"], b2)


class AdaLayerScale(EqLinear):
    """Per-sample, per-channel residual scale from w; weight and bias start at 0 so residual branches are identities."""

    def __init__(self, w_dim: int, width: int):
        super().__init__(w_dim, width, bias_init=0.0, weight_init=0.0)

    def forward(self, w: Tensor) -> Tensor:  # [B, w_dim] -> [B, 1, width]
        return super().forward(w).unsqueeze(1)


class AdaMLP(nn.Module):
    """x + MLP(AdaNorm(x, w)) * LS(w)."""

    def __init__(self, width: int, w_dim: int):
        super().__init__()
        self.norm = AdaNorm(width, w_dim)
        self.mlp = GeluMLP(width)
        self.scale = AdaLayerScale(w_dim, width)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return torch.addcmul(x, self.mlp(self.norm(x, w)), self.scale(w).to(x.dtype))


class PlainMLP(nn.Module):
    """x + MLP(x) * s with a learnable per-channel s initialised to 0 (no style)."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = GeluMLP(width)
        self.scale = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(x, self.mlp(x), self.scale.to(x.dtype))


# --------------------------------------------------------------------------------------------------
# Level-0 transformer.

class Attention(nn.Module):
    """Multi-head self-attention; the qkv output is viewed as [heads, 3 * head_dim] and split q | k | v per head."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads != 0:
            raise ValueError(f"training/layers.py: Attention width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.qkv = EqLinear(width, 3 * width)
        self.proj = EqLinear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)  # [B, heads, N, 3*hd]
        q, k, v = qkv.split(self.head_dim, dim=-1)
        s = self.head_dim ** -0.25  # applied to q and k separately, as the reference does
        if x.dtype == torch.float32:
            # Same math as the explicit path (softmax of (q s)(k s)^T in fp32); memory-efficient kernels on GPU.
            out = F.scaled_dot_product_attention(q * s, k * s, v, scale=1.0)
        else:
            attn = torch.softmax(at_least_fp32((q * s) @ (k * s).transpose(-2, -1)), dim=-1).to(v.dtype)
            out = attn @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TransformerLayer(nn.Module):
    """x += Attn(AdaNorm1(x, w_a)) * LS1(w_a); x += MLP(AdaNorm2(x, w_m)) * LS2(w_m)."""

    def __init__(self, width: int, num_heads: int, w_dim: int):
        super().__init__()
        self.norm1 = AdaNorm(width, w_dim)
        self.attn = Attention(width, num_heads)
        self.scale1 = AdaLayerScale(w_dim, width)
        self.norm2 = AdaNorm(width, w_dim)
        self.mlp = GeluMLP(width)
        self.scale2 = AdaLayerScale(w_dim, width)

    def forward(self, x: Tensor, w_attn: Tensor, w_mlp: Tensor) -> Tensor:
        x = torch.addcmul(x, self.attn(self.norm1(x, w_attn)), self.scale1(w_attn).to(x.dtype))
        return torch.addcmul(x, self.mlp(self.norm2(x, w_mlp)), self.scale2(w_mlp).to(x.dtype))


# --------------------------------------------------------------------------------------------------
# Edge convolutions (levels >= 1).

class EdgeConv(nn.Module):
    """Edge convolution over a neighbourhood: softmax-weighted sum over k of a value computed from [h_i, h_j - h_i].

    Weight branch (on h_j - h_i): C -> C/2 (lrelu) -> C, softmax over k per channel in fp32.
    Value branch (on the 2C edge feature): 2C -> C (lrelu) -> C.
    The first 1x1 layer of each branch is linear in the edge feature, so it is evaluated once per point and
    gathered (W [h_i, h_j - h_i] = (W_a - W_b) h_i + W_b h_j): same math as per-edge 1x1 convolutions on
    [B, 2C, L, k], with k times fewer multiplications and no 2C-channel edge tensor. The lrelu gains are folded
    into the second layers' weights and the first bias into the per-point term, so every per-edge tensor is
    touched by as few passes as possible.
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels % 2 != 0:
            raise ValueError(f"training/layers.py: EdgeConv needs an even channel count, got {channels}")
        self.channels = channels
        self.weight1 = EqConv1x1(channels, channels // 2, activation="lrelu")
        self.weight2 = EqConv1x1(channels // 2, channels)
        self.value1 = EqConv1x1(2 * channels, channels, activation="lrelu")
        self.value2 = EqConv1x1(channels, channels)

    def forward(self, h: Tensor, gather, center=None) -> Tensor:
        """h [B, L, C] -> [B, L, C]. gather maps a per-point tensor [B, L, D] to its neighbours [..., k, D];
        center maps it to a view [..., 1, D] of the same points that broadcasts against the neighbours
        (default: t.unsqueeze(2), for gather results shaped [B, L, k, D])."""
        center = center or (lambda t: t.unsqueeze(2))
        c = self.channels
        gain = _GAINS["lrelu"]
        w1, b1 = self.weight1.linear_params(h.dtype)
        w2, b2 = self.weight2.linear_params(h.dtype)
        a = F.linear(h, w1)
        logits = F.linear(F.leaky_relu(gather(a) - center(a - b1), 0.2), w2 * gain, b2)
        weight = torch.softmax(at_least_fp32(logits), dim=-2)  # over the k neighbours, per channel
        v1, vb1 = self.value1.linear_params(h.dtype)
        v2, vb2 = self.value2.linear_params(h.dtype)
        mid = F.linear(h, v1[:, :c] - v1[:, c:], vb1)
        value = F.linear(F.leaky_relu(gather(F.linear(h, v1[:, c:])) + center(mid), 0.2), v2 * gain, vb2)
        value = at_least_fp32(value)
        weighted = value.mul_(weight) if not torch.is_grad_enabled() else value * weight
        return weighted.sum(dim=-2).reshape(h.shape).to(h.dtype)


def knn_indices(h: Tensor, k: int) -> Tensor:
    """[B, L, C] -> [B, L, k] indices of the k nearest points in feature space, dropping the first sorted hit (self)."""
    with torch.no_grad():
        hf = at_least_fp32(h.detach())
        sq = hf.square().sum(-1)
        # |h_i|^2 + |h_j|^2 - 2 h_i.h_j in one fused matmul-add (same ranking: row constants do not reorder a row).
        dist = torch.baddbmm(sq.unsqueeze(1), hf, hf.transpose(1, 2), alpha=-2.0).add_(sq.unsqueeze(2))
        k_eff = min(k + 1, h.shape[1])
        idx = dist.topk(k_eff, dim=-1, largest=False, sorted=True).indices
    return idx[..., 1:]


def gather_points(h: Tensor, idx: Tensor) -> Tensor:
    """h [B, L, C], idx [B, L, k] -> [B, L, k, C] (one row gather over the flattened batch)."""
    b, l, c = h.shape
    offsets = torch.arange(b, device=idx.device).view(b, 1, 1) * l
    return h.reshape(b * l, c).index_select(0, (idx + offsets).flatten()).view(b, idx.shape[1], idx.shape[2], c)


def sibling_groups(h: Tensor, group_size: int) -> Tensor:
    """h [B, L, D] -> [B, L/g, 1, g, D]: a broadcast view of each point's g-point group (itself included, in
    order); pair it with sibling_centers, no [B, L, g, D] copy is made."""
    b, l, d = h.shape
    return h.view(b, l // group_size, 1, group_size, d)


def sibling_centers(h: Tensor, group_size: int) -> Tensor:
    """h [B, L, D] -> [B, L/g, g, 1, D]: the points themselves, laid out against sibling_groups."""
    b, l, d = h.shape
    return h.view(b, l // group_size, group_size, 1, d)


class AdaEdgeBlock(nn.Module):
    """x + EdgeConv over the k nearest neighbours (in AdaNorm'd feature space) * LS(w)."""

    def __init__(self, channels: int, w_dim: int, k: int = 16):
        super().__init__()
        self.k = k
        self.norm = AdaNorm(channels, w_dim)
        self.edge = EdgeConv(channels)
        self.scale = AdaLayerScale(w_dim, channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        h = self.norm(x, w)
        idx = knn_indices(h, self.k)
        return torch.addcmul(x, self.edge(h, lambda t: gather_points(t, idx)), self.scale(w).to(x.dtype))


class LocalEdgeBlock(nn.Module):
    """x + EdgeConv over the sibling group (group_size consecutive points, self included) * s; no norm, no style.

    Every output row depends only on its own group, so the block can run on any group-aligned slice of rows."""

    def __init__(self, channels: int, group_size: int = 4):
        super().__init__()
        self.group_size = group_size
        self.edge = EdgeConv(channels)
        self.scale = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        b, l, c = x.shape
        g = self.group_size
        if l % g != 0:
            raise ValueError(f"training/layers.py: LocalEdgeBlock got {l} points, not a multiple of group_size {g}")
        edge = self.edge(x, lambda t: sibling_groups(t, g), lambda t: sibling_centers(t, g))
        return torch.addcmul(x, edge, self.scale.to(x.dtype))


class SubpixelUpsample(nn.Module):
    """[B, L, C_in] -> [B, ratio*L, C_out]; child j of parent l is row ratio*l + j and takes channel slice j.

    Output = (EqLinear_lrelu(x) reshaped + skip(x) repeat-interleaved) / sqrt 2; skip is identity when C_in == C_out.
    Evaluated as lrelu(W x + b) + skip(x) / sqrt 2 (the lrelu gain is sqrt 2), the skip broadcast over the
    children instead of repeated.
    """

    def __init__(self, in_channels: int, out_channels: int, ratio: int = 4):
        super().__init__()
        self.ratio = ratio
        self.out_channels = out_channels
        self.up = EqLinear(in_channels, ratio * out_channels, activation="lrelu")
        self.skip = EqLinear(in_channels, out_channels) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        b, l, _ = x.shape
        w, bias = self.up.linear_params(x.dtype)
        u = F.leaky_relu(F.linear(x, w, bias), 0.2).view(b, l, self.ratio, self.out_channels)
        inv_sqrt2 = 1.0 / math.sqrt(2.0)
        if self.skip is not None:
            ws, bs = self.skip.linear_params(x.dtype)
            s = F.linear(x, ws * inv_sqrt2, bs * inv_sqrt2)
        else:
            s = x * inv_sqrt2
        return (u + s.unsqueeze(2)).view(b, l * self.ratio, self.out_channels)


# --------------------------------------------------------------------------------------------------
# Modulated fully connected layer (background generator).

class ModFC(nn.Module):
    """Style-modulated linear layer: s = affine(w) (bias init 1), y = (x * s) W^T, demodulated or scaled by 1/sqrt(in).

    Then bias, activation, clamp to +-clamp. residual=True: out = y * lambda + x with lambda (init 0.01) per channel.
    """

    def __init__(self, in_features: int, out_features: int, w_dim: int, activation: str = "linear",
                 demodulate: bool = True, residual: bool = False, weight_init: float = 1.0, clamp: float = 256.0,
                 residual_init: float = 0.01):
        super().__init__()
        _check_activation(activation)
        if residual and in_features != out_features:
            raise ValueError(f"training/layers.py: residual ModFC needs in == out, got {in_features} -> {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.demodulate = demodulate
        self.clamp = clamp
        self.affine = EqLinear(w_dim, in_features, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * weight_init)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.residual_scale = nn.Parameter(torch.full([out_features], residual_init)) if residual else None

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x [B, L, in], w [B, w_dim] -> [B, L, out]."""
        styles = self.affine(w).to(x.dtype)  # [B, in]
        weight = self.weight.to(x.dtype)
        y = (x * styles.unsqueeze(1)) @ weight.t()
        if self.demodulate:
            dcoefs = ((weight.unsqueeze(0) * styles.unsqueeze(1)).square().sum(-1) + 1e-8).rsqrt()  # [B, out]
            y = y * dcoefs.unsqueeze(1)
        else:
            y = y * (1.0 / math.sqrt(self.in_features))
        y = apply_activation(y + self.bias.to(x.dtype), self.activation).clamp(-self.clamp, self.clamp)
        if self.residual_scale is not None:
            y = y * self.residual_scale.to(x.dtype) + x
        return y

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, act={self.activation}, demod={self.demodulate}, "
                f"residual={self.residual_scale is not None}")


class ModSubpixelUpsample(nn.Module):
    """Modulated subpixel upsample: (ModFC_lrelu(x) reshaped x ratio + x repeat-interleaved) / sqrt 2, C kept."""

    def __init__(self, channels: int, w_dim: int, ratio: int = 4):
        super().__init__()
        self.ratio = ratio
        self.channels = channels
        self.up = ModFC(channels, ratio * channels, w_dim, activation="lrelu", demodulate=True)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        b, l, c = x.shape
        u = self.up(x, w).reshape(b, l * self.ratio, c)
        return (u + x.repeat_interleave(self.ratio, dim=1)) * (1.0 / math.sqrt(2.0))
