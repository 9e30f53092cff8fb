"""Launching GAN training (train.py): the run folder's name, the official CUDA flags of every rank, the result.

The launching itself (one process, N spawned processes, one torchrun rank) is the reconstruction half's too:
torch_utils.launcher. This file only tells it what a GAN run is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from torch_utils.launcher import Launcher, RunResult
from training.config import TrainConfig


@dataclass
class TrainResult(RunResult):
    run_dir: str
    status: str            # "done" | "interrupted" | "fault"
    cur_nimg: int
    snapshot: str | None   # the last snapshot written (for a fault: the last good state)
    message: str = ""
    rank_digests: tuple = ()  # sha256 of G, D, G_ema state per rank at the end (all equal under DDP)


def run_description(config: TrainConfig) -> str:
    name = os.path.splitext(os.path.basename(os.path.normpath(config.data.path)))[0] or "data"
    desc = f"{config.cfg}-{name}-gpus{config.num_gpus}-batch{config.batch_size}-gamma{config.loss.r1_gamma:g}"
    return desc + (f"-{config.desc}" if config.desc else "")


def _official_cuda_flags() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # official: TF32 off, cuDNN benchmark on
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True


def _make_trainer(config: TrainConfig, run_dir: str, rank: int, world: int, device: torch.device):
    from training.training_loop import Trainer  # noqa: deferred: the trainer module imports this one

    return Trainer(config, run_dir, rank, world, device)


LAUNCHER = Launcher(TrainConfig, _make_trainer, TrainResult, run_description, on_cuda=_official_cuda_flags)


def launch(config: TrainConfig) -> TrainResult:
    """Validate, create the run directory, write training_options.json and train (1 process, N spawned
    processes, or one torchrun rank). Returns rank 0's result (each torchrun rank returns its own)."""
    return LAUNCHER.launch(config)
