"""Official GSGAN generator state_dict names -> gsgan's, one name at a time (used by official_import.py).

Every official tensor name falls in one of four kinds: a tensor with a gsgan counterpart, a constant buffer that
gsgan computes itself (checked, not loaded), a dead tensor the official forward never reads, or an extra entry
with no role in the generator. A name that fits none of them is a KeyError, so an unknown architecture is never
loaded silently.
"""
from __future__ import annotations

import math
import re

_TRANSFORMER_PARTS = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_qkv": "attn.qkv", "attn.c_proj": "attn.proj",
                      "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2", "ls_1": "scale1", "ls_2": "scale2"}
_EDGE_PARTS = {"conv_w.0": "weight1", "conv_w.1": "weight2", "conv_x.0": "value1", "conv_x.1": "value2"}
_CONSTANTS = ("scale_init", "scale_threshold", "rotation_init", "color_init", "opacity_init")
_HEADS = ("xyz", "scale", "rotation", "color", "opacity")


def _level(block: str) -> int:
    res = int(block)
    if res < 4 or res & (res - 1):
        raise KeyError(block)
    return int(math.log2(res)) - 2


def _modfc(rest: str) -> str:
    """Official ModulatedFullyConnectedLayer parameter -> gsgan ModFC (the residual layerscale is a vector here)."""
    if rest in ("weight", "bias", "affine.weight", "affine.bias"):
        return rest
    if rest == "layerscale":
        return "residual_scale"
    raise KeyError(rest)


def _level_block(level: int, part: int, rest: str) -> str:
    """blocks.block_<i>.<part>.<rest> for i > 4: edge block (0), subpixel upsample (1), MLP (2)."""
    base = f"points.blocks.{level - 1}."
    if part == 0:
        for official, ours in _EDGE_PARTS.items():
            if rest in (f"{official}.weight", f"{official}.bias"):
                return base + f"edge.edge.{ours}.{rest.rsplit('.', 1)[1]}"
        if re.fullmatch(r"norm\.(gamma|beta)\.(weight|bias)", rest):
            return base + "edge." + rest
        if rest in ("ls", "ls.weight", "ls.bias"):
            return base + "edge.scale" + rest[2:]
    elif part == 1:
        match = re.fullmatch(r"(subpixel|res_fc)\.(weight|bias)", rest)
        if match:
            return base + ("up.up." if match.group(1) == "subpixel" else "up.skip.") + match.group(2)
    elif part == 2:
        if re.fullmatch(r"norm\.(gamma|beta)\.(weight|bias)", rest):
            return base + "mlp." + rest
        match = re.fullmatch(r"mlp\.c_(fc|proj)\.(weight|bias)", rest)
        if match:
            return base + f"mlp.mlp.fc{1 if match.group(1) == 'fc' else 2}.{match.group(2)}"
        if rest in ("ls", "ls.weight", "ls.bias"):
            return base + "mlp.scale" + rest[2:]
    raise KeyError(rest)


def map_generator_key(key: str, num_levels: int) -> tuple[str, str | None]:
    """Official G state_dict name -> ("tensor", gsgan name) | ("constant", None) | ("dead", None) | ("extra", None).
    Raises KeyError for a name that has no place in a GSGAN generator."""
    direct = {"_xyz": "points._xyz", "_xyz_bg": "background._xyz_bg", "mapping_network.w_avg":
              "mapping_network.w_avg", "point_gen.conv_in.const_pe.const_pe": "points.const_pe.lines"}
    if key in direct:
        return "tensor", direct[key]
    if key == "dataset_label_std":  # registered by the training loop; no role in the generator
        return "extra", None
    patterns = [
        (r"mapping_network\.embed\.(weight|bias)", lambda m: f"mapping_network.embed.{m[1]}"),
        (r"mapping_network\.fc(\d+)\.(weight|bias)", lambda m: f"mapping_network.layers.{m[1]}.{m[2]}"),
        (r"point_gen\.conv_in\.learnable_pe\.ffm\.linear\.(weight|bias)", lambda m: f"points.lff.linear.{m[1]}"),
        (r"point_gen\.conv_in\.(weight|bias)", lambda m: f"points.embed.{m[1]}"),
        (r"point_gen\.encoder_camera_cond\.(weight|bias)", lambda m: f"points.view_embed.{m[1]}"),
        (r"point_gen\.blocks\.block_4\.0\.resblocks\.(\d+)\.(ln_[12]|attn\.c_qkv|attn\.c_proj|mlp\.c_fc|mlp\.c_proj|"
         r"ls_[12])\.((?:gamma\.|beta\.)?(?:weight|bias))",
         lambda m: f"points.transformer.{m[1]}.{_TRANSFORMER_PARTS[m[2]]}.{m[3]}"),
        (r"point_gen\.blocks\.block_(\d+)\.0\.conv_[wx]\.[01]\.resample_filter", lambda m: None),
        (r"point_gen\.blocks\.block_(\d+)\.([012])\.(.+)",
         lambda m: _level_block(_level(m[1]), int(m[2]), m[3]) if _level(m[1]) > 0 else _fail(m[0])),
        (r"point_gen\.out_layers\.(\w+)\.block_(\d+)\.([01])\.(weight|bias)", lambda m: _head(m, num_levels)),
        (r"point_gen\.camera_dep_affine\.(weight|bias)", lambda m: None),
        (r"point_gen\.(" + "|".join(_CONSTANTS) + ")", lambda m: "constant"),
        (r"point_gen_bg\.conv_in\.ffm\.linear\.(weight|bias)", lambda m: f"background.lff.linear.{m[1]}"),
        (r"point_gen_bg\.network\.block_0\.([01])\.(.+)", lambda m: f"background.trunk0.layers.{m[1]}.{_modfc(m[2])}"),
        (r"point_gen_bg\.network\.block_1\.0\.subpixel\.(.+)", lambda m: f"background.up.up.{_modfc(m[1])}"),
        (r"point_gen_bg\.network\.block_1\.([12])\.(.+)",
         lambda m: f"background.trunk1.layers.{int(m[1]) - 1}.{_modfc(m[2])}"),
        (r"point_gen_bg\.out_layers\.block_0\.xyz\.out_block\.(.+)", lambda m: None),
        (r"point_gen_bg\.out_layers\.block_([01])\.(\w+)\.out_block\.(.+)",
         lambda m: f"background.heads{m[1]}.{m[2]}.{_modfc(m[3])}" if m[2] in _HEADS else _fail(m[0])),
        (r"point_gen_bg\.(" + "|".join(_CONSTANTS) + ")", lambda m: "constant"),
    ]
    for pattern, target in patterns:
        match = re.fullmatch(pattern, key)
        if match:
            ours = target(match)
            if ours is None:
                return "dead", None
            if ours == "constant":
                return "constant", None
            return "tensor", ours
    raise KeyError(key)


def _fail(key):
    raise KeyError(key)


def _head(match, num_levels: int) -> str | None:
    name, level, kind = match[1], _level(match[2]), int(match[3])
    if name not in _HEADS or level >= num_levels:
        raise KeyError(match[0])
    if kind == 0:  # anchor head; the last level's is never used (except with a single level)
        dead = level == num_levels - 1 and num_levels > 1
        return None if dead else f"points.anchor_heads.{level}.{name}.{match[4]}"
    return f"points.render_heads.{level}.{name}.{match[4]}"
