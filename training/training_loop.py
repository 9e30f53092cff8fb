"""GSGAN training: set-up, the iteration loop and per-tick maintenance (logs, grids, snapshots, metrics).

`Trainer` runs in every process (rank); rank 0 writes files. Process launching (single process, N spawned
processes, torchrun) and the run directory live in training/launch code at the bottom of this file.
Resume is exact: a snapshot holds the networks, optimizer and ADA states, the image/tick/iteration counters
and every RNG (global per rank, the per-rank sampling generator, the per-rank data position).
The last good state is the last snapshot on disk (no copy of the networks is held in memory between snapshots):
a training fault stops the run and names that file.
"""
from __future__ import annotations

import copy
import hashlib
import os
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch
import tqdm

import dnnlib
from torch_utils import checkpoint, distributed, misc
from torch_utils.run_control import (exit_status, ignore_stop_signals, install_stop_handlers, launch_training,
                                     restore_handlers, run_rank, shutdown_loader)
from torch_utils.stats import StatsCollector, StatsWriter, format_tick_line
from training import loss as L
from training.config import TrainConfig
from training.steps import PhaseData, PhaseRunner

class TrainingFault(RuntimeError):
    """A non-finite loss or gradient (the message names the phase and the tick)."""


@dataclass
class TrainResult:
    run_dir: str
    status: str            # "done" | "interrupted" | "fault"
    cur_nimg: int
    snapshot: str | None   # the last snapshot written (for a fault: the last good state)
    message: str = ""
    rank_digests: tuple = ()  # sha256 of G, D, G_ema state per rank at the end (all equal under DDP)

    @property
    def exit_status(self) -> int:
        """The process exit status a CLI should end with (torch_utils.run_control.exit_status)."""
        return exit_status(self.status)



# fakes*.png render at least this many pixels per image: Gaussians are resolution-free, and a 16-px model's samples
# show what it learned only when rendered larger (the discriminator still sees the training resolution).
GRID_MIN_RESOLUTION = 128


def grid_shape(config: TrainConfig, resolution: int) -> tuple[int, int]:
    """(columns, rows): official clip(7680/W, 7, 32) x clip(4320/H, 4, 32) unless config.grid_size is set."""
    if config.grid_size is not None:
        return tuple(config.grid_size)
    return int(np.clip(7680 // resolution, 7, 32)), int(np.clip(4320 // resolution, 4, 32))




class Trainer:
    """All state of one process's training run."""

    def __init__(self, config: TrainConfig, run_dir: str, rank: int, world: int, device: torch.device):
        self.cfg, self.run_dir, self.rank, self.world, self.device = config, run_dir, rank, world, device
        self.log = dnnlib.setup_logging(run_dir, rank)
        self.stats = StatsCollector()
        self.writer = StatsWriter(run_dir) if rank == 0 else None
        self.stop_signal: str | None = None
        self.cur_nimg = self.cur_tick = self.batch_idx = 0
        self.official_resume = False
        self.last_snapshot: str | None = None   # the last snapshot written by this run (rank 0)
        self.resumed_from: str | None = None
        self.loader = None
        self.sample_gen = torch.Generator().manual_seed(config.seed * 7919 + 104729 * (rank + 1))
        misc.set_seed(config.seed, rank, world)

    # ------------------------------------------------------------------------------------------ set-up
    def setup(self) -> None:
        from training.dataset import DatasetError, ImageFolderDataset  # noqa: deferred so that launching stays cheap

        dc = self.cfg.data
        self.dataset = ImageFolderDataset(dc.path, resolution=dc.resolution or None, max_size=dc.max_size,
                                          xflip=dc.mirror, use_labels=dc.use_labels)
        if not self.dataset.has_labels:
            raise DatasetError(f"{dc.path}: GSGAN needs camera labels (--cond=True)")
        labels = np.stack([self.dataset.get_label(i) for i in range(len(self.dataset))])
        self.all_labels = torch.from_numpy(labels.astype(np.float32))
        self.resolution = self.dataset.resolution
        self._build_networks()
        self._build_optimizers()
        if self.cfg.resume:
            self._resume(self.cfg.resume)
        self.runner = PhaseRunner(self.G, self.D, self.augment_pipe, self.cfg, self.sample_gen, self.stats,
                                  official_resume=self.official_resume, ada=self.ada)
        self._build_loader()

    def _build_networks(self) -> None:
        from training.augment import AdaController, AugmentPipe
        from training.discriminator import Discriminator

        if self.cfg.data.resolution and self.cfg.data.resolution != self.resolution:
            from training.dataset import DatasetError  # noqa: deferred

            raise DatasetError(f"{self.cfg.data.path}: resolution {self.resolution} differs from the options' "
                               f"{self.cfg.data.resolution}")
        sized = self.cfg.replace(data=self.cfg.data.replace(resolution=self.resolution))
        g_kwargs, d_kwargs = sized.generator_kwargs(), sized.discriminator_kwargs()
        self.G = sized.generator_class()(**g_kwargs).train().requires_grad_(False).to(self.device)
        self.G.backend = g_kwargs.get("rendering_backend", "auto")  # a runtime choice: never saved in snapshots
        self.D = Discriminator(**d_kwargs).train().requires_grad_(False).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.augment_pipe, self.ada = None, None
        aug = self.cfg.augment
        if aug.mode != "noaug":
            self.augment_pipe = AugmentPipe(p=aug.p if aug.mode == "fixed" else 0.0).train().to(self.device)
            if aug.mode == "ada":
                speed = 100.0 if (self.cfg.compat and self.cfg.resume) else aug.speed_kimg
                self.ada = AdaController(self.augment_pipe, target=aug.target, interval=aug.interval,
                                         speed_kimg=speed)
        for module in (self.G, self.D, self.G_ema, self.augment_pipe):
            if module is not None:
                distributed.broadcast_module(module)

    def _build_optimizers(self) -> None:
        oc, interval = self.cfg.optim, self.cfg.loss.r1_interval
        ratio = interval / (interval + 1)  # lazy regularization correction (StyleGAN2)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=oc.glr, betas=(oc.beta1, oc.beta2), eps=oc.eps)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=oc.dlr * ratio,
                                      betas=(oc.beta1 ** ratio, oc.beta2 ** ratio), eps=oc.eps)

    def _build_loader(self) -> None:
        per_rank = self.cfg.batch_size // self.world
        self.sampler = misc.InfiniteSampler(len(self.dataset), self.rank, self.world, self.cfg.seed,
                                            start=self.batch_idx * per_rank)
        workers = self.cfg.data.workers
        self.loader = iter(torch.utils.data.DataLoader(
            self.dataset, sampler=self.sampler, batch_size=per_rank, num_workers=workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=2 if workers > 0 else None,
            persistent_workers=False, worker_init_fn=ignore_stop_signals if workers > 0 else None))

    # ------------------------------------------------------------------------------------------ resume
    def _resume(self, path: str) -> None:
        path = checkpoint.resolve_snapshot(path)
        data = checkpoint.read_snapshot_dict(path)
        for key, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema), ("augment_pipe", self.augment_pipe)):
            record = data.get(key)
            if (record is None) != (module is None):
                raise checkpoint.SnapshotError(f"{path}: {key} is {'missing' if record is None else 'present'} "
                                               f"but this run {'uses' if module is not None else 'does not use'} it")
            if module is not None:
                checkpoint.load_into(module, record, path, key, ignore=("rendering_backend", "p"))
        for opt, key in ((self.opt_G, "G"), (self.opt_D, "D")):
            # The moments come from the snapshot; lr / betas / eps are this run's options (a resumed run may change
            # them, and training_options.json records the new values).
            settings = [{k: group[k] for k in ("lr", "betas", "eps")} for group in opt.param_groups]
            opt.load_state_dict(data["optimizers"][key])
            for group, kept in zip(opt.param_groups, settings):
                group.update(kept)
        progress = data["progress"]
        self.cur_nimg, self.cur_tick = int(progress["cur_nimg"]), int(progress["cur_tick"])
        self.batch_idx = int(progress["batch_idx"])
        if self.ada is not None and data.get("ada") is not None:
            self.ada.load_state_dict(data["ada"])
        self.official_resume = self.cfg.compat
        ranks = data["rng"]["ranks"]
        self.resume_rng = ranks[self.rank] if len(ranks) == self.world else None
        self.resumed_from = path
        self.log.info(f"resuming from {path} at kimg {self.cur_nimg / 1e3:.3f} (tick {self.cur_tick})")
        if self.resume_rng is None:
            self.log.warning(f"{path} was written by {len(ranks)} process(es), this run has {self.world}: "
                             "random streams restart from the seed (resume is not bit-exact)")

    # ------------------------------------------------------------------------------------------ state
    def rank_state(self) -> dict:
        return {"global": misc.capture_rng_state(), "sample_generator": self.sample_gen.get_state(),
                "sampler": dict(self.sampler.state_dict(), start=self.batch_idx * (self.cfg.batch_size // self.world))}

    def restore_rank_state(self, state: dict) -> None:
        misc.restore_rng_state(state["global"])
        self.sample_gen.set_state(state["sample_generator"])

    def payload(self) -> dict | None:
        """Everything a snapshot holds, as CPU copies frozen in time (rank 0; None elsewhere). Every rank must
        call it: it gathers the per-rank RNG and data positions. Built only when a snapshot is written and
        dropped right after (a full copy of G, D, G_ema and both optimizers: about 1 GB at the paper's sizes)."""
        ranks = distributed.all_gather_objects(misc.cpu_copy(self.rank_state()))
        if self.rank != 0:
            return None
        modules = {"G": self.G, "D": self.D, "G_ema": self.G_ema, "augment_pipe": self.augment_pipe}
        return {
            "format": checkpoint.FORMAT, "version": checkpoint.VERSION,
            **{key: None if m is None else checkpoint.module_record(m) for key, m in modules.items()},
            "optimizers": {"G": misc.cpu_copy(self.opt_G.state_dict()), "D": misc.cpu_copy(self.opt_D.state_dict())},
            "progress": {"cur_nimg": self.cur_nimg, "cur_tick": self.cur_tick, "batch_idx": self.batch_idx,
                         "official_resume": self.official_resume},
            "ada": None if self.ada is None else misc.cpu_copy(self.ada.state_dict()),
            "rng": {"ranks": ranks, "num_ranks": self.world},
            "options": self.cfg.to_dict(),
            "training_set_kwargs": {"path": self.cfg.data.path, "resolution": self.resolution,
                                    "xflip": self.cfg.data.mirror, "use_labels": True},
        }

    def write_snapshot(self, payload: dict | None, nimg: int) -> str | None:
        """Rank 0 writes network-snapshot-KKKKKK.pt atomically; returns its path (None on other ranks)."""
        if self.rank != 0:
            return None
        path = os.path.join(self.run_dir, checkpoint.snapshot_filename(nimg))
        checkpoint.atomic_torch_save(payload, path)
        return path

    # ------------------------------------------------------------------------------------------ data
    def next_batches(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        images, labels = next(self.loader)
        images = images.to(self.device, non_blocking=True).to(torch.float32) / 127.5 - 1
        labels = labels.to(self.device, non_blocking=True).to(torch.float32)
        bg = self.cfg.batch_gpu
        return list(images.split(bg)), list(labels.split(bg))

    def sample_gen_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """z ~ N(0, I) and gen_c drawn uniformly from the dataset labels, for one round."""
        n = self.cfg.batch_gpu
        z = torch.randn(n, self.G.z_dim, generator=self.sample_gen)
        idx = torch.randint(len(self.all_labels), (n,), generator=self.sample_gen)
        return z.to(self.device, non_blocking=True), self.all_labels[idx].to(self.device, non_blocking=True)

    # ------------------------------------------------------------------------------------------ iteration
    def train_step(self) -> bool:
        """One iteration: Gmain, Dmain, Dreg (every r1_interval), EMA, counters. True when a stop was requested."""
        real_imgs, real_cs = self.next_batches()
        inject_nan = self.batch_idx == self.cfg.loss.debug_nan_at_iter
        phases = [("Gmain", self.G, self.opt_G,
                   lambda data, nimg, scale: self.runner.generator_main(data, nimg, scale, inject_nan)),
                  ("Dmain", self.D, self.opt_D, self.runner.discriminator_main)]
        if self.batch_idx % self.cfg.loss.r1_interval == 0:
            phases.append(("Dreg", self.D, self.opt_D, self.runner.discriminator_reg))
        stop = False
        for name, module, opt, fn in phases:
            rounds = [PhaseData(img, c, *self.sample_gen_inputs()) for img, c in zip(real_imgs, real_cs)]
            stop |= self.run_phase(name, module, opt, fn, rounds)
        self.update_ema()
        self.cur_nimg += self.cfg.batch_size
        self.batch_idx += 1
        if self.ada is not None:
            self.ada.step(self.cfg.batch_size, reduce_fn=self._reduce_sum)
        return stop

    def run_phase(self, name: str, module, opt, fn, rounds: list[PhaseData]) -> bool:
        """Forward/backward every round, all-reduce gradients (+ fault and stop flags), check, step."""
        start = time.time()
        module.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        losses = torch.stack([fn(data, self.cur_nimg, 1.0 / len(rounds)) for data in rounds])
        module.requires_grad_(False)
        flags = torch.stack([(~torch.isfinite(losses)).any().float(),
                             losses.new_full((), float(self.stop_signal is not None))])  # no upload
        params = [p for p in module.parameters() if p.grad is not None]
        reduced, finite = distributed.average_gradients(params, extra=flags)
        # The step's one deliberate host sync per phase: the fault and stop decisions need the values.
        loss_bad, stop, grads_ok = torch.cat([reduced.float(), finite.float().view(1)]).tolist()
        if loss_bad > 0 or not grads_ok:
            what = "loss" if loss_bad > 0 else "gradient"
            message = (f"non-finite {what} in phase {name} at tick {self.cur_tick} "
                       f"(kimg {self.cur_nimg / 1e3:.3f}, iteration {self.batch_idx})")
            if self.cfg.nonfinite == "stop":
                raise TrainingFault(message)
            self.log.warning(message + "; replaced (NaN -> 0, inf -> +-1e5)")
        distributed.replace_nonfinite_(params)
        opt.step()
        self.stats.report(f"Timing/{name}_sec", time.time() - start)
        return stop > 0

    @torch.no_grad()
    def update_ema(self) -> None:
        """G_ema = lerp(G, G_ema, beta) for parameters; buffers (w_avg) copied. No ramp-up after a compat resume."""
        rampup = None if self.official_resume else self.cfg.ema_rampup
        beta = L.ema_beta(self.cur_nimg, self.cfg.batch_size, self.cfg.ema_kimg, rampup)
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    @torch.no_grad()
    def average_buffers(self) -> None:
        """Average G's floating-point buffers (w_avg) over ranks, then copy them to G_ema. w_avg is an EMA, linear
        in its inputs, so averaging once per tick equals tracking the mean over every rank's batches."""
        if self.world == 1:
            return
        for buffer in self.G.buffers():
            if buffer.is_floating_point():
                reduced = self._reduce_sum(buffer.detach().clone()) / self.world
                buffer.copy_(reduced.to(buffer.device))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        reduce_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        return distributed.all_reduce_sum_(tensor.to(reduce_device)).cpu()

    # ------------------------------------------------------------------------------------------ loop
    def run(self) -> TrainResult:
        self.start_time = self.tick_start_time = time.time()
        self.tick_start_nimg = self.cur_nimg
        if self.cur_nimg >= self.cfg.total_kimg * 1000:  # a resume at or past --kimg: not one more iteration
            message = (f"nothing to train: {self.resumed_from} is at kimg {self.cur_nimg / 1e3:.3f}, "
                       f"--kimg is {self.cfg.total_kimg:g}")
            self.log.info(message)
            return TrainResult(self.run_dir, "done", self.cur_nimg, self.resumed_from if self.rank == 0 else None,
                               message)
        self.prepare_grid()
        self.log_start()
        if getattr(self, "resume_rng", None) is not None:  # after start-up work that used the global RNGs
            self.restore_rank_state(self.resume_rng)
        previous = install_stop_handlers(self._on_stop_signal)
        status = "done"
        progress = tqdm.tqdm(total=int(self.cfg.total_kimg * 1000), initial=self.cur_nimg, unit="img",
                             disable=None if self.rank == 0 else True, dynamic_ncols=True, leave=False)
        try:
            while True:
                stop = self.train_step()
                progress.update(self.cfg.batch_size)
                done = self.cur_nimg >= self.cfg.total_kimg * 1000
                tick_over = self.cur_nimg >= self.tick_start_nimg + self.cfg.kimg_per_tick * 1000
                if not (done or stop or self.cur_tick == 0 or tick_over):
                    continue
                self.end_tick(final=done or stop, run_metrics=not stop)
                if stop:
                    status = "interrupted"
                    self.log.warning(f"interrupted by {self.stop_signal or 'a signal on another rank'} at kimg "
                                     f"{self.cur_nimg / 1e3:.3f} of {self.cfg.total_kimg:g}; snapshot: "
                                     f"{self.last_snapshot}; exit status {exit_status(status)} (not finished: "
                                     f"continue with --resume)")
                if done or stop:
                    break
        except TrainingFault as fault:
            return self._on_fault(fault)
        finally:
            progress.close()
            restore_handlers(previous)
        return TrainResult(self.run_dir, status, self.cur_nimg, self.last_snapshot,
                           rank_digests=self.check_rank_consistency())

    def check_rank_consistency(self) -> tuple:
        """Digest of every rank's G, D and G_ema state; logs the differing tensors when the ranks diverged."""
        per_tensor = misc.state_digests({"G": self.G, "D": self.D, "G_ema": self.G_ema})
        digest = hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(per_tensor.items())).encode()).hexdigest()
        gathered = distributed.all_gather_objects((digest, per_tensor))
        digests = tuple(d for d, _ in gathered)
        if len(set(digests)) > 1:
            differing = sorted(k for k in per_tensor if len({tensors.get(k) for _, tensors in gathered}) > 1)
            self.log.error(f"state differs between processes in: {', '.join(differing[:10])}")
        elif self.world > 1:
            self.log.info(f"parameters identical across {self.world} processes")
        return digests

    def end_tick(self, final: bool, run_metrics: bool = True) -> None:
        tick = self.cur_tick
        self.report_tick()
        stats = self.stats.collect(self.device if self.device.type == "cuda" else "cpu")
        if self.rank == 0:
            self.writer.write(stats, self.cur_nimg / 1e3)
            self.log.info(format_tick_line(stats))
        maintenance_start = time.time()
        self.average_buffers()
        self.cur_tick += 1
        self.tick_start_nimg = self.cur_nimg
        image_every, snap_every = self.cfg.image_snapshot_ticks, self.cfg.snapshot_ticks
        if self.rank == 0 and (final or (image_every and tick % image_every == 0)):
            self.save_fakes(f"fakes{checkpoint.kimg_label(self.cur_nimg)}")
        if final or (snap_every and tick % snap_every == 0):
            path = self.write_snapshot(self.payload(), self.cur_nimg)  # the payload is freed once written
            self.last_snapshot = path if self.rank == 0 else None
            if run_metrics:
                self.run_metrics(path)
        self.maintenance_sec = time.time() - maintenance_start
        self.tick_start_time = time.time()

    def _on_fault(self, fault: TrainingFault) -> TrainResult:
        """The last good state is the last snapshot on disk: this run's latest, else the one it resumed from."""
        path = self.last_snapshot or self.resumed_from
        if path is None:
            kept = "no snapshot was written before the fault (--snap sets how often one is)"
        else:
            kept = f"last good snapshot: {path}"
        message = f"{fault}: training stopped; {kept}"
        self.log.error(message)
        return TrainResult(self.run_dir, "fault", self.cur_nimg, path if self.rank == 0 else None, message)

    # ------------------------------------------------------------------------------------------ signals
    def _on_stop_signal(self, name: str) -> None:
        self.stop_signal = name
        self.log.warning(f"received {name}: finishing this iteration, then writing a snapshot")

    # ------------------------------------------------------------------------------------------ maintenance
    def prepare_grid(self) -> None:
        """Fixed grid reals/z/c for reals.png and fakes*.png (rank 0)."""
        if self.rank != 0:
            return
        self.grid_size = grid_shape(self.cfg, self.resolution)
        count = self.grid_size[0] * self.grid_size[1]
        rng = np.random.RandomState(self.cfg.seed)
        idx = rng.choice(len(self.dataset), count, replace=count > len(self.dataset))
        reals = torch.from_numpy(np.stack([self.dataset[int(i)][0] for i in idx])).float() / 127.5 - 1
        misc.save_image_grid(reals, os.path.join(self.run_dir, "reals.png"), self.grid_size)
        self.grid_z = torch.randn(count, self.G.z_dim, generator=torch.Generator().manual_seed(self.cfg.seed))
        self.grid_c = self.all_labels[torch.from_numpy(idx)]

    @torch.no_grad()
    def save_fakes(self, name: str) -> None:
        """fakesKKKKKK.png (G_ema, background on) and fakesKKKKKK_depth.png (negated depth, min-max), rendered at
        max(training resolution, GRID_MIN_RESOLUTION) per image."""
        images, depths = [], []
        resolution = max(self.resolution, GRID_MIN_RESOLUTION)
        for z, c in zip(self.grid_z.split(self.cfg.batch_gpu), self.grid_c.split(self.cfg.batch_gpu)):
            out = self.G_ema(z.to(self.device), c.to(self.device), neural_rendering_resolution=resolution)
            images.append(out["image"].cpu())
            depths.append(-out["image_depth"].cpu())
        depth = torch.cat(depths)
        lo, hi = float(depth.min()), float(depth.max())
        misc.save_image_grid(torch.cat(images), os.path.join(self.run_dir, f"{name}.png"), self.grid_size)
        misc.save_image_grid(depth, os.path.join(self.run_dir, f"{name}_depth.png"), self.grid_size,
                             drange=(lo, hi if hi > lo else lo + 1))

    def log_start(self) -> None:
        if self.rank != 0:
            return
        counts = self.G.gaussian_counts()
        z = torch.zeros(1, self.G.z_dim, device=self.device)
        c = self.all_labels[:1].to(self.device)
        out, g_table = misc.module_summary(self.G, (z, c))
        _, d_table = misc.module_summary(self.D, (out["image"], c))
        self.log.info(f"run directory: {self.run_dir}")
        self.log.info(f"dataset: {self.cfg.data.path} ({len(self.dataset)} images at {self.resolution}x"
                      f"{self.resolution}); {self.world} process(es) on {self.device}")
        self.log.info(f"{g_table}\n{d_table}")
        self.log.info(f"Gaussians per sample: levels {counts['levels']}, rendered foreground {counts['foreground']},"
                      f" anchors {counts['anchors']}, background {counts['background']}, total {counts['total']}")
        self.log.info(f"training for {self.cfg.total_kimg} kimg from kimg {self.cur_nimg / 1e3:.3f}")

    def report_tick(self) -> None:
        now = time.time()
        tick_nimg = max(self.cur_nimg - self.tick_start_nimg, 1)
        report = self.stats.report
        report("Progress/tick", self.cur_tick)
        report("Progress/kimg", self.cur_nimg / 1e3)
        report("Progress/augment", float(self.augment_pipe.p) if self.augment_pipe is not None else 0.0)
        for key, value in self.runner.schedule(self.cur_nimg).items():
            report(f"Progress/{key}", float(value))
        report("Timing/total_sec", now - self.start_time)
        report("Timing/sec_per_tick", now - self.tick_start_time)
        report("Timing/sec_per_kimg", (now - self.tick_start_time) / tick_nimg * 1e3)
        report("Timing/maintenance_sec", getattr(self, "maintenance_sec", 0.0))
        report("Resources/cpu_mem_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        if self.device.type == "cuda":
            report("Resources/peak_gpu_mem_gb", torch.cuda.max_memory_allocated(self.device) / 2**30)
            torch.cuda.reset_peak_memory_stats(self.device)

    def run_metrics(self, snapshot_path: str | None) -> None:
        if not self.cfg.metrics:
            return
        from metrics import metric_main  # noqa: deferred (heavy, optional during training)

        dataset_kwargs = {"path": self.cfg.data.path, "resolution": self.resolution}
        for metric in self.cfg.metrics:
            result = metric_main.calc_metric(metric, G=self.G_ema, dataset_kwargs=dataset_kwargs,
                                             num_gpus=self.world, rank=self.rank, device=self.device,
                                             progress=self.rank == 0)
            if self.rank == 0:
                metric_main.report_metric(result, self.run_dir, snapshot_path)
                self.log.info(f"metric {metric}: {result['results']} ({result['total_time_str']})")

    def close(self) -> None:
        """Also on errors: stop the DataLoader workers first (they ignore stop signals, so a worker left to the
        interpreter's exit would be waited for forever)."""
        if self.loader is not None:
            shutdown_loader(self.loader)
            self.loader = None
        if self.writer is not None:
            self.writer.close()
        dnnlib.close_logging()


# ---------------------------------------------------------------------------------------------- launching
def run_description(config: TrainConfig) -> str:
    name = os.path.splitext(os.path.basename(os.path.normpath(config.data.path)))[0] or "data"
    desc = f"{config.cfg}-{name}-gpus{config.num_gpus}-batch{config.batch_size}-gamma{config.loss.r1_gamma:g}"
    return desc + (f"-{config.desc}" if config.desc else "")


def _official_cuda_flags() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # official: TF32 off, cuDNN benchmark on
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True


def training_process(rank: int, world: int, config: TrainConfig, run_dir: str, init_method: str | None = None,
                     local_rank: int = 0) -> TrainResult:
    """Body of one process: device set-up, process group, Trainer."""
    return run_rank(lambda device: Trainer(config, run_dir, rank, world, device), rank, world, config.device,
                    init_method, local_rank, on_cuda=_official_cuda_flags)


def _spawned(index: int, init_method: str, world: int, config_dict: dict, run_dir: str) -> dict:
    result = training_process(index, world, TrainConfig.from_dict(config_dict), run_dir, init_method, index)
    return result.__dict__


def launch(config: TrainConfig) -> TrainResult:
    """Validate, create the run directory, write training_options.json and train (1 process, N spawned
    processes, or one torchrun rank). Returns rank 0's result (each torchrun rank returns its own)."""
    return launch_training(config, run_description(config), training_process, _spawned, TrainResult)
