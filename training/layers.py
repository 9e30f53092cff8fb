"""Network building blocks of GSGAN (§3 of the design spec), all with equalized learning rate.

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

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, act={self.activation}, "
                f"lr_mult={self.lr_multiplier}")
