"""Feed-forward 3D reconstruction with Gaussians (MVSplat-style base model) and, on top of it, generative
densification (GDM). A sibling of `training/` (the GAN half); both share `splatting/` and `torch_utils/`.

Importing this package is cheap: no model, dataset or extension is loaded until used.
"""
