"""Typed, frozen options of a reconstruction run and the experiment presets (`reconstruct.py --experiment`).

The dataclasses share the GAN options' machinery (training.config): `from_dict` rejects unknown keys and wrong
types, and `to_json`/`from_json` round-trip exactly, so training_options.json plus the seed reproduce a run.

Optimizer and schedule follow the official MVSplat code: Adam at 2e-4, torch's OneCycleLR over `steps + 10`
steps with pct_start 0.01, cosine annealing, no momentum cycling and torch's default div_factor 25 /
final_div_factor 1e4 (MVSplat passes neither, so lr starts at 8e-6, peaks at 2e-4 after 1 % and ends near 8e-10);
gradients clipped to a global norm of 0.5; loss MSE (1) + LPIPS-VGG (0.05) on the target views.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from training.config import DEVICES, ConfigError, _Config, require_choice

OPTIONS_VERSION = 1
BACKENDS = ("auto", "reference", "cpu", "gsplat", "inria")


@dataclass(frozen=True)
class DataOptions(_Config):
    path: str = ""                                  # chunk dataset root (root/{train,test}/*.torch)
    image_shape: tuple[int, int] = (256, 256)       # (H, W) the model sees, after rescale + centre crop
    target_shape: tuple[int, int] | None = None     # (H, W) of the target views (render, loss, scores); None = image
    near: float = 1.0                               # depth range of the cost volume
    far: float = 100.0
    frame_shape: tuple[int, int] | None = None      # skip training scenes whose frames are not (h, w); None = any
    max_fov_deg: float = 100.0                      # skip scenes with a wider horizontal or vertical field of view
    flip: bool = True                               # random horizontal flips of training examples
    workers: int = 1                                # DataLoader worker processes per rank (0 = in the main process)
    cache_chunks: int = 2                           # chunk files kept decoded per worker

    @property
    def target_or_image_shape(self) -> tuple[int, int]:
        """The size of the target views: target_shape, else the context image_shape."""
        return tuple(self.image_shape if self.target_shape is None else self.target_shape)


@dataclass(frozen=True)
class SamplerOptions(_Config):
    """The bounded view sampler: context gap ramps from [initial_min_gap, initial_max_gap] to [min_gap, max_gap]."""

    num_context: int = 2
    num_target: int = 4
    min_gap: int = 45
    max_gap: int = 192
    initial_min_gap: int = 25
    initial_max_gap: int = 45
    warmup_steps: int = 150_000
    uniform_gap: bool = False                       # False: the official sampler (gap = the scheduled minimum)


@dataclass(frozen=True)
class ModelOptions(_Config):
    preset: str = "re10k"                           # reconstruction.encoder.ENCODER_PRESETS name
    overrides: dict = field(default_factory=dict)   # further CostVolumeEncoder keyword arguments
    backend: str = "auto"                           # rasterizer backend (splatting.render)


@dataclass(frozen=True)
class OptimOptions(_Config):
    lr: float = 2e-4
    pct_start: float = 0.01                         # OneCycleLR warm-up fraction
    div_factor: float = 25.0                        # initial lr = lr / div_factor
    final_div_factor: float = 1e4                   # final lr = initial lr / final_div_factor
    extra_schedule_steps: int = 10                  # the schedule spans steps + this (the official + 10)
    clip_norm: float = 0.5                          # global gradient norm; 0 = no clipping
    densify_lr: float | None = None                 # peak lr of the densifier's parameters; None = lr
    # Adam epsilon of the densifier's parameter group. Its gradients are tiny (RMS median 1e-8, a quarter below
    # 2.4e-9, measured over a 486-step CPU fine-tune), so Adam's usual 1e-8 would damp half of its updates.
    densify_eps: float = 1e-15


@dataclass(frozen=True)
class LossOptions(_Config):
    mse_weight: float = 1.0
    lpips_weight: float = 0.05
    lpips_after: int = 0                            # LPIPS term only from this optimizer step on


@dataclass(frozen=True)
class DensifyOptions(_Config):
    """Generative densification on top of the encoder (reconstruction.densify); off by default, so option files
    written before it existed load unchanged."""

    enabled: bool = False
    preset: str = "re10k"                           # reconstruction.densify.DENSIFIER_PRESETS name
    overrides: dict = field(default_factory=dict)   # further GaussianDensifier keyword arguments
    k_num: int | None = None                        # Gaussians densified per context view; None = the preset's
    freeze_encoder: bool = False                    # train the densifier alone on a fixed (eval-mode) encoder


@dataclass(frozen=True)
class ReconTrainOptions(_Config):
    version: int = OPTIONS_VERSION
    experiment: str = "re10k"
    outdir: str = ""
    desc: str = ""
    seed: int = 0
    num_gpus: int = 1                               # processes (GPUs, or CPU processes with --device cpu)
    batch_gpu: int = 2                              # scenes per process per forward pass
    accumulate: int = 2                             # forward passes per optimizer step
    steps: int = 300_000                            # optimizer steps of the whole schedule
    minutes: float | None = None                    # wall-clock budget: stop with a snapshot when reached
    tick_steps: int = 100                           # optimizer steps per tick (log line, stats, image grid)
    snapshot_ticks: int = 50                        # ticks between snapshots; 0 = only at the end
    grid_scenes: int = 4                            # rows of the per-tick image grid
    device: str = "auto"
    resume: str = ""                                # snapshot file or run directory
    init: str = ""                                  # plain encoder state_dict to start from
    debug_nan_at_step: int = -1                     # test hook: make the loss NaN at this step (-1 = never)
    data: DataOptions = field(default_factory=DataOptions)
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    loss: LossOptions = field(default_factory=LossOptions)
    densify: DensifyOptions = field(default_factory=DensifyOptions)

    def __post_init__(self):
        if self.version != OPTIONS_VERSION:
            raise ConfigError(f"ReconTrainOptions.version: expected {OPTIONS_VERSION}, got {self.version}")
        if self.experiment not in EXPERIMENTS:
            raise ConfigError(f"experiment: unknown name {self.experiment!r}; valid: {', '.join(EXPERIMENTS)}")
        require_choice("device", self.device, DEVICES)
        require_choice("model.backend", self.model.backend, BACKENDS)

    @property
    def examples_per_step(self) -> int:
        """Scenes per optimizer step over all processes."""
        return self.num_gpus * self.batch_gpu * self.accumulate

    @property
    def examples_per_rank_step(self) -> int:
        return self.batch_gpu * self.accumulate

    def validate(self) -> None:
        """Cross-option checks that need neither data nor models; ConfigError naming the option."""
        positive = {"--gpus": self.num_gpus, "--batch": self.batch_gpu, "--accumulate": self.accumulate,
                    "--steps": self.steps, "--tick-steps": self.tick_steps}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"--minutes must be > 0, got {self.minutes}")
        if not EXPERIMENTS[self.experiment]["trainable"]:
            raise ConfigError(f"--experiment={self.experiment} is for evaluation only (reconstruct.py test); "
                              f"train with {', '.join(n for n, e in EXPERIMENTS.items() if e['trainable'])}")
        s = self.sampler
        if s.num_context < 2 or s.num_target < 1:
            raise ConfigError(f"sampler: need >= 2 context views and >= 1 target, got {s.num_context} and "
                              f"{s.num_target}")
        if not (1 <= s.initial_min_gap <= s.initial_max_gap and 1 <= s.min_gap <= s.max_gap):
            raise ConfigError(f"sampler: gaps must satisfy 1 <= min <= max, got initial [{s.initial_min_gap}, "
                              f"{s.initial_max_gap}] and final [{s.min_gap}, {s.max_gap}]")
        d = self.data
        if min(d.image_shape) < 1 or not 0 < d.near < d.far:
            raise ConfigError(f"data: need a positive image shape and 0 < near < far, got {list(d.image_shape)}, "
                              f"near {d.near}, far {d.far}")
        if d.target_shape is not None and min(d.target_shape) < 1:
            raise ConfigError(f"--target-resolution (data.target_shape): expected two positive sizes (height, "
                              f"width), got {list(d.target_shape)}")
        lo, o = self.loss, self.optim  # (the field types already refuse non-finite numbers)
        if lo.lpips_weight < 0 or lo.mse_weight < 0 or o.lr <= 0:
            raise ConfigError("--lpips-weight and the MSE weight must be >= 0 and --lr > 0")
        if o.densify_lr is not None and o.densify_lr <= 0:
            raise ConfigError(f"--densify-lr must be > 0, got {o.densify_lr}")
        if not o.densify_eps > 0:
            raise ConfigError(f"--densify-eps must be > 0, got {o.densify_eps}")
        if self.densify.k_num is not None and self.densify.k_num < 1:
            raise ConfigError(f"--k-num must be >= 1, got {self.densify.k_num}")
        if self.densify.freeze_encoder and not (self.densify.enabled and (self.resume or self.init)):
            raise ConfigError("--freeze-encoder: needs --densify and trained encoder weights to keep fixed "
                              "(--resume BASE or --init WEIGHTS); without them the encoder would stay random")


# Experiment presets: dotted option paths -> values, applied over the dataclass defaults. `trainable: False` marks
# an evaluation-only preset. RE10K/ACID follow the official MVSplat experiment files (256x256 crops of 360x640
# frames, near 1 / far 100, 2 context + 4 targets, the bounded sampler's gap ramp over 150k steps); DTU is the
# official cross-dataset evaluation (near 2.125, far 4.525). `scenes` is the built-in data
# (dataset_tool.py scenes: 64x64, 40-frame scenes whose evaluation contexts are 10-14 frames apart) with the CPU
# model, a gap ramp from 6-8 to 10-14 frames over 300 steps and a snapshot every 250 steps.
_RE10K = {
    "data.image_shape": (256, 256), "data.near": 1.0, "data.far": 100.0, "data.frame_shape": (360, 640),
    "sampler.num_context": 2, "sampler.num_target": 4, "sampler.min_gap": 45, "sampler.max_gap": 192,
    "sampler.initial_min_gap": 25, "sampler.initial_max_gap": 45, "sampler.warmup_steps": 150_000,
    "model.preset": "re10k", "batch_gpu": 2, "accumulate": 2, "steps": 300_000, "loss.lpips_weight": 0.05,
    "tick_steps": 100, "snapshot_ticks": 50, "data.workers": 4, "densify.preset": "re10k",
}
EXPERIMENTS = {
    "re10k": {"trainable": True, "values": _RE10K},
    "acid": {"trainable": True, "values": dict(_RE10K)},
    "dtu": {"trainable": False, "values": dict(_RE10K, **{"data.near": 2.125, "data.far": 4.525,
                                                         "data.frame_shape": None})},
    "scenes": {"trainable": True, "values": {
        "data.image_shape": (64, 64), "data.near": 1.0, "data.far": 100.0, "data.frame_shape": None,
        "sampler.num_context": 2, "sampler.num_target": 3, "sampler.min_gap": 10, "sampler.max_gap": 14,
        "sampler.initial_min_gap": 6, "sampler.initial_max_gap": 8, "sampler.warmup_steps": 300,
        "sampler.uniform_gap": True,
        "model.preset": "small", "batch_gpu": 4, "accumulate": 1, "steps": 1000, "loss.lpips_weight": 0.0,
        "tick_steps": 50, "snapshot_ticks": 5, "data.workers": 1, "grid_scenes": 4,
        "densify.preset": "small",
    }},
}


def _set(options: _Config, path: str, value, full: str | None = None):
    """options with the dotted field `path` replaced (nested frozen dataclasses are rebuilt)."""
    head, _, rest = path.partition(".")
    names = {f.name for f in dataclasses.fields(options)}
    if head not in names or (rest and not dataclasses.is_dataclass(getattr(options, head))):
        raise ConfigError(f"unknown option {full or path!r} (known in {type(options).__name__}: "
                          f"{', '.join(sorted(names))})")
    if rest:
        return options.replace(**{head: _set(getattr(options, head), rest, value, full or path)})
    return options.replace(**{head: value})


def resolve_options(experiment: str, overrides: dict | None = None) -> ReconTrainOptions:
    """The experiment preset with `overrides` ({dotted path: value}; None values ignored) applied, type-checked
    through from_dict (so a wrong type raises ConfigError naming the option)."""
    if experiment not in EXPERIMENTS:
        raise ConfigError(f"--experiment: unknown name {experiment!r}; valid: {', '.join(EXPERIMENTS)}")
    options = ReconTrainOptions(experiment=experiment)
    values = dict(EXPERIMENTS[experiment]["values"])
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    for path, value in values.items():
        options = _set(options, path, value)
    return ReconTrainOptions.from_dict(options.to_dict())


def experiment_values(experiment: str) -> dict:
    """The preset's dotted values (evaluation uses its image shape and depth range)."""
    if experiment not in EXPERIMENTS:
        raise ConfigError(f"--experiment: unknown name {experiment!r}; valid: {', '.join(EXPERIMENTS)}")
    return dict(EXPERIMENTS[experiment]["values"])
