"""Launching a training run, the same for both halves (GAN and reconstruction): one process, N spawned processes
or one torchrun rank; what a run ends with (TrainingFault, the result's exit status).

A half describes itself once with a Launcher (its options class, how a rank builds its trainer, its result class,
its run folder name); Launcher.launch does the rest with torch_utils.run_control (run folder, training_options.json,
process group, spawned ranks whose user errors come back as themselves). A Launcher holds only module-level
classes and functions, so it pickles by reference and reaches spawned ranks whole.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from torch_utils.run_control import exit_status, launch_training, run_rank


class TrainingFault(RuntimeError):
    """A non-finite loss or gradient: the run stops with its last good snapshot (the message names where)."""


class RunResult:
    """Base of each half's TrainResult dataclass (fields run_dir, status, its progress counter, snapshot,
    message, rank_digests): the exit status a CLI ends with."""

    status: str

    @property
    def exit_status(self) -> int:
        """The process exit status of this run (torch_utils.run_control.exit_status)."""
        return exit_status(self.status)


@dataclass(frozen=True)
class Launcher:
    """How one half trains. make_trainer(options, run_dir, rank, world, device) -> an object with setup(),
    run() -> result_type and close(); options_type.from_dict rebuilds the options in a spawned rank; describe(options)
    names the run folder (outdir/NNNNN-<description>); on_cuda() runs once a rank has selected its CUDA device."""

    options_type: type
    make_trainer: Callable
    result_type: type
    describe: Callable
    on_cuda: Callable | None = None

    def process(self, rank: int, world: int, options, run_dir: str, init_method: str | None = None,
                local_rank: int = 0):
        """Body of one process: device set-up, process group, trainer; returns its result."""
        return run_rank(lambda device: self.make_trainer(options, run_dir, rank, world, device), rank, world,
                        options.device, init_method, local_rank, on_cuda=self.on_cuda)

    def launch(self, options):
        """Validate, create the run directory, write training_options.json and train (1 process, N spawned
        processes, or one torchrun rank). Returns rank 0's result (each torchrun rank returns its own)."""
        return launch_training(options, self.describe(options), self.process, functools.partial(_spawned, self),
                               self.result_type)


def _spawned(launcher: Launcher, index: int, init_method: str, world: int, options_dict: dict, run_dir: str) -> dict:
    """Entry of spawned rank `index` (picklable: a module-level function bound to a Launcher)."""
    options = launcher.options_type.from_dict(options_dict)
    return launcher.process(index, world, options, run_dir, init_method, index).__dict__
