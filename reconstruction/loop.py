"""Reconstruction training: set-up, the optimizer-step loop and per-tick maintenance (log line, stats, image grid,
snapshots). Launching (one process, N spawned processes, or torchrun): reconstruction/launch.py; the models and
schedule it builds: reconstruction/train_setup.py; the tick's log line and grid: reconstruction/tick_outputs.py;
what every rank does the same in the GAN half: torch_utils/rank_trainer.py.

Mirrors training/training_loop.py (the GAN loop): rank 0 writes files; gradients are averaged over ranks in one
all-reduce that also carries the fault / stop / time-up flags, so every rank takes the same decision; SIGINT or
SIGTERM finishes the step, writes a snapshot and exits; a non-finite loss or gradient stops with the last good
snapshot. Resume is exact: a snapshot holds the encoder, Adam and OneCycleLR states, the step, every rank's data
position (examples consumed) and RNG states, so continuing gives the parameters of an uninterrupted run.

With generative densification on (options.densify), the model is the encoder plus a GaussianDensifier trained
jointly: the targets are rendered from the coarse (encoder) and from the densified Gaussians and the loss is the
sum of both (MSE + LPIPS each), as the official GDM scene model. The densifier's random choices (order shuffles,
stochastic depth) come from a CPU generator seeded by (seed, rank, step, pass), so resume stays exact. `--densify
--resume BASE` with BASE a snapshot of a run without densification is a fine-tune: the encoder weights are loaded,
the densifier, optimizer and schedule start fresh at step 0.
"""
from __future__ import annotations

import os
import time

import torch

from reconstruction import tick_outputs
from reconstruction.config import ReconTrainOptions
from reconstruction.launch import TrainResult, launch
from reconstruction.loss import ReconstructionLoss
from reconstruction.train_setup import (build_densifier, build_encoder, build_optimizer, build_schedule,
                                        check_same_freeze, densify_generator)
from torch_utils import checkpoint, distributed, misc
from torch_utils.launcher import TrainingFault
from torch_utils.rank_trainer import RankTrainer

__all__ = ["ReconTrainer", "TrainResult", "TrainingFault", "launch"]  # launch: the entry point, also importable here


class ReconTrainer(RankTrainer):
    """All state of one process's reconstruction training run."""

    def __init__(self, options: ReconTrainOptions, run_dir: str, rank: int, world: int, device: torch.device):
        self.created = time.time()  # --minutes counts set-up time too (data, model, an extension build)
        super().__init__(run_dir, rank, world, device)
        self.opts = options
        self.step = self.tick = self.examples_seen = 0
        self.last_snapshot: str | None = None
        self.last_good: tuple | None = None
        self.resume_rng = None
        self.grid_batch = None
        self.densifier = None
        self.skipped_total: dict[str, int] = {}
        misc.set_seed(options.seed, rank, world)

    # ------------------------------------------------------------------------------------------ set-up
    def setup(self) -> None:
        self.encoder = build_encoder(self.opts).to(self.device).train()
        if self.opts.init:
            checkpoint.load_state_dict_file(self.opts.init, self.encoder, what="--init")
            self.log.info(f"initialized the encoder from {self.opts.init}")
        self.densifier = build_densifier(self.opts, self.encoder)
        distributed.broadcast_module(self.encoder)
        if self.densifier is not None:
            self.densifier = self.densifier.to(self.device).train()
            distributed.broadcast_module(self.densifier)
        if self.frozen_encoder:
            self.encoder.requires_grad_(False)  # out of the optimizer (build_optimizer keeps requires_grad only)
        self.optimizer = build_optimizer(self.encoder, self.densifier, self.opts)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]  # encoder first
        self.scheduler = build_schedule(self.optimizer, self.opts)
        lo = self.opts.loss
        self.loss = ReconstructionLoss(lo.mse_weight, lo.lpips_weight, lo.lpips_after)
        if self.opts.resume:
            self._resume(self.opts.resume)
        self._build_loader()

    def _build_loader(self) -> None:
        from reconstruction.dataset import SceneStream  # noqa: deferred
        from reconstruction.view_sampler import BoundedViewSampler

        s, d = self.opts.sampler, self.opts.data
        sampler = BoundedViewSampler(num_context=s.num_context, num_target=s.num_target, min_gap=s.min_gap,
                                     max_gap=s.max_gap, initial_min_gap=s.initial_min_gap,
                                     initial_max_gap=s.initial_max_gap, warmup_steps=s.warmup_steps,
                                     uniform_gap=s.uniform_gap)
        self.stream = SceneStream(
            d.path, "train", sampler, image_shape=tuple(d.image_shape), near=d.near, far=d.far, flip=d.flip,
            max_fov_deg=d.max_fov_deg, frame_shape=None if d.frame_shape is None else tuple(d.frame_shape),
            seed=self.opts.seed, rank=self.rank, world_size=self.world, start=self.examples_seen,
            examples_per_step=self.opts.examples_per_step, cache_chunks=d.cache_chunks,
            batch_size=self.opts.batch_gpu, report_skips=True, target_shape=d.target_or_image_shape)
        self.loader = self.make_loader(self.stream, self.opts.batch_gpu, d.workers)

    # ------------------------------------------------------------------------------------------ resume
    def _resume(self, path: str) -> None:
        path = checkpoint.resolve_snapshot(path)
        data = checkpoint.read_recon_snapshot_dict(path)
        checkpoint.load_into(self.encoder, data["encoder"], path, "encoder")
        if self.densifier is not None and data["densifier"] is None:
            self._start_fine_tune(path)
            return
        if self.densifier is None and data["densifier"] is not None:
            raise checkpoint.SnapshotError(f"{path}: a run with generative densification; resume it with "
                                           f"--densify (and its densifier options)")
        if self.densifier is not None:
            checkpoint.load_into(self.densifier, data["densifier"], path, "densifier")
            check_same_freeze(path, data["options"], self.frozen_encoder)
        saved_steps = data["options"].get("steps") if isinstance(data["options"], dict) else None
        if saved_steps != self.opts.steps:
            raise checkpoint.SnapshotError(f"{path}: its schedule spans --steps={saved_steps}, this run has "
                                           f"--steps={self.opts.steps}; resume with the same --steps")
        try:
            self.optimizer.load_state_dict(data["optimizer"])
            self.scheduler.load_state_dict(data["scheduler"])
        except (ValueError, KeyError, TypeError) as error:
            raise checkpoint.SnapshotError(f"{path}: optimizer/scheduler state does not fit: {error}") from None
        progress = data["progress"]
        self.step, self.tick = int(progress["step"]), int(progress.get("tick", 0))
        seen = list(progress.get("examples_seen", []))
        ranks = data["rng"].get("ranks", []) if isinstance(data["rng"], dict) else []
        if len(seen) == self.world and len(ranks) == self.world:
            self.examples_seen, self.resume_rng = int(seen[self.rank]), ranks[self.rank]
        else:
            self.examples_seen = -(-int(sum(seen)) // self.world)
            self.log.warning(f"{path} was written by {len(seen)} process(es), this run has {self.world}: data "
                             f"positions are re-split and random streams restart from the seed (not bit-exact)")
        self.resumed_from = path
        self.log.info(f"resuming from {path} at step {self.step}")

    def _start_fine_tune(self, path: str) -> None:
        """--densify --resume of a run without densification: its encoder weights (already loaded, strictly)
        and nothing else; the densifier, optimizer, schedule, data position and RNGs start fresh at step 0."""
        self.log.info(f"fine-tuning with generative densification: encoder weights from {path} (a run without "
                      f"densification); fresh densifier, optimizer and schedule from step 0 of {self.opts.steps}")

    # ------------------------------------------------------------------------------------------ state
    def payload(self) -> dict | None:
        """Everything a snapshot holds, as CPU copies frozen in time (rank 0; None elsewhere). Every rank must
        call it: it gathers the per-rank RNG states and data positions."""
        mine = misc.cpu_copy({"global": misc.capture_rng_state(), "examples_seen": self.examples_seen})
        ranks = distributed.all_gather_objects(mine)
        if self.rank != 0:
            return None
        return {
            "format": checkpoint.RECON_FORMAT, "version": checkpoint.RECON_VERSION,
            "encoder": checkpoint.module_record(self.encoder),
            "densifier": None if self.densifier is None else checkpoint.module_record(self.densifier),
            "optimizer": misc.cpu_copy(self.optimizer.state_dict()),
            "scheduler": misc.cpu_copy(self.scheduler.state_dict()),
            "progress": {"step": self.step, "tick": self.tick,
                         "examples_seen": [int(r["examples_seen"]) for r in ranks]},
            "rng": {"ranks": [r["global"] for r in ranks], "num_ranks": self.world},
            "options": self.opts.to_dict(),
        }

    # ------------------------------------------------------------------------------------------ iteration
    def next_batch(self) -> dict:
        from reconstruction.views import batch_to

        from reconstruction.dataset import SKIP_REASONS

        batch = next(self.loader)
        skipped = batch.pop("skipped", None)  # [B, reasons]: skips made to fill each example (any worker)
        if skipped is not None:
            for column, reason in enumerate(SKIP_REASONS):
                self.stats.report(f"Data/skipped/{reason}", skipped[:, column].float())
                self.skipped_total[reason] = self.skipped_total.get(reason, 0) + int(skipped[:, column].sum())
        if self.grid_batch is None and self.rank == 0:
            n = min(self.opts.grid_scenes, len(batch["key"]))
            self.grid_batch = {"key": list(batch["key"][:n]),
                               **{part: {k: v[:n].clone() for k, v in batch[part].items()}
                                  for part in ("context", "target")}}
        return batch_to(batch, self.device)

    def forward(self, batch: dict):
        """(encoder output, render of the target views)."""
        from reconstruction.views import to_cameras
        from splatting import render

        out = self.encoder(batch["context"])
        rendered = render(out.gaussians, to_cameras(batch["target"]), backend=self.opts.model.backend)
        return out, rendered

    @property
    def frozen_encoder(self) -> bool:
        return bool(self.opts.densify.enabled and self.opts.densify.freeze_encoder)

    def densify_forward(self, batch: dict, generator: torch.Generator | None):
        """(encoder output, coarse render, DensifyOutput, fine render) of the target views."""
        out, coarse = self.forward(batch)
        return (out, coarse, *self._densify_and_render(batch, out, generator))

    def _densify_and_render(self, batch: dict, out, generator: torch.Generator | None):
        """(DensifyOutput, fine render of the target views) of encoder output `out`."""
        from reconstruction.views import to_cameras
        from splatting import render

        dense = self.densifier(batch["context"], out, generator=generator, backend=self.opts.model.backend)
        fine = render(dense.gaussians, to_cameras(batch["target"]), backend=self.opts.model.backend)
        return dense, fine

    def _densify_pass(self, batch: dict, round_index: int):
        """Loss of one forward pass with densification, statistics reported: L(coarse) + L(fine), or L(fine) alone
        with a frozen encoder (the coarse render's loss has no gradient then, so it is not rendered)."""
        from reconstruction.metrics import psnr

        generator = densify_generator(self.opts.seed, self.rank, self.step, round_index)
        if self.frozen_encoder:
            with torch.no_grad():
                out = self.encoder(batch["context"])
            renders = {}
        else:
            out, coarse = self.forward(batch)
            renders = {"coarse": coarse.color}
        dense, fine = self._densify_and_render(batch, out, generator)
        renders["fine"] = fine.color
        gt = batch["target"]["image"]
        terms = self.loss.terms(renders, gt, self.step)
        for part, values in terms.items():
            for name in ("mse", "lpips"):
                if name in values:
                    self.stats.report(f"Loss/{part}/{name}", values[name].detach())
        self.stats.report("Densify/gaussians", float(dense.gaussians.num_gaussians))
        self.stats.report("Timing/densify_sec", dense.timings["total"])
        with torch.no_grad():
            for part, color in renders.items():
                self.stats.report(f"Metrics/psnr_{part}", psnr(color.flatten(0, 1), gt.flatten(0, 1)))
        return sum(values["total"] for values in terms.values())

    def train_step(self, deadline: float | None) -> tuple[bool, bool]:
        """One optimizer step over `accumulate` forward passes. Returns (stop requested, time is up)."""
        from reconstruction.metrics import psnr

        start = time.time()
        self.encoder.train(not self.frozen_encoder)  # a frozen encoder runs as at inference (normalization stats)
        if self.densifier is not None:
            self.densifier.train()
        self.optimizer.zero_grad(set_to_none=True)
        rounds, bad_loss = self.opts.accumulate, False
        for round_index in range(rounds):
            batch = self.next_batch()
            if self.densifier is not None:
                total = self._densify_pass(batch, round_index)
                if self.step == self.opts.debug_nan_at_step:
                    total = total * float("nan")
                bad_loss |= not bool(torch.isfinite(total))
                (total / rounds).backward()
                self.examples_seen += len(batch["key"])
                self.stats.report("Loss/total", total.detach())
                continue
            _, rendered = self.forward(batch)
            gt = batch["target"]["image"]
            terms = self.loss(rendered.color, gt, self.step)
            total = terms["total"]
            if self.step == self.opts.debug_nan_at_step:
                total = total * float("nan")
            bad_loss |= not bool(torch.isfinite(total))
            (total / rounds).backward()
            self.examples_seen += len(batch["key"])
            for name in ("mse", "lpips"):
                if name in terms:
                    self.stats.report(f"Loss/{name}", terms[name].detach())
            self.stats.report("Loss/total", total.detach())
            with torch.no_grad():
                self.stats.report("Metrics/psnr_train", psnr(rendered.color.flatten(0, 1), gt.flatten(0, 1)))
        time_up = deadline is not None and time.time() >= deadline
        flags = torch.tensor([float(bad_loss), float(self.stop_signal is not None), float(time_up)])
        if self.densifier is not None and self.world > 1:
            # A parameter left out of a pass on one rank only (e.g. by stochastic depth) must still take part in
            # the all-reduce, or the flattened gradients of the ranks would not line up.
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        params = [p for p in self.params if p.grad is not None]
        reduced, finite = distributed.average_gradients(params, extra=flags)
        loss_bad, stop, time_up = (float(v) > 0 for v in reduced.tolist())
        if loss_bad or not bool(finite):
            raise TrainingFault(f"non-finite {'loss' if loss_bad else 'gradient'} at step {self.step} "
                                f"(tick {self.tick})")
        if self.opts.optim.clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.opts.optim.clip_norm)
            self.stats.report("Progress/grad_norm", norm.detach())
        # the trained parameters' rate: the encoder's, or the densifier's when the encoder is frozen
        self.stats.report("Progress/lr", self.optimizer.param_groups[-1 if self.frozen_encoder else 0]["lr"])
        if len(self.optimizer.param_groups) > 1:
            self.stats.report("Progress/lr_densify", self.optimizer.param_groups[1]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.stats.report("Timing/sec_per_step", time.time() - start)
        return stop, time_up

    # ------------------------------------------------------------------------------------------ loop
    def run(self) -> TrainResult:
        self.start_time = self.tick_start_time = time.time()
        self.tick_start_step = self.step
        deadline = None if self.opts.minutes is None else self.created + self.opts.minutes * 60
        self.log_start()
        if self.resume_rng is not None:  # after start-up work that used the global RNGs
            misc.restore_rng_state(self.resume_rng)
        self.last_good = (self.step, self.payload(), getattr(self, "resumed_from", None))
        status = "done"
        with self.training_session(self.opts.steps, self.step, "step") as progress:
            try:
                while self.step < self.opts.steps:
                    stop, time_up = self.train_step(deadline)
                    progress.update(1)
                    done = self.step >= self.opts.steps
                    tick_over = self.step >= self.tick_start_step + self.opts.tick_steps
                    if not (done or stop or time_up or self.tick == 0 or tick_over):
                        continue
                    self.end_tick(final=done or stop or time_up)
                    if stop:
                        status = "interrupted"
                        self.log.info(f"stopped by {self.stop_signal or 'a signal on another rank'} at step "
                                      f"{self.step}; snapshot: {self.last_snapshot}")
                        break
                    if time_up and not done:
                        status = "time_limit"
                        self.log.info(f"--minutes={self.opts.minutes:g} reached at step {self.step} of "
                                      f"{self.opts.steps}; snapshot: {self.last_snapshot}")
                        break
            except TrainingFault as fault:
                return self._on_fault(fault)
        if any(self.skipped_total.values()):
            self.log.info("examples skipped by rank 0 (and refilled from the same epoch): "
                          + ", ".join(f"{n} {reason}" for reason, n in self.skipped_total.items() if n))
        if self.last_snapshot is None and self.rank == 0 and self.step > 0:
            self.last_snapshot = os.path.join(self.run_dir, checkpoint.recon_snapshot_filename(self.step))
            if not os.path.isfile(self.last_snapshot):  # resumed at the final step: nothing left to train
                self.write_snapshot(self.last_good[1], checkpoint.recon_snapshot_filename(self.step))
        modules = {"encoder": self.encoder}
        if self.densifier is not None:
            modules["densifier"] = self.densifier
        return TrainResult(self.run_dir, status, self.step, self.last_snapshot, rank_digests=self.rank_digests(modules))

    def end_tick(self, final: bool) -> None:
        tick = self.tick
        self.report_tick()
        self.write_tick_stats(self.step / 1000, tick_outputs.format_tick_line)
        maintenance_start = time.time()
        self.tick += 1
        self.tick_start_step = self.step
        if self.rank == 0:
            self.save_grid(os.path.join(self.run_dir, f"grid-{self.step:06d}.png"))
        payload, path = self.payload(), None
        every = self.opts.snapshot_ticks
        if final or (every and tick % every == 0):
            path = self.write_snapshot(payload, checkpoint.recon_snapshot_filename(self.step))
            self.last_snapshot = path if self.rank == 0 else None
        self.last_good = (self.step, payload, path)
        self.maintenance_sec = time.time() - maintenance_start
        self.tick_start_time = time.time()

    def _on_fault(self, fault: TrainingFault) -> TrainResult:
        step, frozen, path = self.last_good
        if self.rank == 0 and (path is None or not os.path.isfile(path)):
            path = self.write_snapshot(frozen, checkpoint.recon_snapshot_filename(step))
        message = f"{fault}: training stopped. Last good snapshot (step {step}): {path}"
        self.log.error(message)
        return TrainResult(self.run_dir, "fault", self.step, path if self.rank == 0 else None, message)

    # ------------------------------------------------------------------------------------------ maintenance
    @torch.no_grad()
    def save_grid(self, path: str) -> None:
        """The first batch's scenes rendered at their first target view, in eval mode (tick_outputs.save_grid)."""
        from reconstruction.views import batch_to, select_views

        if self.grid_batch is None:
            return
        batch = batch_to(self.grid_batch, self.device)
        batch["target"] = select_views(batch["target"], slice(0, 1))
        modules = [m for m in (self.encoder, self.densifier) if m is not None]
        was_training = [m.training for m in modules]
        for m in modules:
            m.eval()
        coarse = dense = None
        try:
            if self.densifier is None:
                _, rendered = self.forward(batch)
            else:
                _, coarse, dense, rendered = self.densify_forward(batch, None)
        finally:
            for m, mode in zip(modules, was_training):
                m.train(mode)
        tick_outputs.save_grid(path, batch, rendered, coarse, dense)

    def log_start(self) -> None:
        if self.rank != 0:
            return
        o, d = self.opts, self.opts.data
        h, w = d.image_shape
        count = self.encoder.gaussians_per_scene(o.sampler.num_context, h, w)
        self.log.info(f"run directory: {self.run_dir}")
        th, tw = d.target_or_image_shape
        self.log.info(f"data: {d.path} (train split, context {h}x{w}, targets {th}x{tw}, near {d.near:g}, far "
                      f"{d.far:g}); {self.world} process(es) on {self.device}")
        self.log.info(misc.parameter_table(self.encoder, "CostVolumeEncoder"))
        if self.densifier is not None:
            self.log.info(misc.parameter_table(self.densifier, "GaussianDensifier"))
            coarse, count = count, self.densifier.counts(o.sampler.num_context, h, w)["per_scene"]
            self.log.info(f"generative densification: preset {o.densify.preset!r}, k_num {self.densifier.k_num} "
                          f"per view; {coarse:,} coarse -> {count:,} Gaussians per scene")
        self.log.info(f"Gaussians per scene: {count:,}; batch {o.batch_gpu} x {o.accumulate} accumulation x "
                      f"{self.world} process(es) = {o.examples_per_step} scenes per step")
        self.log.info(f"training for {o.steps} steps from step {self.step}"
                      + (f" (at most {o.minutes:g} minutes)" if o.minutes else ""))

    def report_tick(self) -> None:
        report = self.stats.report
        report("Progress/tick", self.tick)
        report("Progress/step", self.step)
        report("Progress/examples_seen", self.examples_seen * self.world)
        self.report_timing(time.time())
