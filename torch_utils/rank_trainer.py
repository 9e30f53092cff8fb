"""What one training process (rank) does the same in both halves, whatever it trains: its log and statistics
files, the stop request of SIGINT / SIGTERM, the DataLoader settings, the timing and memory statistics and the
statistics line of a tick, the cross-rank state check, snapshot writing and the teardown.

training.training_loop.Trainer and reconstruction.loop.ReconTrainer build on RankTrainer; they keep their own
set-up, step, snapshot contents and tick schedule.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import time
from typing import Callable

import torch
import tqdm

import dnnlib
from torch_utils import checkpoint, distributed, misc
from torch_utils.run_control import ignore_stop_signals, install_stop_handlers, restore_handlers, shutdown_loader
from torch_utils.stats import StatsCollector, StatsWriter


class RankTrainer:
    """The per-rank plumbing of a training run; rank 0 writes files. `step_name` is what the log calls one
    optimizer step."""

    step_name = "step"

    def __init__(self, run_dir: str, rank: int, world: int, device: torch.device):
        self.run_dir, self.rank, self.world, self.device = run_dir, rank, world, device
        self.log = dnnlib.setup_logging(run_dir, rank)
        self.stats = StatsCollector()
        self.writer = StatsWriter(run_dir) if rank == 0 else None
        self.stop_signal: str | None = None
        self.loader = None
        self.start_time = self.tick_start_time = time.time()
        self.maintenance_sec = 0.0

    def make_loader(self, dataset, batch_size: int, workers: int, sampler=None):
        """An iterator over a DataLoader of `dataset`; its workers leave stop signals to this process (which
        finishes the step and writes a snapshot) and are stopped for sure by close()."""
        return iter(torch.utils.data.DataLoader(
            dataset, sampler=sampler, batch_size=batch_size, num_workers=workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=2 if workers > 0 else None,
            persistent_workers=False, worker_init_fn=ignore_stop_signals if workers > 0 else None))

    def on_stop_signal(self, name: str) -> None:
        """Stop handler (run_control.install_stop_handlers): the step in progress ends, then a snapshot."""
        self.stop_signal = name
        self.log.warning(f"received {name}: finishing this {self.step_name}, then writing a snapshot")

    @contextlib.contextmanager
    def training_session(self, total: int, initial: int, unit: str):
        """For the training loop: SIGINT / SIGTERM ask for a stop (on_stop_signal) and rank 0 shows a progress bar
        (yielded); the previous handlers come back and the bar closes when the loop is left, also on errors."""
        previous = install_stop_handlers(self.on_stop_signal)
        progress = tqdm.tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, leave=False,
                             disable=None if self.rank == 0 else True)
        try:
            yield progress
        finally:
            progress.close()
            restore_handlers(previous)

    def report_timing(self, now: float) -> None:
        """This tick's wall times and memory peaks (the GPU peak counter restarts for the next tick)."""
        report = self.stats.report
        report("Timing/total_sec", now - self.start_time)
        report("Timing/sec_per_tick", now - self.tick_start_time)
        report("Timing/maintenance_sec", self.maintenance_sec)
        report("Resources/cpu_mem_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        if self.device.type == "cuda":
            report("Resources/peak_gpu_mem_gb", torch.cuda.max_memory_allocated(self.device) / 2**30)
            torch.cuda.reset_peak_memory_stats(self.device)

    def write_tick_stats(self, progress: float, format_line: Callable[[dict], str]) -> None:
        """Reduce the tick's statistics over the ranks; rank 0 appends them (at x = progress) and logs a line."""
        stats = self.stats.collect(self.device if self.device.type == "cuda" else "cpu")
        if self.rank == 0:
            self.writer.write(stats, progress)
            self.log.info(format_line(stats))

    def write_snapshot(self, payload: dict | None, filename: str) -> str | None:
        """Rank 0 writes run_dir/filename atomically; returns its path (None on other ranks)."""
        if self.rank != 0:
            return None
        path = os.path.join(self.run_dir, filename)
        checkpoint.atomic_torch_save(payload, path)
        return path

    def rank_digests(self, modules: dict) -> tuple:
        """sha256 of the state of `modules` ({name: module}) on every rank, in rank order; logs the differing
        tensors when the ranks diverged."""
        per_tensor = misc.state_digests(modules)
        digest = hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(per_tensor.items())).encode()).hexdigest()
        gathered = distributed.all_gather_objects((digest, per_tensor))
        digests = tuple(d for d, _ in gathered)
        if len(set(digests)) > 1:
            differing = sorted(k for k in per_tensor if len({tensors.get(k) for _, tensors in gathered}) > 1)
            self.log.error(f"state differs between processes in: {', '.join(differing[:10])}")
        elif self.world > 1:
            self.log.info(f"parameters identical across {self.world} processes")
        return digests

    def close(self) -> None:
        """Also on errors: stop the DataLoader workers first (they ignore stop signals, so a worker left to the
        interpreter's exit would be waited for forever), then the statistics and log files."""
        if self.loader is not None:
            shutdown_loader(self.loader)
            self.loader = None
        if self.writer is not None:
            self.writer.close()
        dnnlib.close_logging()
