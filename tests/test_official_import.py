"""Official GSGAN network pickles: safe reading, key mapping, constants, bad inputs, golden compat Gaussians, and
gen_videos.py / calc_metrics.py / import_official.py end to end.

The official code is not needed: `write_official_pickle` writes an EG3D/persistence-style pickle itself. Each
network goes through a `torch_utils.persistence._reconstruct_persistent_obj(meta)` reduce whose meta holds a
module_src string and the module's __dict__ (_parameters / _buffers / _modules, _init_kwargs with an EasyDict and
numpy scalars); torch containers are real ModuleDict / ModuleList objects; the tensors carry the official names
(written here by an inverse map independent of the importer's), the dead keys and the constant buffers.
"""
from __future__ import annotations

import collections
import contextlib
import copyreg
import math
import os
import pickle
import re
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from torch_utils import checkpoint
from torch_utils.checkpoint import SnapshotError
from training import official_import as oi
from training import official_pickle as op
from training.generator import GSGenerator

PERSISTENCE = "torch_utils.persistence"
GOLDEN = os.path.join(os.path.dirname(__file__), "data", "official_compat_golden.pt")
RES = 32
# Three levels: the transformer, one style-modulated level (64 points <= 4 * 16) and one plain level.
TINY = dict(img_resolution=RES, num_points=16, res_end=32, channel_base=256, channel_min=16, channel_max=32,
            num_heads=2, num_transformer_layers=1, knn_k=4, view_dim=8, const_pe_length=16, bg_num_points=24,
            bg_channels=16, w_dim=32, z_dim=32, ada_max_points_factor=4, compat=True)
HEADS = ("xyz", "scale", "rotation", "color", "opacity")
BUFFERS = {"w_avg", "resample_filter", "dataset_label_std", "scale_init", "scale_threshold", "rotation_init",
           "color_init", "opacity_init"}
CONTAINERS = {"blocks", "out_layers", "network", "resblocks", "conv_w", "conv_x"}


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# Writing official-format pickles.

def _block(level: int) -> int:
    return 4 * 2 ** level


def official_name(ours: str) -> str:
    """gsgan state_dict name -> the official GSGenerator's (the inverse of the importer's map, written anew)."""
    fixed = {"points._xyz": "_xyz", "background._xyz_bg": "_xyz_bg", "points.const_pe.lines":
             "point_gen.conv_in.const_pe.const_pe"}
    if ours in fixed:
        return fixed[ours]
    rules = [
        (r"mapping_network\.layers\.(\d+)\.(.+)", lambda m: f"mapping_network.fc{m[1]}.{m[2]}"),
        (r"(mapping_network\..+)", lambda m: m[1]),
        (r"points\.lff\.linear\.(.+)", lambda m: f"point_gen.conv_in.learnable_pe.ffm.linear.{m[1]}"),
        (r"points\.view_embed\.(.+)", lambda m: f"point_gen.encoder_camera_cond.{m[1]}"),
        (r"points\.transformer\.(\d+)\.(\w+)\.(.+)", lambda m: "point_gen.blocks.block_4.0.resblocks."
         f"{m[1]}.{dict(norm1='ln_1', norm2='ln_2', scale1='ls_1', scale2='ls_2').get(m[2], m[2])}."
         f"{dict(qkv='c_qkv', proj='c_proj', fc1='c_fc', fc2='c_proj').get(m[3].split('.')[0], m[3].split('.')[0])}"
         f"{'.' + m[3].split('.', 1)[1] if '.' in m[3] else ''}".replace("..", ".")),
        (r"points\.blocks\.(\d+)\.edge\.edge\.(weight|value)([12])\.(.+)", lambda m: f"point_gen.blocks.block_"
         f"{_block(int(m[1]) + 1)}.0.conv_{'w' if m[2] == 'weight' else 'x'}.{int(m[3]) - 1}.{m[4]}"),
        (r"points\.blocks\.(\d+)\.edge\.norm\.(.+)", lambda m: f"point_gen.blocks.block_{_block(int(m[1]) + 1)}"
         f".0.norm.{m[2]}"),
        (r"points\.blocks\.(\d+)\.edge\.scale(.*)", lambda m: f"point_gen.blocks.block_{_block(int(m[1]) + 1)}.0.ls"
         f"{m[2]}"),
        (r"points\.blocks\.(\d+)\.up\.(up|skip)\.(.+)", lambda m: f"point_gen.blocks.block_{_block(int(m[1]) + 1)}"
         f".1.{'subpixel' if m[2] == 'up' else 'res_fc'}.{m[3]}"),
        (r"points\.blocks\.(\d+)\.mlp\.norm\.(.+)", lambda m: f"point_gen.blocks.block_{_block(int(m[1]) + 1)}"
         f".2.norm.{m[2]}"),
        (r"points\.blocks\.(\d+)\.mlp\.mlp\.fc([12])\.(.+)", lambda m: f"point_gen.blocks.block_"
         f"{_block(int(m[1]) + 1)}.2.mlp.{'c_fc' if m[2] == '1' else 'c_proj'}.{m[3]}"),
        (r"points\.blocks\.(\d+)\.mlp\.scale(.*)", lambda m: f"point_gen.blocks.block_{_block(int(m[1]) + 1)}.2.ls"
         f"{m[2]}"),
        (r"points\.(render|anchor)_heads\.(\d+)\.(\w+)\.(.+)", lambda m: f"point_gen.out_layers.{m[3]}.block_"
         f"{_block(int(m[2]))}.{1 if m[1] == 'render' else 0}.{m[4]}"),
        (r"background\.lff\.linear\.(.+)", lambda m: f"point_gen_bg.conv_in.ffm.linear.{m[1]}"),
        (r"background\.trunk0\.layers\.(\d)\.(.+)", lambda m: f"point_gen_bg.network.block_0.{m[1]}.{m[2]}"),
        (r"background\.up\.up\.(.+)", lambda m: f"point_gen_bg.network.block_1.0.subpixel.{m[1]}"),
        (r"background\.trunk1\.layers\.(\d)\.(.+)", lambda m: f"point_gen_bg.network.block_1.{int(m[1]) + 1}.{m[2]}"),
        (r"background\.heads([01])\.(\w+)\.(.+)", lambda m: f"point_gen_bg.out_layers.block_{m[1]}.{m[2]}"
         f".out_block.{m[3]}"),
    ]
    for pattern, target in rules:
        match = re.fullmatch(pattern, ours)
        if match:
            return target(match).replace("residual_scale", "layerscale")
    raise AssertionError(f"no official name for {ours}")


def official_state(G: GSGenerator) -> dict:
    """The official G state dict of our G: mapped tensors + dead keys + constant buffers + dataset_label_std."""
    out = {}
    for key, value in G.state_dict().items():
        value = value.detach().clone()
        if key.endswith("residual_scale"):
            value = value.view(1, 1, -1)
        out[official_name(key)] = value
    p, last = G.points, G.points.num_levels - 1
    for level in range(1, p.num_levels):
        for conv in ("conv_w.0", "conv_w.1", "conv_x.0", "conv_x.1"):
            f = torch.tensor([1.0, 3.0, 3.0, 1.0])
            out[f"point_gen.blocks.block_{_block(level)}.0.{conv}.resample_filter"] = torch.outer(f, f) / 64
    width = p.render_heads[last].in_features
    for head in HEADS:
        d = 3 if head != "rotation" else 4
        d = 1 if head == "opacity" else d
        out[f"point_gen.out_layers.{head}.block_{_block(last)}.0.weight"] = torch.randn(d, width)
        out[f"point_gen.out_layers.{head}.block_{_block(last)}.0.bias"] = torch.zeros(d)
    out["point_gen.camera_dep_affine.weight"] = torch.randn(p.render_heads[0].in_features, p.view_embed.out_features)
    out["point_gen.camera_dep_affine.bias"] = torch.ones(p.render_heads[0].in_features)
    c = G.background.lff.linear.weight.shape[0]
    for name, shape in (("weight", [3, c]), ("bias", [3]), ("affine.weight", [c, G.w_dim]), ("affine.bias", [c])):
        out[f"point_gen_bg.out_layers.block_0.xyz.out_block.{name}"] = torch.randn(shape)
    s0, logit = math.log(1 / math.sqrt(p.num_points)), math.log(0.1 / 0.9)
    out.update({"point_gen.scale_init": torch.full([3], s0), "point_gen.scale_threshold": torch.full([3], s0),
                "point_gen.rotation_init": torch.tensor([1, 0, 0, 0]), "point_gen.color_init": torch.zeros(3),
                "point_gen.opacity_init": torch.full([1], logit),
                "point_gen_bg.scale_init": torch.full([1, 3], -2.0), "point_gen_bg.scale_threshold":
                    torch.full([1, 3], -2.0), "point_gen_bg.rotation_init": torch.tensor([[1, 0, 0, 0]]),
                "point_gen_bg.color_init": torch.zeros(1, 3), "point_gen_bg.opacity_init": torch.full([1, 1], logit),
                "dataset_label_std": torch.rand(25)})
    return out


@contextlib.contextmanager
def official_globals():
    """Stand-ins for the official torch_utils.persistence and dnnlib.util, so the pickler can name their globals."""
    persistence, util = types.ModuleType(PERSISTENCE), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("only ever pickled")
    _reconstruct_persistent_obj.__module__ = PERSISTENCE
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    easy = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    persistence._reconstruct_persistent_obj, util.EasyDict = _reconstruct_persistent_obj, easy
    saved = {name: sys.modules.get(name) for name in (PERSISTENCE, "dnnlib.util")}
    sys.modules.update({PERSISTENCE: persistence, "dnnlib.util": util})
    try:
        yield easy
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class Persistent:
    """Pickles like an official persistent module: _reconstruct_persistent_obj(meta), source embedded."""

    def __init__(self, class_name: str, state: dict, module_src: str = "import torch\n"):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name,
                    state=self.state)
        return sys.modules[PERSISTENCE]._reconstruct_persistent_obj, (meta,)


def _module_state(params, buffers, modules, **attrs) -> dict:
    state = {"training": False, "_parameters": params, "_buffers": buffers, "_non_persistent_buffers_set": set(),
             "_modules": modules, "_forward_hooks": collections.OrderedDict(), "_init_args": ()}
    state.update(attrs)
    return state


def module_tree(flat: dict, class_name: str, attrs: dict, module_src: str, path: str = ""):
    """Nested official module objects from a flat state dict; attrs: {module path: extra __dict__ entries}."""
    params, buffers, children = collections.OrderedDict(), collections.OrderedDict(), {}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if rest:
            children.setdefault(head, {})[rest] = value
        elif head in BUFFERS:
            buffers[head] = value
        else:
            params[head] = nn.Parameter(value, requires_grad=False)
    for sub in attrs:  # modules without tensors (the attention core)
        if sub.startswith(path) and sub != path:
            head = sub[len(path):].split(".")[0]
            children.setdefault(head, {})
    modules = collections.OrderedDict()
    for name, sub in children.items():
        child_path = f"{path}{name}."
        modules[name] = module_tree(sub, name, attrs, module_src, child_path)
    state = _module_state(params, buffers, modules, **attrs.get(path.rstrip("."), {}))
    name = path.rstrip(".").split(".")[-1]
    if name in CONTAINERS or re.fullmatch(r"block_\d+", name) or name in HEADS:
        listed = name in ("resblocks", "conv_w", "conv_x") or (name.startswith("block_") and "out_layers" not in path)
        container = nn.ModuleList if listed else nn.ModuleDict
        obj = container.__new__(container)
        obj.__dict__.update(state)
        return obj
    return Persistent(class_name, state, module_src)


def custom_options(G: GSGenerator, np_scalars=True) -> dict:
    f = np.float64 if np_scalars else float
    p = G.points
    return {"scale_init": f(math.log(1 / math.sqrt(p.num_points))), "scale_threshold":
            f(math.log(1 / math.sqrt(p.num_points))), "scale_end": f(math.log(1 / G.img_resolution)),
            "scale_init_bg": -2, "scale_threshold_bg": -2, "scale_upsample_reg": 0.0, "xyz_output_scale": 0.1,
            "res_end": 32, "rgb_resolution": 64, "up_ratio": 4, "num_pts": p.num_points, "use_start_pe": True,
            "output_multiplier": 1, "camera_noise_std": 0.0, "use_dir_cond": True}


def generator_object(G: GSGenerator, easy_dict, flat: dict | None = None, class_name="GSGenerator",
                     module_src="import torch\n", custom=None):
    """The official GSGenerator object of our G (or of an explicit flat official state dict)."""
    flat = official_state(G) if flat is None else flat
    rendering = easy_dict(custom_options=easy_dict(custom or custom_options(G)), c_gen_conditioning_zero=False,
                          c_scale=1, ray_start=2.25, ray_end=3.3, avg_camera_radius=2.7, avg_camera_pivot=[0, 0, 0.2])
    kwargs = easy_dict(z_dim=G.z_dim, w_dim=G.w_dim, c_dim=25, img_resolution=np.int64(G.img_resolution),
                       img_channels=3, mapping_kwargs=easy_dict(num_layers=2), rendering_kwargs=rendering,
                       channel_base=32768, channel_max=512, num_fp16_res=0, sr_num_fp16_res=4)
    attrs = {"": {"_init_kwargs": kwargs, "neural_rendering_resolution": G.img_resolution},
             "point_gen.blocks.block_4.0.resblocks.0.attn.attention": {"heads": G.points.transformer[0].attn.num_heads},
             "point_gen.blocks.block_8.0": {"k": G.points.blocks[0].edge.k},
             "point_gen_bg": {"radius": 3, "upsample_ratio": 4, "split_ratio": np.float64(2 ** (2 / 3))},
             "mapping_network.fc0": {"bias_gain": 0.01}, "mapping_network": {"w_avg_beta": 0.998}}
    return module_tree(flat, class_name, attrs, module_src)


def tiny_generator(seed: int = 0) -> GSGenerator:
    torch.manual_seed(seed)
    G = GSGenerator(**TINY).eval().requires_grad_(False)
    with torch.no_grad():  # non-trivial values everywhere, so that a mis-mapped tensor shows
        for value in G.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn_like(value) * 0.05)
    return G


def write_official_pickle(path, G=None, D="ours", flat=None, top=None, **generator_options):
    """An official-format network pickle of G (default: tiny_generator()) at `path`; returns G."""
    G = tiny_generator() if G is None else G
    with official_globals() as easy_dict:
        G_obj = generator_object(G, easy_dict, flat=flat, **generator_options)
        data = {"G": G_obj, "G_ema": G_obj, "augment_pipe": None,
                "training_set_kwargs": easy_dict(path="/data/ffhq512.zip", resolution=RES, xflip=False)}
        if D == "ours":
            from training.discriminator import Discriminator
            torch.manual_seed(1)
            ours = Discriminator(img_resolution=RES, num_fp16_res=0, channel_max=32, cam_hidden=32, pose_feat_dim=8)
            flat_d = {k: v.detach().clone() for k, v in ours.state_dict().items()}
            taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
            flat_d["b32.conv1.resample_filter"] = torch.outer(taps, taps) / 64
            d_kwargs = easy_dict(channel_base=32768, channel_max=32, num_fp16_res=0,
                                 epilogue_kwargs=easy_dict(mbstd_group_size=4))
            data["D"] = module_tree(flat_d, "SingleDiscriminator", {"": {"_init_kwargs": d_kwargs}}, "import torch\n")
        if top is not None:
            data = top(data)
        with open(path, "wb") as handle:
            pickle.dump(data, handle)
    return G


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("official") / "network-snapshot-000000.pkl")
    return path, write_official_pickle(path)


# --------------------------------------------------------------------------------------------------
# Import: every tensor lands, constants checked, dead keys dropped.

def test_every_tensor_lands_where_it_should(official):
    path, G = official
    result = oi.import_network_pickle(path)
    G2 = checkpoint.build_module(result.snapshot["G_ema"])
    ours, theirs = G.state_dict(), G2.state_dict()
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    ema = result.reports[0]
    assert ema.imported and ema.tensors == len(ours) and ema.parameters == sum(p.numel() for p in G.parameters())
    # 4 FIR filters per level-block, the last level's 5 anchor heads, the camera-dependent affine, the background
    # level-0 position head, and the training loop's dataset_label_std.
    assert len(ema.dropped) == 4 * 2 + 10 + 2 + 4 + 1 and "dataset_label_std" in ema.dropped
    assert len(ema.checked) == 10
    assert G2.compat and G2.init_kwargs == dict(G.init_kwargs, neural_rendering_resolution=RES)
    D = result.reports[2]
    assert D.imported and D.dropped == ["b32.conv1.resample_filter"]


def test_options_rebuild_the_same_generator(official):
    from training.config import TrainConfig

    path, G = official
    snap = oi.import_network_pickle(path).snapshot
    cfg = TrainConfig.from_dict(snap["options"])
    assert cfg.compat and cfg.cfg == "ffhq" and cfg.data.path == "/data/ffhq512.zip"
    assert GSGenerator(**cfg.generator_kwargs()).init_kwargs == snap["G_ema"]["init_kwargs"]
    assert snap["imported_from"]["official_options"]["num_pts"] == 16


def test_load_snapshot_accepts_the_pickle_with_a_note(official, capfd):
    path, G = official
    data = checkpoint.load_snapshot(path)
    assert "official network pickle, converted in memory" in capfd.readouterr().err
    assert torch.equal(data["G_ema"].points._xyz, G.points._xyz)


def test_embedded_source_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').close()\nimport os\nos.system('touch {marker}')\n"
    path = str(tmp_path / "src.pkl")
    write_official_pickle(path, module_src=source)
    oi.import_network_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["system", "exec", "getattr"])
def test_malicious_reduce_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            if payload == "system":
                return os.system, (f"touch {marker}",)
            if payload == "exec":
                return exec, (f"open({str(marker)!r}, 'w').close()",)
            return getattr, ("x", "upper")

    path = str(tmp_path / "evil.pkl")
    write_official_pickle(path, top=lambda data: dict(data, training_set_kwargs=Evil()))
    with pytest.raises(SnapshotError, match="refused: the pickle asks for .*nothing was executed"):
        oi.import_network_pickle(path)
    assert not marker.exists()


def test_out_of_bounds_views_and_tensor_states_are_refused(tmp_path):
    class Wide:
        def __reduce__(self):  # a view past the end of its 4-element storage
            return torch._utils._rebuild_tensor_v2, (torch.zeros(4).storage(), 2, (10,), (1,), False,
                                                      collections.OrderedDict())

    path = str(tmp_path / "wide.pkl")
    with open(path, "wb") as handle:
        pickle.dump({"G_ema": Wide()}, handle)
    with pytest.raises(SnapshotError, match="outside its storage"):
        op.read_network_pickle(path)

    class Rebuilt:
        def __reduce__(self):  # a valid tensor, then BUILD with a legacy state that would re-view its storage
            storage = torch.zeros(4).storage()
            return (torch._utils._rebuild_tensor_v2, (storage, 0, (4,), (1,), False, collections.OrderedDict()),
                    (storage, 0, (100,), (1,)))

    with open(path, "wb") as handle:
        pickle.dump({"G_ema": Rebuilt()}, handle)
    with pytest.raises(SnapshotError, match="refused: the pickle sets the state of a Tensor"):
        op.read_network_pickle(path)
    with open(path, "wb") as handle:
        pickle.dump({"x": copyreg._reconstructor}, handle)
    data = op.read_network_pickle(path)  # naming a function is harmless; only calling it on a real class is refused
    assert data["x"] is op._reconstructor


def test_missing_g_ema(tmp_path):
    path = str(tmp_path / "plain.pkl")
    with open(path, "wb") as handle:
        pickle.dump({"G": 1, "D": 2}, handle)
    with pytest.raises(SnapshotError, match=r"not an EG3D/GSGAN network pickle: no G_ema \(keys: D, G\)"):
        oi.import_network_pickle(path)
    with open(path, "wb") as handle:
        pickle.dump([1, 2], handle)
    with pytest.raises(SnapshotError, match="the top level is a list"):
        oi.import_network_pickle(path)


def test_truncated_and_not_a_pickle(official, tmp_path):
    data = open(official[0], "rb").read()
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="truncated or corrupt"):
        oi.import_network_pickle(str(path))
    path.write_bytes(b"")
    with pytest.raises(SnapshotError, match="truncated or corrupt"):
        oi.import_network_pickle(str(path))
    snap = tmp_path / "snap.pkl"
    torch.save({"a": torch.zeros(2)}, str(snap))  # a torch.save file renamed .pkl
    with pytest.raises(SnapshotError, match=str(snap)):
        oi.import_network_pickle(str(snap))


def test_triplane_pickle_is_not_a_gsgan_generator(tmp_path):
    G = tiny_generator()
    path = str(tmp_path / "eg3d.pkl")
    flat = {"backbone.mapping.fc0.weight": torch.zeros(2, 2), "superresolution.block0.conv0.weight": torch.zeros(1)}
    write_official_pickle(path, G=G, flat=flat, class_name="TriPlaneGenerator")
    with pytest.raises(SnapshotError, match=r"G_ema is an EG3D tri-plane generator \(TriPlaneGenerator\), not a "
                                            r"GSGAN generator"):
        oi.import_network_pickle(path)


def _edited(G, edit):
    flat = official_state(G)
    edit(flat)
    return flat


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.update({"point_gen.blocks.block_8.0.mystery.weight": torch.zeros(2)}),
     r"unknown official key\(s\) point_gen\.blocks\.block_8\.0\.mystery\.weight"),
    (lambda f: f.pop("point_gen.blocks.block_8.1.subpixel.weight"),
     r"no tensor for gsgan's points\.blocks\.0\.up\.up\.weight"),
    (lambda f: f.update({"point_gen.blocks.block_8.1.subpixel.weight": torch.zeros(3, 3)}),
     r"mis-shaped key\(s\) point_gen\.blocks\.block_8\.1\.subpixel\.weight \[3, 3\]"),
    (lambda f: f.update({"point_gen.opacity_init": torch.full([1], -1.0)}),
     r"constant buffer\(s\) differ .*point_gen\.opacity_init=\[-1\.0\]"),
    (lambda f: f.update({"point_gen_bg.rotation_init": torch.tensor([[0, 1, 0, 0]])}),
     r"point_gen_bg\.rotation_init=\[0\.0, 1\.0, 0\.0, 0\.0\]"),
])
def test_bad_keys_are_named(tmp_path, edit, message):
    G = tiny_generator()
    path = str(tmp_path / "bad.pkl")
    write_official_pickle(path, G=G, flat=_edited(G, edit))
    with pytest.raises(SnapshotError, match=message):
        oi.import_network_pickle(path)


def test_options_gsgan_cannot_represent_are_named(tmp_path):
    G = tiny_generator()
    path = str(tmp_path / "opts.pkl")
    custom = dict(custom_options(G), scale_end=math.log(0.5 / RES))
    write_official_pickle(path, G=G, custom=custom)
    with pytest.raises(SnapshotError, match=r"custom_options\.scale_end=.* differs from gsgan's log\(1 / "
                                            r"img_resolution=32\)"):
        oi.import_network_pickle(path)
    write_official_pickle(path, G=G, custom=dict(custom_options(G), output_multiplier=2))
    with pytest.raises(SnapshotError, match=r"custom_options\.output_multiplier=2"):
        oi.import_network_pickle(path)


def test_unknown_discriminator_is_replaced_and_said(tmp_path):
    path = str(tmp_path / "d.pkl")

    def other_d(data):
        data["D"] = module_tree({"b32.other.weight": torch.zeros(2)}, "SingleDiscriminator", {}, "")
        return data
    write_official_pickle(path, top=other_d)
    result = oi.import_network_pickle(path)
    assert not result.reports[2].imported and "b32.other.weight" in result.reports[2].note
    assert any("D: SingleDiscriminator: not imported" in line for line in result.summary_lines())


# --------------------------------------------------------------------------------------------------
# Compat truncation and the golden Gaussians.

def test_compat_mapping_truncates_all_ws_without_a_cutoff():
    G = tiny_generator()
    G.mapping_network.w_avg.normal_()
    z, c = torch.randn(2, G.z_dim), torch.zeros(2, 25)
    ws = G.mapping(z, c, truncation_psi=0.0)
    torch.testing.assert_close(ws, G.mapping_network.w_avg.expand_as(ws))
    cut = G.mapping(z, c, truncation_psi=0.0, truncation_cutoff=2)
    assert not torch.allclose(cut[:, 2], G.mapping_network.w_avg)


def compat_gaussians(G: GSGenerator, z, c, psi: float = 0.7) -> dict:
    """Raw Gaussians of every level, the anchors and the background at (z, c), without rendering."""
    from splatting import Cameras

    ws = G.mapping(z, c, truncation_psi=psi)
    view = Cameras.from_eg3d_labels(c, 16, 16, compat=True).forward[:, 0]
    levels, anchors = G.points(ws[:, :G.points.num_ws], view)
    out = {}
    for kind, parts in (("level", levels), ("anchor", anchors), ("background", [G.background(ws[:, -1])])):
        for i, g in enumerate(parts):
            for field in ("means", "log_scales", "quats", "opacity_logits", "sh"):
                out[f"{kind}{i}.{field}"] = getattr(g, field).detach().clone()
    return out


def golden_inputs():
    from splatting.cameras import eg3d_label
    from training import camera_sampling as cs

    z = torch.from_numpy(np.random.RandomState(7).randn(2, TINY["z_dim"]).astype(np.float32))
    pose = cs.orbit_cam2world(torch.tensor([1.2, 1.9]), torch.tensor([1.5, 1.4]), cs.FFHQ_RADIUS, cs.FFHQ_PIVOT)
    c = eg3d_label(pose, cs.FFHQ_FOCAL).float()
    return z, c


def test_golden_compat_gaussians(tmp_path):
    """The stored official tensors, imported, give the stored Gaussians (made by tests/data/
    make_official_compat_golden.py through this same path); a changed compat formula fails here."""
    golden = torch.load(GOLDEN, weights_only=True)
    G = tiny_generator()
    assert set(golden["official_state"]) == set(official_state(G))
    path = str(tmp_path / "golden.pkl")
    write_official_pickle(path, G=G, flat=golden["official_state"])
    G2 = checkpoint.load_snapshot(path)["G_ema"]
    got = compat_gaussians(G2, golden["z"], golden["c"])
    assert set(got) == set(golden["gaussians"])
    for key, want in golden["gaussians"].items():
        torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-5, msg=key)


# --------------------------------------------------------------------------------------------------
# The CLIs end to end.

def test_import_official_cli(official, tmp_path):
    import import_official

    dest = tmp_path / "out" / "ffhq.pt"
    runner = CliRunner()
    result = runner.invoke(import_official.main, ["--source", official[0], "--dry-run", "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    assert "G_ema: GSGenerator ->" in result.output and "dry run: would write" in result.output
    assert not dest.exists()
    result = runner.invoke(import_official.main, ["--source", official[0], "--dest", str(dest), "-v"])
    assert result.exit_code == 0 and dest.exists(), result.output
    assert "G_ema dropped: " in result.output and "point_gen.camera_dep_affine.weight" in result.output
    snap = checkpoint.load_snapshot(str(dest))
    assert torch.equal(snap["G_ema"].points._xyz, official[1].points._xyz)
    again = runner.invoke(import_official.main, ["--source", official[0], "--dest", str(dest)])
    assert again.exit_code != 0 and "already exists (pass --overwrite" in again.output
    for args, fragment in ((["--source", str(tmp_path / "none.pkl"), "--dry-run"], "is not a file"),
                           (["--source", official[0], "--dest", str(tmp_path / "x.pkl")], "expected a .pt path"),
                           (["--source", official[0]], "--dest is required")):
        bad = runner.invoke(import_official.main, args)
        assert bad.exit_code != 0 and fragment in bad.output and "Traceback" not in bad.output, bad.output
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(open(official[0], "rb").read()[:1000])
    bad = runner.invoke(import_official.main, ["--source", str(cut), "--dest", str(tmp_path / "c.pt")])
    assert bad.exit_code != 0 and "truncated or corrupt" in bad.output and len(bad.output.splitlines()) == 1
    assert not (tmp_path / "c.pt").exists()


def test_gen_videos_takes_the_pickle(official, tmp_path):
    import gen_videos

    result = CliRunner().invoke(gen_videos.cli, ["--network", official[0], "--seeds", "0", "--outdir",
                                                 str(tmp_path), "--no-video", "--images", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "seed0000.ply").exists() and (tmp_path / "seed0000.png").exists()


def test_calc_metrics_takes_the_pickle(official, tmp_path):
    import calc_metrics
    from tests.test_metrics import TinyNvidiaDetector, save_detector, write_dataset

    data = write_dataset(str(tmp_path / "data.zip"), 6, resolution=RES)
    detector = save_detector(TinyNvidiaDetector(), str(tmp_path / "detector.pt"))
    result = CliRunner().invoke(calc_metrics.main, [
        "--metrics=fid6_full", f"--network={official[0]}", f"--data={data}", f"--detector={detector}",
        "--allow-small", "--device=cpu", f"--cache-dir={tmp_path / 'cache'}"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert '"fid6_full"' in result.output
