"""Generative densification (GDM-style): a learned module that replaces the encoder's most under-fitted coarse
Gaussians by trees of finer ones in one forward pass. Built from pure-PyTorch blocks (serialization, submanifold
sparse convolution, serialized patch attention, learned masks): no spconv / torch_scatter / torch_geometric
needed, and every operator runs on CPU and CUDA alike."""
from .model import DensifyOutput, GaussianDensifier, densified_counts
from .presets import DENSIFIER_PRESETS, build_densifier
from .segment import DensifyError

__all__ = ["GaussianDensifier", "DensifyOutput", "densified_counts", "DENSIFIER_PRESETS", "build_densifier",
           "DensifyError"]
