"""Import the official GSGAN network pickles (network-snapshot-*.pkl) as gsgan snapshots, without running their code.

training/official_pickle.py reads the file safely (no code from it is ever executed). From its records: the state
dicts of G_ema (and G, D) are read off the recorded `_parameters` / `_buffers` / `_modules` trees, the architecture is
derived from `_init_kwargs` and the tensor shapes (compat=True), official names are mapped one-to-one onto gsgan's
(official_keys.py), the official constant buffers are checked against gsgan's constants (not loaded), dead official
tensors are dropped, and the result is loaded with strict=True into a gsgan snapshot dict (docs/official-release.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import re

import torch

from torch_utils.checkpoint import FORMAT, VERSION, SnapshotError, module_record
from training.official_keys import map_generator_key
from training.official_pickle import PersistentRecord, attribute, init_kwargs, read_network_pickle, \
    record_state_dict, submodule

FLOAT_TOLERANCE = 1e-6  # official float32 constants vs gsgan's float64 ones


# ---------------------------------------------------------------------------------------------- configuration
def _number(value, what: str, kind=float):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SnapshotError(f"{what}: expected a number, got {value!r}")
    return kind(value)


def _channel_table(widths: dict[int, int], where: str) -> dict:
    """channel_base / channel_min / channel_max reproducing widths {res: channels} with gsgan's clamp formula."""
    lo, hi = min(widths.values()), max(widths.values())
    for base in sorted({w * r for r, w in widths.items()}):
        if all(min(max(base // r, lo), hi) == w for r, w in widths.items()):
            return {"channel_base": base, "channel_min": lo, "channel_max": hi}
    raise SnapshotError(f"{where}: channel widths {widths} follow no channel_base / min / max table")


def generator_kwargs(G_record, where: str) -> tuple[dict, dict]:
    """(GSGenerator kwargs with compat=True, official options used) derived from the records and tensor shapes."""
    kwargs0, state = init_kwargs(G_record), record_state_dict(G_record, where)
    rendering = kwargs0.get("rendering_kwargs") or {}
    custom = rendering.get("custom_options") if isinstance(rendering, dict) else None
    if not isinstance(custom, dict):
        raise SnapshotError(f"{where}: _init_kwargs.rendering_kwargs.custom_options missing: not a GSGAN generator")

    def option(name, kind=float):
        if name not in custom:
            raise SnapshotError(f"{where}: rendering_kwargs.custom_options.{name} missing")
        return _number(custom[name], f"{where}: custom_options.{name}", kind)

    point_gen, point_gen_bg = submodule(G_record, "point_gen"), submodule(G_record, "point_gen_bg")
    num_points, res_end, up_ratio = option("num_pts", int), option("res_end", int), option("up_ratio", int)
    if custom.get("use_dir_cond") is not True or "point_gen.encoder_camera_cond.weight" not in state:
        raise SnapshotError(f"{where}: custom_options.use_dir_cond is not True; gsgan always conditions colour on "
                            f"the view direction")
    if option("output_multiplier", int) != 1:
        raise SnapshotError(f"{where}: custom_options.output_multiplier={custom['output_multiplier']}; only 1 (the "
                            f"released value) is supported")
    if up_ratio != 4:
        raise SnapshotError(f"{where}: custom_options.up_ratio={up_ratio}; the official local edge block groups 4 "
                            f"points whatever the ratio, so only 4 is importable")
    num_levels = int(math.log2(res_end // 4)) if res_end >= 8 else 0
    res = [4 * 2 ** level for level in range(num_levels)]
    widths = {8 * 2 ** level: int(state[f"point_gen.out_layers.xyz.block_{r}.1.weight"].shape[1])
              for level, r in enumerate(res) if f"point_gen.out_layers.xyz.block_{r}.1.weight" in state}
    if len(widths) != num_levels or num_levels < 1:
        raise SnapshotError(f"{where}: output heads for res_end={res_end} (blocks 4..{res_end // 2}) missing")
    widths[4] = widths[8]  # the official level-0 transformer works at the width of its heads
    ada = [f"point_gen.blocks.block_{r}.0.norm.gamma.weight" in state for r in res[1:]]
    num_ada = sum(ada)
    if ada != [True] * num_ada + [False] * (len(ada) - num_ada):
        raise SnapshotError(f"{where}: style-modulated blocks {ada} are not a leading run of levels")
    layers = sorted({int(m[1]) for k in state for m in [re.match(r"point_gen\.blocks\.block_4\.0\.resblocks\.(\d+)\.",
                                                                   k)] if m})
    attention = submodule(point_gen, "blocks.block_4.0.resblocks.0.attn.attention") if layers else None
    first_ada = submodule(point_gen, f"blocks.block_{res[1]}.0") if num_ada else None
    fc0 = submodule(G_record, "mapping_network.fc0")
    mapping = submodule(G_record, "mapping_network")
    map_depth = len({k.split(".")[1] for k in state if re.match(r"mapping_network\.fc\d+\.weight$", k)})
    kwargs = dict(
        img_resolution=_number(kwargs0.get("img_resolution"), f"{where}: _init_kwargs.img_resolution", int),
        z_dim=_number(kwargs0.get("z_dim"), f"{where}: _init_kwargs.z_dim", int),
        w_dim=_number(kwargs0.get("w_dim"), f"{where}: _init_kwargs.w_dim", int),
        c_dim=_number(kwargs0.get("c_dim"), f"{where}: _init_kwargs.c_dim", int),
        num_points=num_points, res_end=res_end, up_ratio=up_ratio, **_channel_table(widths, where),
        num_heads=int(attribute(attention, "heads", 8)), num_transformer_layers=len(layers),
        knn_k=int(attribute(first_ada, "k", 16)), start_pe=custom.get("use_start_pe") is True,
        xyz_output_scale=option("xyz_output_scale"),
        view_dim=int(state["point_gen.encoder_camera_cond.weight"].shape[0]),
        ada_max_points_factor=up_ratio ** num_ada,
        bg_num_points=int(state["_xyz_bg"].shape[0]) if "_xyz_bg" in state else 0,
        bg_radius=_number(attribute(point_gen_bg, "radius", 3.0), f"{where}: point_gen_bg.radius"),
        bg_channels=int(state["point_gen_bg.conv_in.ffm.linear.weight"].shape[0])
        if "point_gen_bg.conv_in.ffm.linear.weight" in state else 128,
        bg_up_ratio=int(attribute(point_gen_bg, "upsample_ratio", 4)),
        bg_scale_init=option("scale_init_bg"),
        bg_split_ratio=_number(attribute(point_gen_bg, "split_ratio", 2.0 ** (2.0 / 3.0)),
                               f"{where}: point_gen_bg.split_ratio"),
        compat=True,
        c_scale=_number(rendering.get("c_scale", 0), f"{where}: rendering_kwargs.c_scale"),
        gen_pose_cond=not bool(rendering.get("c_gen_conditioning_zero", False)),
        map_depth=map_depth,
        map_lr_multiplier=_number(attribute(fc0, "bias_gain", 0.01), f"{where}: mapping_network.fc0.bias_gain"),
        w_avg_beta=_number(attribute(mapping, "w_avg_beta", 0.998), f"{where}: mapping_network.w_avg_beta"),
        neural_rendering_resolution=_number(attribute(G_record, "neural_rendering_resolution",
                                                      kwargs0.get("img_resolution")),
                                            f"{where}: neural_rendering_resolution", int),
    )
    if "point_gen.conv_in.const_pe.const_pe" in state:
        kwargs["const_pe_length"] = int(state["point_gen.conv_in.const_pe.const_pe"].shape[-1])
    _check_schedule_options(custom, kwargs, where)
    used = {k: custom[k] for k in sorted(custom) if isinstance(custom[k], (int, float, bool, str))}
    return kwargs, used


def _check_schedule_options(custom: dict, kwargs: dict, where: str) -> None:
    """Official options gsgan derives instead of storing: they must equal gsgan's derivation."""
    expected_scale = math.log(1.0 / math.sqrt(kwargs["num_points"]))
    checks = [("scale_init", expected_scale, f"log(1 / sqrt(num_pts={kwargs['num_points']}))"),
              ("scale_threshold", expected_scale, "scale_init"),
              ("scale_end", math.log(1.0 / kwargs["img_resolution"]),
               f"log(1 / img_resolution={kwargs['img_resolution']})"),
              ("scale_threshold_bg", kwargs["bg_scale_init"], "scale_init_bg")]
    for name, value, meaning in checks:
        got = _number(custom.get(name), f"{where}: custom_options.{name}")
        if abs(got - value) > FLOAT_TOLERANCE:
            raise SnapshotError(f"{where}: custom_options.{name}={got:.6g} differs from gsgan's {meaning} = "
                                f"{value:.6g}; this checkpoint cannot be imported exactly")


def _check_constants(official: dict, G, where: str) -> list[str]:
    """The official constant buffers equal gsgan's constants (0 for exact ones, FLOAT_TOLERANCE for logs/logits)."""
    fg, bg = G.points, G.background
    expected = {
        "point_gen.scale_init": (fg.scale_init, FLOAT_TOLERANCE), "point_gen.scale_threshold": (fg.scale_init,
                                                                                                FLOAT_TOLERANCE),
        "point_gen.rotation_init": ([1.0, 0.0, 0.0, 0.0], 0.0), "point_gen.color_init": (0.0, 0.0),
        "point_gen.opacity_init": (fg.opacity_logit_init, FLOAT_TOLERANCE)}
    if bg is not None:
        expected.update({
            "point_gen_bg.scale_init": (bg.scale_init, FLOAT_TOLERANCE),
            "point_gen_bg.scale_threshold": (bg.scale_init, FLOAT_TOLERANCE),
            "point_gen_bg.rotation_init": ([1.0, 0.0, 0.0, 0.0], 0.0), "point_gen_bg.color_init": (0.0, 0.0),
            "point_gen_bg.opacity_init": (bg.opacity_logit_init, FLOAT_TOLERANCE)})
    checked, differ = [], []
    for key, tensor in official.items():
        if key not in expected:
            raise SnapshotError(f"{where}: constant buffer {key} has no gsgan counterpart (no background?)")
        value, tol = expected[key]
        got = tensor.detach().double().flatten()
        want = torch.as_tensor(value, dtype=torch.float64).flatten()
        if got.numel() == 0 or want.numel() not in (1, got.numel()) or (got - want).abs().max().item() > tol:
            differ.append(f"{key}={got.tolist()} (gsgan: {torch.as_tensor(value).tolist()})")
        checked.append(key)
    if differ:
        raise SnapshotError(f"{where}: constant buffer(s) differ from gsgan's constants: {'; '.join(differ)}")
    missing = sorted(set(expected) - set(official))
    if missing:
        raise SnapshotError(f"{where}: constant buffer(s) {', '.join(missing)} missing")
    return checked


# ---------------------------------------------------------------------------------------------- conversion
@dataclasses.dataclass
class NetworkReport:
    """What one network's import did (plain data: it is stored in the snapshot's imported_from.networks)."""

    key: str
    official_class: str
    imported: bool
    tensors: int = 0
    parameters: int = 0
    dropped: list = dataclasses.field(default_factory=list)
    checked: list = dataclasses.field(default_factory=list)
    note: str = ""


def _listed(names, limit=6) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def convert_generator(record, kwargs: dict, where: str, key: str):
    """(GSGenerator with the record's weights, NetworkReport)."""
    from training.generator import GSGenerator

    official = record_state_dict(record, where)
    num_levels = int(math.log2(kwargs["res_end"] // 4))
    mapped, constants, dropped, unknown = {}, {}, [], []
    for name, tensor in official.items():
        try:
            kind, ours = map_generator_key(name, num_levels)
        except KeyError:
            unknown.append(name)
            continue
        if kind == "tensor":
            mapped[ours] = (name, tensor)
        elif kind == "constant":
            constants[name] = tensor
        else:
            dropped.append(name)
    if unknown:
        raise SnapshotError(f"{where}: unknown official key(s) {_listed(unknown)}: not part of a GSGAN generator")
    try:
        G = GSGenerator(**kwargs)
    except (TypeError, ValueError) as error:
        raise SnapshotError(f"{where}: cannot build the matching gsgan generator: {error}") from None
    target = G.state_dict()
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise SnapshotError(f"{where}: the pickle has no tensor for gsgan's {_listed(missing)}")
    extra = sorted(ours for ours in mapped if ours not in target)
    if extra:
        raise SnapshotError(f"{where}: official key(s) {_listed(mapped[o][0] for o in extra)} have no place in the "
                            f"derived gsgan generator")
    state, bad = {}, []
    for ours, (name, tensor) in mapped.items():
        want = target[ours].shape
        if tensor.shape != want and name.endswith("layerscale") and tensor.numel() == want.numel():
            tensor = tensor.reshape(want)  # official [1, 1, C] -> gsgan [C]
        if tensor.shape != want:
            bad.append(f"{name} {list(tensor.shape)} (gsgan {ours} expects {list(want)})")
        state[ours] = tensor.to(target[ours].dtype)
    if bad:
        raise SnapshotError(f"{where}: mis-shaped key(s) {_listed(bad, 4)}")
    checked = _check_constants(constants, G, where)
    G.load_state_dict(state, strict=True)
    G.eval().requires_grad_(False)
    report = NetworkReport(key=key, official_class=record.class_name, imported=True, tensors=len(state),
                           parameters=sum(p.numel() for p in G.parameters()), dropped=sorted(dropped),
                           checked=checked)
    return G, report


def convert_discriminator(record, img_resolution: int, where: str):
    """(Discriminator, NetworkReport). The official trunk shares StyleGAN2's names with gsgan's; the FIR filter
    buffers are checked and dropped. A D whose names do not match is replaced by a fresh one (said in the report)."""
    from training.conv_layers import blur_filter_2d
    from training.discriminator import Discriminator

    kw = init_kwargs(record) if record is not None else {}
    epilogue = kw.get("epilogue_kwargs") if isinstance(kw.get("epilogue_kwargs"), dict) else {}
    args = dict(img_resolution=img_resolution, channel_base=int(kw.get("channel_base", 32768)),
                channel_max=int(kw.get("channel_max", 512)), num_fp16_res=int(kw.get("num_fp16_res", 4)),
                mbstd_group_size=int(epilogue.get("mbstd_group_size", 4)))
    official = record_state_dict(record, where) if record is not None else {}
    if "cam_fc.weight" in official and "cam_out.weight" in official:  # the pose branch's widths
        args.update(cam_hidden=int(official["cam_fc.weight"].shape[0]),
                    pose_feat_dim=int(official["cam_out.weight"].shape[0]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        D = Discriminator(**args).eval().requires_grad_(False)
    name = record.class_name if record is not None else "-"
    if record is None:
        return D, NetworkReport("D", name, False, note="not in the pickle: a freshly initialized D was written")
    filters = {k: v for k, v in official.items() if k.endswith("resample_filter")}
    state = {k: v for k, v in official.items() if k not in filters}
    bad_filters = [k for k, v in filters.items() if v.shape != (4, 4) or (v - blur_filter_2d()).abs().max() > 1e-7]
    target = D.state_dict()
    unknown, missing = sorted(set(state) - set(target)), sorted(set(target) - set(state))
    shapes = sorted(k for k in set(target) & set(state) if target[k].shape != state[k].shape)
    problems = [f"{what} {_listed(keys, 4)}" for what, keys in (("unknown", unknown), ("missing", missing),
                ("mis-shaped", shapes), ("unexpected FIR filter", bad_filters)) if keys]
    if problems:
        note = f"does not match gsgan's Discriminator ({'; '.join(problems)}): a freshly initialized D was written"
        return D, NetworkReport("D", name, False, note=note)
    D.load_state_dict(state, strict=True)
    return D, NetworkReport("D", name, True, tensors=len(state), parameters=sum(p.numel() for p in D.parameters()),
                            dropped=sorted(filters), checked=sorted(filters))


def _cfg_name(rendering: dict) -> str:
    pivot = rendering.get("avg_camera_pivot") if isinstance(rendering, dict) else None
    radius = rendering.get("avg_camera_radius") if isinstance(rendering, dict) else None
    if isinstance(radius, (int, float)) and abs(radius - 1.7) < 1e-6:
        return "shapenet"
    if isinstance(pivot, (list, tuple)) and len(pivot) == 3 and isinstance(pivot[2], (int, float)):
        return "afhq" if abs(pivot[2] + 0.06) < 1e-6 else "ffhq"
    return "ffhq"


def _train_options(kwargs: dict, cfg: str, data_path: str):
    """The TrainConfig whose generator_kwargs() rebuild exactly this generator (for train.py --resume)."""
    from training.config import DataConfig, GeneratorConfig, TrainConfig
    from training.generator import GSGenerator

    main = dict(num_points="num_points", res_end="res_end", channel_base="channel_base",
                channel_max="channel_max", map_depth="map_depth", gen_pose_cond="gen_pose_cond", c_scale="c_scale",
                start_pe="start_pe", neural_rendering_resolution="neural_rendering_resolution")
    defaults = {name: p.default for name, p in inspect.signature(GSGenerator.__init__).parameters.items()}
    taken = set(main) | {"img_resolution", "compat"}
    extra = {k: v for k, v in kwargs.items() if k not in taken and defaults.get(k) != v}
    G = GeneratorConfig(**{field: kwargs[name] for field, name in main.items()}, extra=extra)
    return TrainConfig(cfg=cfg, compat=True, data=DataConfig(path=data_path, resolution=kwargs["img_resolution"]),
                       G=G)


@dataclasses.dataclass
class ImportResult:
    snapshot: dict            # a gsgan snapshot dict (module records), as read_snapshot_dict returns it
    reports: list             # NetworkReport per network
    options: dict             # the official custom options the architecture was derived from

    def summary_lines(self) -> list[str]:
        lines = []
        for r in self.reports:
            if not r.imported:
                lines.append(f"{r.key}: {r.official_class}: not imported ({r.note})")
                continue
            dead = [k for k in r.dropped if k != "dataset_label_std"]
            extra = " (and the training loop's dataset_label_std)" if len(dead) < len(r.dropped) else ""
            lines.append(f"{r.key}: {r.official_class} -> {r.tensors} tensors, {r.parameters:,} parameters; "
                         f"dropped {len(dead)} dead key(s){extra}, checked {len(r.checked)} constant buffer(s)")
        return lines

    def detail_lines(self) -> list[str]:
        lines = []
        for r in self.reports:
            if r.imported:
                lines.append(f"{r.key} dropped: {', '.join(r.dropped) or '-'}")
                lines.append(f"{r.key} checked: {', '.join(r.checked) or '-'}")
        return lines


def import_network_pickle(path: str) -> ImportResult:
    """Read an official network pickle and convert it; nothing is written."""
    data = read_network_pickle(path)
    if "G_ema" not in data:
        raise SnapshotError(f"{path} is not an EG3D/GSGAN network pickle: no G_ema (keys: "
                            f"{', '.join(sorted(map(str, data))) or 'none'})")
    records = {key: data.get(key) for key in ("G_ema", "G", "D")}
    for key, record in records.items():
        if record is not None and not isinstance(record, PersistentRecord):
            raise SnapshotError(f"{path}: {key} is {record!r}, not a persistent network object")
    G_record = records["G_ema"]
    if G_record.class_name != "GSGenerator" or submodule(G_record, "point_gen") is None:
        kind = {"TriPlaneGenerator": "an EG3D tri-plane generator", "Generator": "a StyleGAN generator"}.get(
            G_record.class_name, f"a {G_record.class_name}")
        raise SnapshotError(f"{path}: G_ema is {kind} ({G_record.class_name}), not a GSGAN generator "
                            f"(GSGenerator with point_gen / point_gen_bg)")
    kwargs, options = generator_kwargs(G_record, f"{path}: G_ema")
    G_ema, ema_report = convert_generator(G_record, kwargs, f"{path}: G_ema", "G_ema")
    if records["G"] is not None:
        G, g_report = convert_generator(records["G"], kwargs, f"{path}: G", "G")
    else:
        G, g_report = G_ema, NetworkReport("G", "-", False, note="not in the pickle: G_ema's weights were used")
    D, d_report = convert_discriminator(records["D"], kwargs["img_resolution"], f"{path}: D")
    rendering = init_kwargs(G_record).get("rendering_kwargs") or {}
    training_set = data.get("training_set_kwargs") if isinstance(data.get("training_set_kwargs"), dict) else {}
    data_path = training_set.get("path") if isinstance(training_set.get("path"), str) else ""
    config = _train_options(kwargs, _cfg_name(rendering), data_path)
    reports = [ema_report, g_report, d_report]
    if data.get("augment_pipe") is not None:
        reports.append(NetworkReport("augment_pipe", getattr(data["augment_pipe"], "class_name", "?"), False,
                                     note="ADA pipelines are not imported"))
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    snapshot = {
        "format": FORMAT, "version": VERSION,
        "G": module_record(G), "D": module_record(D), "G_ema": module_record(G_ema), "augment_pipe": None,
        "optimizers": None,  # the official pickles hold no optimizer state
        "progress": {"cur_nimg": 0, "cur_tick": 0, "batch_idx": 0, "official_resume": True},
        "ada": None, "rng": {"ranks": [], "num_ranks": 0}, "options": config.to_dict(),
        "training_set_kwargs": {"path": data_path, "resolution": kwargs["img_resolution"], "xflip": False,
                                "use_labels": True},
        "imported_from": {"path": path, "sha256": digest.hexdigest(), "official_options": options,
                          "networks": [dataclasses.asdict(r) for r in reports]},
    }
    return ImportResult(snapshot=snapshot, reports=reports, options=options)

