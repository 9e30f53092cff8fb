"""Differentiable 3D Gaussian splatting: batched projection (PyTorch) + tile rasterization (several backends).

Importing this package never compiles or loads an extension; backends load on first use.
"""
from .backends import available_backends
from .cameras import Cameras
from .gaussians import Gaussians
from .ply import read_ply, write_ply
from .render import RenderOutput, render

__all__ = ["Gaussians", "Cameras", "render", "RenderOutput", "available_backends", "write_ply", "read_ply"]
