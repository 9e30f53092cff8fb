"""What a reconstruction training run builds from its options: the encoder, the densifier of generative
densification, the learning-rate schedule and the densifier's random generator of one forward pass.
reconstruct.py builds the same models (on the meta device) to check and summarize a run before it starts."""
from __future__ import annotations

import hashlib

import torch

from reconstruction.config import ReconTrainOptions


def build_encoder(options: ReconTrainOptions):
    """The CostVolumeEncoder of the options' preset + overrides (ValueError naming a bad preset / key)."""
    from reconstruction.encoder import build_encoder as build  # noqa: deferred: launching stays cheap

    return build(options.model.preset, **options.model.overrides)


def build_densifier(options: ReconTrainOptions, encoder):
    """The GaussianDensifier of options.densify for `encoder` (None when densification is off): preset +
    overrides + k_num. DensifyError naming both numbers when the preset's feature width or SH degree differs from
    the encoder's."""
    d = options.densify
    if not d.enabled:
        return None
    from reconstruction.densify import DensifyError, build_densifier as build  # noqa: deferred

    overrides = dict(d.overrides)
    if d.k_num is not None:
        overrides["k_num"] = d.k_num
    densifier = build(d.preset, int(encoder.feature_dim), **overrides)
    if densifier.sh_degree != encoder.sh_degree:
        raise DensifyError(f"densifier preset {d.preset!r}: built for sh_degree={densifier.sh_degree}, but the "
                           f"encoder predicts sh_degree={encoder.sh_degree}; use the matching preset or "
                           f"--densify-arg sh_degree={encoder.sh_degree}")
    return densifier


def check_same_freeze(path: str, saved_options, frozen: bool) -> None:
    """A densified run resumes with its encoder frozen or trained as it was: the optimizer's groups differ."""
    from torch_utils.checkpoint import SnapshotError

    saved = saved_options.get("densify", {}) if isinstance(saved_options, dict) else {}
    was = bool(saved.get("freeze_encoder", False))
    if was != bool(frozen):
        raise SnapshotError(f"{path}: a run trained {'with' if was else 'without'} --freeze-encoder; resume it "
                            f"the same way")


def densify_generator(seed: int, rank: int, step: int, round_index: int) -> torch.Generator:
    """The CPU generator of one forward pass's densifier randomness: a pure function of (seed, rank, step, pass),
    so a resumed run draws exactly what the uninterrupted one drew."""
    text = f"gsgan-densify:{int(seed)}:{int(rank)}:{int(step)}:{int(round_index)}".encode()
    value = int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator().manual_seed(value)


def build_optimizer(encoder, densifier, options: ReconTrainOptions) -> torch.optim.Adam:
    """Adam over the encoder's parameters and, with densification, the densifier's as a second parameter group,
    so a fresh densifier fine-tuned on a trained encoder can take its own peak learning rate (--densify-lr) and
    Adam epsilon (--densify-eps: its gradients are far smaller than the encoder's)."""
    groups = [{"params": [p for p in encoder.parameters() if p.requires_grad], "lr": options.optim.lr}]
    if densifier is not None:
        groups.append({"params": [p for p in densifier.parameters() if p.requires_grad], "lr": peak_lrs(options)[1],
                       "eps": options.optim.densify_eps})
    return torch.optim.Adam(groups, lr=options.optim.lr)


def peak_lrs(options: ReconTrainOptions) -> list[float]:
    """Peak learning rates of the encoder and of the densifier (the densifier's defaults to the encoder's)."""
    o = options.optim
    return [o.lr, o.densify_lr if o.densify_lr is not None else o.lr]


def build_schedule(optimizer: torch.optim.Optimizer, options: ReconTrainOptions):
    """OneCycleLR as the official MVSplat: over steps + 10, pct_start 0.01, cosine, no momentum cycling; one
    peak per parameter group (build_optimizer)."""
    o = options.optim
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peak_lrs(options)[:len(optimizer.param_groups)],
        total_steps=options.steps + o.extra_schedule_steps, pct_start=o.pct_start, anneal_strategy="cos",
        cycle_momentum=False, div_factor=o.div_factor, final_div_factor=o.final_div_factor)
