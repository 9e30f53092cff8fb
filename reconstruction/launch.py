"""Launching reconstruction training (reconstruct.py train): the run folder's name and the result.

The launching itself (one process, N spawned processes, one torchrun rank) is the GAN half's too:
torch_utils.launcher. This file only tells it what a reconstruction run is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from reconstruction.config import ReconTrainOptions
from torch_utils.launcher import Launcher, RunResult


@dataclass
class TrainResult(RunResult):
    run_dir: str
    status: str            # "done" | "time_limit" | "interrupted" | "fault"
    step: int
    snapshot: str | None   # the last snapshot written (for a fault: the last good state)
    message: str = ""
    rank_digests: tuple = ()  # sha256 of the encoder (+ densifier) state per rank at the end (all equal under DDP)


def run_description(options: ReconTrainOptions) -> str:
    name = os.path.basename(os.path.normpath(options.data.path)) or "data"
    desc = f"{options.experiment}-{name}-gpus{options.num_gpus}-batch{options.batch_gpu}"
    return desc + (f"-{options.desc}" if options.desc else "")


def _make_trainer(options: ReconTrainOptions, run_dir: str, rank: int, world: int, device: torch.device):
    from reconstruction.loop import ReconTrainer  # noqa: deferred: the trainer module imports this one

    return ReconTrainer(options, run_dir, rank, world, device)


LAUNCHER = Launcher(ReconTrainOptions, _make_trainer, TrainResult, run_description)


def launch(options: ReconTrainOptions) -> TrainResult:
    """Validate, create the run directory, write training_options.json and train. Returns rank 0's result."""
    return LAUNCHER.launch(options)
