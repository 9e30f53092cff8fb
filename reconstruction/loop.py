"""Reconstruction training: set-up, the optimizer-step loop and per-tick maintenance (log line, stats, image grid,
snapshots), plus process launching (one process, N spawned processes, or torchrun).

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

import hashlib
import math
import os
import resource
import time
from dataclasses import dataclass

import torch
import tqdm

import dnnlib
from reconstruction.config import ReconTrainOptions
from reconstruction.loss import ReconstructionLoss
from torch_utils import checkpoint, distributed, misc
from torch_utils.run_control import (ignore_stop_signals, install_stop_handlers, launch_training, restore_handlers,
                                     run_rank, shutdown_loader)
from torch_utils.stats import StatsCollector, StatsWriter


class TrainingFault(RuntimeError):
    """A non-finite loss or gradient (the message names the step)."""


@dataclass
class TrainResult:
    run_dir: str
    status: str            # "done" | "time_limit" | "interrupted" | "fault"
    step: int
    snapshot: str | None   # the last snapshot written (for a fault: the last good state)
    message: str = ""
    rank_digests: tuple = ()  # sha256 of the encoder state per rank at the end (all equal under DDP)






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


def densify_generator(seed: int, rank: int, step: int, round_index: int) -> torch.Generator:
    """The CPU generator of one forward pass's densifier randomness: a pure function of (seed, rank, step, pass),
    so a resumed run draws exactly what the uninterrupted one drew."""
    text = f"gsgan-densify:{int(seed)}:{int(rank)}:{int(step)}:{int(round_index)}".encode()
    value = int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator().manual_seed(value)


def build_schedule(optimizer: torch.optim.Optimizer, options: ReconTrainOptions):
    """OneCycleLR as the official MVSplat: over steps + 10, pct_start 0.01, cosine, no momentum cycling."""
    o = options.optim
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=o.lr, total_steps=options.steps + o.extra_schedule_steps, pct_start=o.pct_start,
        anneal_strategy="cos", cycle_momentum=False, div_factor=o.div_factor, final_div_factor=o.final_div_factor)


def depth_to_unit(depth, alpha=None):
    """[N, 1, H, W] depth -> [N, 1, H, W] in [0, 1] per image, near = bright, empty pixels black."""
    from training.video_utils import finite_range, masked_depth, normalize_depth

    if alpha is not None:
        depth = masked_depth(depth, alpha)
    d = depth.detach().float().cpu().numpy()
    lo, hi = finite_range(d)
    return (torch.from_numpy(normalize_depth(d, lo, hi)) + 1) / 2


class ReconTrainer:
    """All state of one process's reconstruction training run."""

    def __init__(self, options: ReconTrainOptions, run_dir: str, rank: int, world: int, device: torch.device):
        self.opts, self.run_dir, self.rank, self.world, self.device = options, run_dir, rank, world, device
        self.created = time.time()  # --minutes counts set-up time too (data, model, an extension build)
        self.log = dnnlib.setup_logging(run_dir, rank)
        self.stats = StatsCollector()
        self.writer = StatsWriter(run_dir) if rank == 0 else None
        self.stop_signal: str | None = None
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
        modules = [self.encoder]
        if self.densifier is not None:
            self.densifier = self.densifier.to(self.device).train()
            distributed.broadcast_module(self.densifier)
            modules.append(self.densifier)
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=self.opts.optim.lr)
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
            batch_size=self.opts.batch_gpu, report_skips=True)
        workers = d.workers
        self.loader = iter(torch.utils.data.DataLoader(
            self.stream, batch_size=self.opts.batch_gpu, num_workers=workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=2 if workers > 0 else None,
            persistent_workers=False, worker_init_fn=ignore_stop_signals if workers > 0 else None))

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

    def write_snapshot(self, payload: dict | None, step: int) -> str | None:
        if self.rank != 0:
            return None
        path = os.path.join(self.run_dir, checkpoint.recon_snapshot_filename(step))
        checkpoint.atomic_torch_save(payload, path)
        return path

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

    def densify_forward(self, batch: dict, generator: torch.Generator | None):
        """(encoder output, coarse render, DensifyOutput, fine render) of the target views."""
        from reconstruction.views import to_cameras
        from splatting import render

        out, coarse = self.forward(batch)
        dense = self.densifier(batch["context"], out, generator=generator, backend=self.opts.model.backend)
        fine = render(dense.gaussians, to_cameras(batch["target"]), backend=self.opts.model.backend)
        return out, coarse, dense, fine

    def _densify_pass(self, batch: dict, round_index: int):
        """Loss terms of one forward pass with densification: L(coarse) + L(fine), statistics reported."""
        from reconstruction.metrics import psnr

        generator = densify_generator(self.opts.seed, self.rank, self.step, round_index)
        _, coarse, dense, fine = self.densify_forward(batch, generator)
        gt = batch["target"]["image"]
        terms = {"coarse": self.loss(coarse.color, gt, self.step), "fine": self.loss(fine.color, gt, self.step)}
        for part, values in terms.items():
            for name in ("mse", "lpips"):
                if name in values:
                    self.stats.report(f"Loss/{part}/{name}", values[name].detach())
        self.stats.report("Densify/gaussians", float(dense.gaussians.num_gaussians))
        self.stats.report("Timing/densify_sec", dense.timings["total"])
        with torch.no_grad():
            self.stats.report("Metrics/psnr_coarse", psnr(coarse.color.flatten(0, 1), gt.flatten(0, 1)))
            self.stats.report("Metrics/psnr_fine", psnr(fine.color.flatten(0, 1), gt.flatten(0, 1)))
        return terms["coarse"]["total"] + terms["fine"]["total"]

    def train_step(self, deadline: float | None) -> tuple[bool, bool]:
        """One optimizer step over `accumulate` forward passes. Returns (stop requested, time is up)."""
        from reconstruction.metrics import psnr

        start = time.time()
        self.encoder.train()
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
        self.stats.report("Progress/lr", self.optimizer.param_groups[0]["lr"])
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
        previous = install_stop_handlers(self._on_stop_signal)
        status = "done"
        progress = tqdm.tqdm(total=self.opts.steps, initial=self.step, unit="step", dynamic_ncols=True,
                             leave=False, disable=None if self.rank == 0 else True)
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
        finally:
            progress.close()
            restore_handlers(previous)
        if any(self.skipped_total.values()):
            self.log.info("examples skipped by rank 0 (and refilled from the same epoch): "
                          + ", ".join(f"{n} {reason}" for reason, n in self.skipped_total.items() if n))
        if self.last_snapshot is None and self.rank == 0 and self.step > 0:
            self.last_snapshot = os.path.join(self.run_dir, checkpoint.recon_snapshot_filename(self.step))
            if not os.path.isfile(self.last_snapshot):  # resumed at the final step: nothing left to train
                self.write_snapshot(self.last_good[1], self.step)
        return TrainResult(self.run_dir, status, self.step, self.last_snapshot,
                           rank_digests=self.check_rank_consistency())

    def state_digest(self) -> str:
        modules = {"encoder": self.encoder}
        if self.densifier is not None:
            modules["densifier"] = self.densifier
        per_tensor = misc.state_digests(modules)
        return hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(per_tensor.items())).encode()).hexdigest()

    def check_rank_consistency(self) -> tuple:
        digests = tuple(distributed.all_gather_objects(self.state_digest()))
        if len(set(digests)) > 1:
            self.log.error("encoder parameters differ between processes")
        elif self.world > 1:
            self.log.info(f"parameters identical across {self.world} processes")
        return digests

    def end_tick(self, final: bool) -> None:
        tick = self.tick
        self.report_tick()
        stats = self.stats.collect(self.device if self.device.type == "cuda" else "cpu")
        if self.rank == 0:
            self.writer.write(stats, self.step / 1000)
            self.log.info(format_tick_line(stats))
        maintenance_start = time.time()
        self.tick += 1
        self.tick_start_step = self.step
        if self.rank == 0:
            self.save_grid(os.path.join(self.run_dir, f"grid-{self.step:06d}.png"))
        payload, path = self.payload(), None
        every = self.opts.snapshot_ticks
        if final or (every and tick % every == 0):
            path = self.write_snapshot(payload, self.step)
            self.last_snapshot = path if self.rank == 0 else None
        self.last_good = (self.step, payload, path)
        self.maintenance_sec = time.time() - maintenance_start
        self.tick_start_time = time.time()

    def _on_fault(self, fault: TrainingFault) -> TrainResult:
        step, frozen, path = self.last_good
        if self.rank == 0 and (path is None or not os.path.isfile(path)):
            path = self.write_snapshot(frozen, step)
        message = f"{fault}: training stopped. Last good snapshot (step {step}): {path}"
        self.log.error(message)
        return TrainResult(self.run_dir, "fault", self.step, path if self.rank == 0 else None, message)

    # ------------------------------------------------------------------------------------------ signals
    def _on_stop_signal(self, name: str) -> None:
        self.stop_signal = name
        self.log.warning(f"received {name}: finishing this step, then writing a snapshot")

    # ------------------------------------------------------------------------------------------ maintenance
    @torch.no_grad()
    def save_grid(self, path: str) -> None:
        """Rows = the first batch's scenes; columns = context views | first target | its render | its depth.
        With densification: context views | target | coarse render | fine render | selected | fine depth, where
        `selected` is the first context view dimmed with the pixels of its selected Gaussians in red."""
        from reconstruction.views import batch_to, select_views

        if self.grid_batch is None:
            return
        batch = batch_to(self.grid_batch, self.device)
        batch["target"] = select_views(batch["target"], slice(0, 1))
        modules = [m for m in (self.encoder, self.densifier) if m is not None]
        was_training = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            if self.densifier is None:
                _, rendered = self.forward(batch)
            else:
                _, coarse, dense, rendered = self.densify_forward(batch, None)
        finally:
            for m, mode in zip(modules, was_training):
                m.train(mode)
        context = batch["context"]["image"].cpu()                        # [n, V, 3, H, W]
        target = batch["target"]["image"][:, 0].cpu()                     # [n, 3, H, W]
        color = rendered.color[:, 0].clamp(0, 1).cpu()
        depth = depth_to_unit(rendered.depth[:, 0], rendered.alpha[:, 0]).expand(-1, 3, -1, -1)
        columns = [context, target[:, None]]
        if self.densifier is not None:
            selected = selection_overlay(context[:, 0], dense.selection.index[:, 0].cpu())
            columns += [coarse.color[:, 0].clamp(0, 1).cpu()[:, None], color[:, None], selected[:, None]]
        else:
            columns.append(color[:, None])
        cells = torch.cat(columns + [depth[:, None]], dim=1)             # [n, V + 3 (+ 2), ...]
        rows, cols = cells.shape[:2]
        misc.save_image_grid(cells.flatten(0, 1), path, (cols, rows), drange=(0, 1))

    def log_start(self) -> None:
        if self.rank != 0:
            return
        o, d = self.opts, self.opts.data
        h, w = d.image_shape
        count = self.encoder.gaussians_per_scene(o.sampler.num_context, h, w)
        self.log.info(f"run directory: {self.run_dir}")
        self.log.info(f"data: {d.path} (train split, {h}x{w}, near {d.near:g}, far {d.far:g}); {self.world} "
                      f"process(es) on {self.device}")
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
        now = time.time()
        report = self.stats.report
        report("Progress/tick", self.tick)
        report("Progress/step", self.step)
        report("Progress/examples_seen", self.examples_seen * self.world)
        report("Timing/total_sec", now - self.start_time)
        report("Timing/sec_per_tick", now - self.tick_start_time)
        report("Timing/maintenance_sec", getattr(self, "maintenance_sec", 0.0))
        report("Resources/cpu_mem_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        if self.device.type == "cuda":
            report("Resources/peak_gpu_mem_gb", torch.cuda.max_memory_allocated(self.device) / 2**30)
            torch.cuda.reset_peak_memory_stats(self.device)

    def close(self) -> None:
        loader = getattr(self, "loader", None)
        if loader is not None:  # workers ignore SIGTERM: stop them now, or a failed run can wait on one forever
            shutdown_loader(loader)
            self.loader = None
        if self.writer is not None:
            self.writer.close()
        dnnlib.close_logging()


def selection_overlay(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """image [n, 3, H, W] dimmed to half brightness, with the pixels of the selected Gaussians `index` [n, K]
    (into the view's H*W pixels, row-major: the encoder's layout) set to pure red."""
    n, _, h, w = image.shape
    out = image.clone() * 0.5
    mask = torch.zeros(n, h * w, dtype=torch.bool)
    mask.scatter_(1, index.long() % (h * w), True)
    mask = mask.reshape(n, 1, h, w)
    red = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1).expand_as(out)
    return torch.where(mask, red, out)


def format_tick_line(stats: dict) -> str:
    """One console/log line per tick."""
    def get(name):
        return stats.get(name, {}).get("mean", float("nan"))
    total = get("Timing/total_sec")
    total = 0.0 if math.isnan(total) else total
    # Data/skipped/<reason> holds the skips made per delivered example: mean * num = skips this tick.
    skipped = sum(e["mean"] * e["num"] for name, e in stats.items() if name.startswith("Data/skipped/"))
    return (f"tick {int(get('Progress/tick')):<5d} step {int(get('Progress/step')):<7d} "
            f"time {int(total // 3600)}h{int(total % 3600 // 60):02d}m{int(total % 60):02d}s  "
            f"sec/step {get('Timing/sec_per_step'):<6.3f} maintenance {get('Timing/maintenance_sec'):<5.1f} "
            f"cpumem {get('Resources/cpu_mem_gb'):.2f} gpumem {get('Resources/peak_gpu_mem_gb'):.2f}  "
            f"lr {get('Progress/lr'):.2e} loss {get('Loss/total'):.4f} " + (
                f"mse {get('Loss/mse'):.5f} lpips {get('Loss/lpips'):.4f} psnr {get('Metrics/psnr_train'):.2f} "
                if "Metrics/psnr_fine" not in stats else
                f"mse coarse {get('Loss/coarse/mse'):.5f} fine {get('Loss/fine/mse'):.5f} psnr coarse "
                f"{get('Metrics/psnr_coarse'):.2f} fine {get('Metrics/psnr_fine'):.2f} densify "
                f"{get('Timing/densify_sec'):.3f}s ") + f"skipped {int(round(skipped))}")


# ---------------------------------------------------------------------------------------------- launching
def run_description(options: ReconTrainOptions) -> str:
    name = os.path.basename(os.path.normpath(options.data.path)) or "data"
    desc = f"{options.experiment}-{name}-gpus{options.num_gpus}-batch{options.batch_gpu}"
    return desc + (f"-{options.desc}" if options.desc else "")


def training_process(rank: int, world: int, options: ReconTrainOptions, run_dir: str,
                     init_method: str | None = None, local_rank: int = 0) -> TrainResult:
    """Body of one process: device set-up, process group, ReconTrainer."""
    return run_rank(lambda device: ReconTrainer(options, run_dir, rank, world, device), rank, world,
                    options.device, init_method, local_rank)


def _spawned(index: int, init_method: str, world: int, options_dict: dict, run_dir: str) -> dict:
    result = training_process(index, world, ReconTrainOptions.from_dict(options_dict), run_dir, init_method, index)
    return result.__dict__


def launch(options: ReconTrainOptions) -> TrainResult:
    """Validate, create the run directory, write training_options.json and train. Returns rank 0's result."""
    return launch_training(options, run_description(options), training_process, _spawned, TrainResult)
