"""Named densifier configurations, paired by name with the encoder presets (same feature width and SH degree)."""
from __future__ import annotations

import inspect

from .model import GaussianDensifier
from .segment import DensifyError
from .serialization import ORDERS

DENSIFIER_PRESETS = {
    # GDM's RealEstate10K scene model at 256^2 with 2 context views: 30,000 of the 65,536 Gaussians of each view
    # densified by a 3-stage decoder (320/256/128 channels, 40/32/16 heads, 2 blocks each, patches of 48), 2x
    # up-sampling per stage, non-leaf ratios 0.5 and 0.8, grid 0.01 world units; 163-d encoder features
    # embedded to 160 and cross-attended (16 heads) with the 8-d fine-detail tokens.
    "re10k": dict(feature_dim=163, sh_degree=3, k_num=30_000, detail_dim=160, detail_heads=16,
                  channels=[320, 256, 128], num_heads=[40, 32, 16], depths=[2, 2, 2], upscale=[2, 2, 2],
                  non_leaf_ratios=[0.5, 0.8, 1.0], grid_size=0.01, patch_size=48, mlp_ratio=4.0, drop_path=0.3,
                  n_frequencies=15, offset_scale=0.1, orders=list(ORDERS)),
    # The same structure for a CPU at 64^2 next to the small encoder (83-d features, SH degree 1): a quarter of
    # each view's 4,096 Gaussians densified, narrower stages, a grid 4x coarser (a 64^2 pixel is 4x wider).
    "small": dict(feature_dim=83, sh_degree=1, k_num=1024, detail_dim=32, detail_heads=4,
                  channels=[64, 48, 32], num_heads=[4, 4, 2], depths=[2, 2, 2], upscale=[2, 2, 2],
                  non_leaf_ratios=[0.5, 0.8, 1.0], grid_size=0.04, patch_size=48, mlp_ratio=4.0, drop_path=0.3,
                  n_frequencies=15, offset_scale=0.1, orders=list(ORDERS)),
}

_VALID_KEYS = tuple(inspect.signature(GaussianDensifier.__init__).parameters)[1:]


def build_densifier(preset: str, feature_dim: int, /, **overrides) -> GaussianDensifier:
    """GaussianDensifier of a named preset for an encoder with `feature_dim` per-pixel features (the encoder's
    .feature_dim), with any constructor argument overridden. A preset whose feature width differs from the
    encoder's is an error unless feature_dim is overridden too (`feature_dim` is positional-only, so an override
    of the same name lands in `overrides`)."""
    if preset not in DENSIFIER_PRESETS:
        raise DensifyError(f"densifier preset: unknown name {preset!r}; valid: {', '.join(sorted(DENSIFIER_PRESETS))}")
    unknown = sorted(set(overrides) - set(_VALID_KEYS))
    if unknown:
        raise DensifyError(f"densifier override: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_VALID_KEYS)}")
    kwargs = {**DENSIFIER_PRESETS[preset], **overrides}
    if kwargs["feature_dim"] != feature_dim:
        raise DensifyError(f"densifier preset {preset!r}: takes feature_dim={kwargs['feature_dim']} per-pixel "
                           f"features, but the encoder gives feature_dim={feature_dim}; use the matching preset "
                           f"or override feature_dim")
    return GaussianDensifier(**kwargs)
