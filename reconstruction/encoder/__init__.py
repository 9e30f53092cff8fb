"""The MVSplat-style cost-volume encoder: posed context views -> pixel-aligned 3D Gaussians."""
from .errors import EncoderError
from .model import CostVolumeEncoder, EncoderOutput
from .presets import ENCODER_PRESETS, build_encoder
from .sh_rotation import rotate_sh

__all__ = ["CostVolumeEncoder", "EncoderOutput", "EncoderError", "ENCODER_PRESETS", "build_encoder", "rotate_sh"]
