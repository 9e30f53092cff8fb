"""GSGAN training: set-up, the iteration loop and per-tick maintenance (logs, grids, snapshots, metrics).

`Trainer` runs in every process (rank); rank 0 writes files. Launching (single process, N spawned processes,
torchrun) and the run directory: training/launch.py; the fixed sample grid: training/sample_grid.py; what every
rank does the same in the reconstruction half: torch_utils/rank_trainer.py.
Resume is exact: a snapshot holds the networks, optimizer and ADA states, the image/tick/iteration counters
and every RNG (global per rank, the per-rank sampling generator, the per-rank data position).
The last good state is the last snapshot on disk (no copy of the networks is held in memory between snapshots):
a training fault stops the run and names that file.
"""
from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch

from torch_utils import checkpoint, distributed, misc
from torch_utils.launcher import TrainingFault
from torch_utils.rank_trainer import RankTrainer
from torch_utils.run_control import exit_status
from torch_utils.stats import format_tick_line
from training import loss as L
from training.config import TrainConfig
from training.launch import TrainResult, launch
from training.sample_grid import SampleGrid
from training.steps import PhaseData, PhaseRunner

__all__ = ["Trainer", "TrainResult", "TrainingFault", "launch"]  # launch: the entry point, also importable here


class Trainer(RankTrainer):
    """All state of one process's training run."""

    step_name = "iteration"

    def __init__(self, config: TrainConfig, run_dir: str, rank: int, world: int, device: torch.device):
        super().__init__(run_dir, rank, world, device)
        self.cfg = config
        self.cur_nimg = self.cur_tick = self.batch_idx = 0
        self.official_resume = False
        self.last_snapshot: str | None = None   # the last snapshot written by this run (rank 0)
        self.resumed_from: str | None = None
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
        self.loader = self.make_loader(self.dataset, per_rank, self.cfg.data.workers, sampler=self.sampler)

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
        status = "done"
        with self.training_session(int(self.cfg.total_kimg * 1000), self.cur_nimg, "img") as progress:
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
        return TrainResult(self.run_dir, status, self.cur_nimg, self.last_snapshot,
                           rank_digests=self.rank_digests({"G": self.G, "D": self.D, "G_ema": self.G_ema}))

    def end_tick(self, final: bool, run_metrics: bool = True) -> None:
        tick = self.cur_tick
        self.report_tick()
        self.write_tick_stats(self.cur_nimg / 1e3, format_tick_line)
        maintenance_start = time.time()
        self.average_buffers()
        self.cur_tick += 1
        self.tick_start_nimg = self.cur_nimg
        image_every, snap_every = self.cfg.image_snapshot_ticks, self.cfg.snapshot_ticks
        if self.rank == 0 and (final or (image_every and tick % image_every == 0)):
            self.grid.save_fakes(self.G_ema, self.device, self.run_dir, f"fakes{checkpoint.kimg_label(self.cur_nimg)}")
        if final or (snap_every and tick % snap_every == 0):
            # The payload (a full CPU copy of the networks and optimizers) is freed as soon as it is written.
            path = self.write_snapshot(self.payload(), checkpoint.snapshot_filename(self.cur_nimg))
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

    # ------------------------------------------------------------------------------------------ maintenance
    def prepare_grid(self) -> None:
        """The fixed grid of reals.png and fakes*.png (rank 0)."""
        if self.rank == 0:
            self.grid = SampleGrid(self.cfg, self.dataset, self.all_labels, self.G.z_dim)
            self.grid.save_reals(self.dataset, os.path.join(self.run_dir, "reals.png"))

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
        report("Timing/sec_per_kimg", (now - self.tick_start_time) / tick_nimg * 1e3)
        self.report_timing(now)

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
