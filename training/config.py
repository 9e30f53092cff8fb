"""Typed, frozen training options. `TrainConfig.from_dict` rejects unknown keys and wrong types, and
`to_json`/`from_json` round-trip exactly: training_options.json plus the seed reproduce a run.

Defaults are the official GSGAN values (docs/official-release.md). G's channel table defaults to channel_base 8192 =
cbase/4 with channel_max 512, which reproduces the official hard-coded table {4..16: 512, 32: 256, >=64: 128}.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field

CONFIG_VERSION = 1
CFG_NAMES = ("ffhq", "afhq", "shapenet", "shapes")
AUGMENT_MODES = ("noaug", "ada", "fixed")
DEVICES = ("auto", "cpu", "cuda")
NONFINITE_MODES = ("stop", "replace")
# Generator architectures (GeneratorConfig.arch) -> their class in the snapshot registry: the GSGAN hierarchy, or the
# naive flat baseline it is ablated against (training/naive_generator.py). Option files written before the field
# existed are hierarchical.
GENERATOR_ARCHS = {"hierarchical": "GSGenerator", "naive": "NaiveGenerator"}
# GeneratorConfig.backdrop (training/backdrop.py): "off" (black behind the Gaussians), "field" (a learned backdrop at
# infinity), or "auto": train.py decides from the dataset's border at set-up, off exactly when `dataset_tool.py info`
# reads the backdrop as uniform black, and records its decision, so a run's options never hold "auto".
BACKDROP_MODES = ("auto", "off", "field")


class ConfigError(ValueError):
    """Bad option value or unknown key (one line naming the option)."""


def require_choice(where: str, value, choices) -> None:
    """The one-line error for an option whose value is not among its named choices."""
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {tuple(choices)}, got {value!r}")


def _check_value(value, hint, where: str):
    """Validate/convert one value against a (resolved) type hint; returns the converted value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _check_value(value, options[0], where)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else hint.from_dict(value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else typing.Any
        if len(args) == 2 and args[1] is Ellipsis or len(args) <= 1:
            return tuple(_check_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # json.loads accepts NaN and Infinity; no option means them
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _check_finite(value, where: str) -> None:
    """ConfigError naming the first NaN / inf float in a config, its nested configs and their dicts / lists: such
    a value is never a meaningful option, and training_options.json must stay plain JSON."""
    if dataclasses.is_dataclass(value):
        items = [(f".{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        items = [(f".{key}", item) for key, item in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"[{index}]", item) for index, item in enumerate(value)]
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return
    for suffix, item in items:
        _check_finite(item, where + suffix)


class _Config:
    """from_dict / to_dict / JSON for the frozen dataclasses below."""

    @classmethod
    def from_dict(cls, data, where: str | None = None):
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        values = {key: _check_value(value, hints[key], f"{where}.{key}") for key, value in data.items()}
        return cls(**values)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DataConfig(_Config):
    path: str = ""
    resolution: int = 0                 # resolved from the dataset (0 = not yet known)
    max_size: int | None = None
    mirror: bool = False                # x-flip augmentation of the dataset
    use_labels: bool = True             # --cond
    workers: int = 3                    # DataLoader worker processes per rank
    fingerprint: str = ""               # dataset content hash, recorded for reproducibility


@dataclass(frozen=True)
class GeneratorConfig(_Config):
    arch: str = "hierarchical"          # --arch: a key of GENERATOR_ARCHS
    num_points: int = 256               # --gaussian_num_pts (P0)
    res_end: int = 128
    channel_base: int = 8192            # cbase / 4: the official G channel table
    channel_max: int = 512              # --cmax
    map_depth: int = 2
    gen_pose_cond: bool = True
    c_scale: float = 1.0
    start_pe: bool = True
    neural_rendering_resolution: int = 0  # 0 = the dataset resolution
    backdrop: str = "off"               # --backdrop: a BACKDROP_MODES entry
    backdrop_color: tuple[float, float, float] = (0.0, 0.0, 0.0)  # its initial colour (the dataset's border)
    extra: dict = field(default_factory=dict)  # further GSGenerator keyword arguments (e.g. small test models)


@dataclass(frozen=True)
class DiscriminatorConfig(_Config):
    channel_base: int = 32768
    channel_max: int = 512
    mbstd_group_size: int = 4
    num_fp16_res: int = 4
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig(_Config):
    r1_gamma: float = 1.0
    r1_interval: int = 16               # lazy R1 / Dreg every this many iterations (gain = interval)
    pose_contrastive_weight: float = 1.0  # explicit: independent of the number of processes (clean mode)
    contrastive_temperature: float = 0.1
    knn_weight: float = 10.0
    knn_k: int = 64
    center_weight: float = 1.0          # --center_dists
    blur_init_sigma: float = 10.0
    blur_fade_kimg: float = 200.0
    gpc_reg_prob: float = 0.5
    gpc_reg_fade_kimg: float = 1000.0
    prob_uniform: float = 0.0           # FFHQ pose augmentation probability of gen_c
    background_start_kimg: float = 50.0  # background Gaussians enabled from this many images on
    g_clip_norm: float = 20.0
    d_clip_norm: float = 5.0
    style_mixing_prob: float = 0.0
    resume_blur: bool = False           # compat resume only: keep the blur fade (the official --resume_blur)
    debug_nan_at_iter: int = -1         # test hook: make the G loss NaN at this iteration (-1 = never)


@dataclass(frozen=True)
class OptimConfig(_Config):
    glr: float = 0.0025
    dlr: float = 0.002
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8


@dataclass(frozen=True)
class AugmentConfig(_Config):
    mode: str = "noaug"                 # noaug | ada | fixed
    p: float = 0.2                      # probability multiplier for mode=fixed
    target: float = 0.6
    interval: int = 4
    speed_kimg: float = 500.0


@dataclass(frozen=True)
class TrainConfig(_Config):
    version: int = CONFIG_VERSION
    cfg: str = "ffhq"
    compat: bool = False                # reproduce the official quirks (docs/official-release.md)
    outdir: str = ""
    desc: str = ""
    seed: int = 0
    num_gpus: int = 1                   # processes (GPUs, or CPU processes with --device cpu)
    batch_size: int = 32
    batch_gpu: int = 32
    total_kimg: float = 15000.0
    kimg_per_tick: float = 4.0
    snapshot_ticks: int = 50            # network snapshot (and metrics) every this many ticks; 0 = only at the end
    image_snapshot_ticks: int = 50
    metrics: tuple[str, ...] = ()
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    grid_size: tuple[int, int] | None = None  # (columns, rows) of fakes*.png; None = official size
    device: str = "auto"
    resume: str = ""                    # snapshot file or run directory
    nonfinite: str = "stop"             # on a NaN/inf loss or gradient: "stop" (snapshot + error) or "replace"
    data: DataConfig = field(default_factory=DataConfig)
    G: GeneratorConfig = field(default_factory=GeneratorConfig)
    D: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"TrainConfig.version: expected {CONFIG_VERSION}, got {self.version}")
        require_choice("TrainConfig.cfg", self.cfg, CFG_NAMES)
        require_choice("TrainConfig.augment.mode", self.augment.mode, AUGMENT_MODES)
        require_choice("TrainConfig.nonfinite", self.nonfinite, NONFINITE_MODES)
        require_choice("TrainConfig.device", self.device, DEVICES)
        require_choice("TrainConfig.G.arch", self.G.arch, GENERATOR_ARCHS)
        require_choice("TrainConfig.G.backdrop", self.G.backdrop, BACKDROP_MODES)

    def generator_kwargs(self) -> dict:
        """GSGenerator constructor arguments (needs data.resolution)."""
        gc, res = self.G, self.data.resolution
        if gc.backdrop == "auto":
            raise ConfigError("TrainConfig.G.backdrop: 'auto' is decided from the dataset (train.py does it); "
                              "expected 'off' or 'field' here")
        kwargs = dict(img_resolution=res, num_points=gc.num_points, res_end=gc.res_end,
                      channel_base=gc.channel_base, channel_max=gc.channel_max, map_depth=gc.map_depth,
                      gen_pose_cond=gc.gen_pose_cond, c_scale=gc.c_scale, start_pe=gc.start_pe, compat=self.compat,
                      neural_rendering_resolution=gc.neural_rendering_resolution or res, backdrop=gc.backdrop,
                      backdrop_color=gc.backdrop_color)
        kwargs.update(gc.extra)
        return kwargs

    def generator_class(self) -> type:
        """The generator class of G.arch (each takes generator_kwargs())."""
        from torch_utils.checkpoint import registered_class

        return registered_class(GENERATOR_ARCHS[self.G.arch])

    def discriminator_kwargs(self) -> dict:
        dc = self.D
        return dict(img_resolution=self.data.resolution, channel_base=dc.channel_base, channel_max=dc.channel_max,
                    mbstd_group_size=dc.mbstd_group_size, num_fp16_res=dc.num_fp16_res, **dc.extra)

    @property
    def rounds(self) -> int:
        """Gradient-accumulation rounds per iteration (batch = num_gpus * batch_gpu * rounds)."""
        return self.batch_size // (self.num_gpus * self.batch_gpu)

    def validate(self) -> None:
        """Cross-option checks that need no data or models; raises ConfigError naming the option."""
        _check_finite(self, "TrainConfig")
        if self.num_gpus < 1 or self.batch_gpu < 1 or self.batch_size < 1:
            raise ConfigError("--gpus, --batch and --batch-gpu must be positive")
        if self.batch_size % (self.num_gpus * self.batch_gpu) != 0:
            raise ConfigError(f"--batch={self.batch_size} must be a multiple of --gpus * --batch-gpu "
                              f"= {self.num_gpus} * {self.batch_gpu}")
        group = self.D.mbstd_group_size
        if group > 1 and self.batch_gpu >= group and self.batch_gpu % group != 0:
            raise ConfigError(f"--mbstd-group={group} must divide --batch-gpu={self.batch_gpu}")
        res, nrr = self.data.resolution, self.G.neural_rendering_resolution
        if res and nrr and nrr != res:
            raise ConfigError(f"--neural_rendering_resolution_initial={nrr} must equal the dataset resolution "
                              f"{res} (GSGAN renders at the discriminator's resolution; no super-resolution)")
        for name in ("total_kimg", "kimg_per_tick"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.loss.gpc_reg_prob <= 1 or not 0 <= self.loss.prob_uniform <= 1:
            raise ConfigError("--gpc_reg_prob and --prob_uniform must be probabilities in [0, 1]")


# Per --cfg defaults (docs/official-release.md): dry-run resolution when no dataset is given, and option defaults that the
# official scripts set explicitly anyway. `shapes` is the built-in synthetic dataset with a small CPU model.
CFG_DEFAULTS = {
    "ffhq": {"resolution": 512, "gpc_reg_prob": 0.5, "center_dists": 1.0, "prob_uniform": 0.5},
    "afhq": {"resolution": 512, "gpc_reg_prob": 0.8, "center_dists": 10.0, "prob_uniform": 0.0},
    "shapenet": {"resolution": 128, "gpc_reg_prob": 0.5, "center_dists": 1.0, "prob_uniform": 0.0},
    # `shapes` is tuned for the CPU (the quickstart measures it): 16x16, two levels, no background Gaussians (the data
    # has none), no D-input blur (its sigma is in pixels of 256-512 px images), a small R1 gamma (the official 1 is
    # sized for 256-512 px), twice the official learning rates and near-uniform initial colours. Its backdrop is
    # decided from the data: none on black (the tuned, measured case stays exactly as it was), a learned backdrop
    # at infinity on anything else (its Gaussians would otherwise have to paint it).
    "shapes": {"backdrop": "auto", "resolution": 16, "gpc_reg_prob": 0.5, "center_dists": 1.0, "prob_uniform": 0.5,
               "batch": 8, "kimg": 50.0, "tick": 1.0, "snap": 10, "workers": 1, "blur_fade_kimg": 0.0,
               "gaussian_num_pts": 64, "res_end": 16, "cbase": 16384, "cmax": 128,
               "gamma": 0.1, "glr": 0.005, "dlr": 0.004,
               "G_extra": {"num_transformer_layers": 2, "num_heads": 4, "bg_num_points": 0,
                           "head_weight_init": {"color": 0.1}},
               "grid": (4, 2), "dataset_count": 512},
}
