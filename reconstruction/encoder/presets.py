"""Named encoder configurations: the official RealEstate10K sizes and a CPU-sized one for tests and demos."""
from __future__ import annotations

import inspect

from .errors import EncoderError
from .model import CostVolumeEncoder

ENCODER_PRESETS = {
    # MVSplat's RealEstate10K model: 256^2 input, 2 context views, 128 candidates, 128-channel backbone and cost
    # U-Net, 6 transformer layers, 32-channel refinement, 163-d per-pixel features.
    "re10k": dict(num_candidates=128, backbone_channels=[64, 96, 128], feature_channels=128, backbone_blocks=2,
                  transformer_layers=6, transformer_heads=1, attn_splits=2, ffn_expansion=4,
                  cost_unet_channels=128, cost_unet_mults=[1, 1, 1], cost_unet_blocks=2, cost_unet_heads=4, cost_unet_cross_view=True,
                  refine_channels=32, refine_unet_mults=[1, 1, 2, 2, 4, 4], refine_unet_blocks=2, refine_unet_heads=4,
                  refine_unet_cross_view=False, head_hidden_channels=None, sh_degree=3, color_skip=False,
                  initial_opacity=0.7),
    # The same structure at 64^2 on a CPU: trains in minutes. The pixel colour is added to the DC term so the
    # first renders already look like the inputs.
    "small": dict(num_candidates=32, backbone_channels=[32, 48, 64], feature_channels=64, backbone_blocks=1,
                  transformer_layers=1, transformer_heads=1, attn_splits=1, ffn_expansion=4,
                  cost_unet_channels=32, cost_unet_mults=[1, 2], cost_unet_blocks=1, cost_unet_heads=1, cost_unet_cross_view=False,
                  refine_channels=16, refine_unet_mults=[1, 2, 2], refine_unet_blocks=1, refine_unet_heads=1,
                  refine_unet_cross_view=False, head_hidden_channels=32, sh_degree=1, color_skip=True,
                  initial_opacity=0.7),
}

_VALID_KEYS = tuple(inspect.signature(CostVolumeEncoder.__init__).parameters)[1:]


def build_encoder(preset: str = "re10k", **overrides) -> CostVolumeEncoder:
    """CostVolumeEncoder of a named preset, with any constructor argument overridden."""
    if preset not in ENCODER_PRESETS:
        raise EncoderError(f"encoder preset: unknown name {preset!r}; valid: {', '.join(sorted(ENCODER_PRESETS))}")
    unknown = sorted(set(overrides) - set(_VALID_KEYS))
    if unknown:
        raise EncoderError(f"encoder override: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_VALID_KEYS)}")
    return CostVolumeEncoder(**{**ENCODER_PRESETS[preset], **overrides})
