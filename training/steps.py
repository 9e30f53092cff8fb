"""The three training phases (docs/official-release.md): Gmain, Dmain and Dreg (lazy R1 every r1_interval iterations).

Each phase function runs forward + backward for one round of per-process data and clips the gradients per
process, exactly where the official code does; the optimizer step, the cross-process all-reduce and the
non-finite checks live in training/training_loop.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from training import loss as L
from training.camera_sampling import ffhq_pose_augmentation
from training.config import TrainConfig


@dataclass
class PhaseData:
    """One round of one phase, on the training device."""

    real_img: Tensor   # [b, 3, R, R] in [-1, 1]
    real_c: Tensor     # [b, 25]
    gen_z: Tensor      # [b, z_dim]
    gen_c: Tensor      # [b, 25] labels drawn from the dataset (before pose augmentation)


def nonfinite_probe(gaussians) -> Tensor:
    """0, or NaN when any value of the rendered Gaussians is NaN or inf (0 * inf is NaN), without a host sync.

    The loop's G forwards skip render()'s value checks; a phase adds this to the loss it returns, so the loop's
    one finiteness check per phase still stops a generator that has gone non-finite, even when the rasterizer
    would have culled the broken Gaussians into a finite image."""
    fields = (gaussians.means, gaussians.log_scales, gaussians.quats, gaussians.opacity_logits, gaussians.sh)
    return torch.stack([t.detach().sum() for t in fields]).sum() * 0


class PhaseRunner:
    """Holds G, D and the augmentation pipeline and runs the phase computations on them.

    `generator` is the CPU torch.Generator every training draw (pose swap, pose augmentation, style mixing, ADA)
    comes from, so the draws are identical on every device and restorable on resume.
    `official_resume` reproduces the official resume schedules in compat mode (fades off, background on).
    """

    def __init__(self, G, D, augment_pipe, config: TrainConfig, generator: torch.Generator, stats,
                 official_resume: bool = False, ada=None):
        self.G, self.D, self.augment_pipe, self.ada = G, D, augment_pipe, ada
        self.cfg = config
        self.loss_cfg = config.loss
        self.generator = generator
        self.stats = stats
        self.official_resume = official_resume
        self.sum_contrastive_grads = not config.compat
        self.nrr = config.G.neural_rendering_resolution or None
        # The loop's G forwards skip the value checks of labels, cameras and Gaussians (host syncs): the labels
        # were checked when the dataset was opened, and the loop's one check per phase covers every loss,
        # gradient and (nonfinite_probe) rendered Gaussian.
        self.validate = False

    # ------------------------------------------------------------------------------------------ schedules
    def schedule(self, cur_nimg: int) -> dict:
        lc = self.loss_cfg
        return {
            "blur_sigma": L.blur_sigma(cur_nimg, lc.blur_fade_kimg, lc.blur_init_sigma,
                                       self.official_resume and not lc.resume_blur),
            "swap_prob": L.gpc_swap_prob(cur_nimg, lc.gpc_reg_prob, lc.gpc_reg_fade_kimg, self.official_resume),
            "background": L.background_enabled(cur_nimg, lc.background_start_kimg, self.official_resume),
        }

    # ------------------------------------------------------------------------------------------ networks
    def augment_camera(self, gen_c: Tensor) -> Tensor:
        """FFHQ pose augmentation of gen_c (probability prob_uniform); used for rendering, mapping and targets."""
        if self.loss_cfg.prob_uniform <= 0:
            return gen_c
        return ffhq_pose_augmentation(gen_c, self.loss_cfg.prob_uniform, generator=self.generator,
                                      compat=self.cfg.compat)

    def run_G(self, z: Tensor, c: Tensor, sched: dict, update_emas: bool = False) -> dict:
        """Render the whole batch in one call; the mapping label is c rolled by one with probability p_swap."""
        c_map = L.swap_pose_conditioning(c, sched["swap_prob"], self.generator)
        ws = self.G.mapping(z, c_map, update_emas=update_emas)
        if self.loss_cfg.style_mixing_prob > 0:
            ws = self._style_mix(ws, c_map, update_emas)
        return self.G.synthesis(ws, c, neural_rendering_resolution=self.nrr, background=sched["background"],
                                validate=self.validate)

    def _style_mix(self, ws: Tensor, c: Tensor, update_emas: bool) -> Tensor:
        gen = self.generator
        cutoff = int(torch.randint(1, ws.shape[1], (), generator=gen))
        mix = torch.rand((), generator=gen) < self.loss_cfg.style_mixing_prob
        if not mix:
            return ws
        z2 = torch.randn(ws.shape[0], self.G.z_dim, generator=gen).to(ws.device, non_blocking=True)
        ws2 = self.G.mapping(z2, c, update_emas=False)
        return torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)

    def run_D(self, img: Tensor, c: Tensor, sigma: float):
        """Blur, then (ADA) augment, then D: (logits, feat_pose, cam_emb)."""
        img = L.blur_images(img, sigma)
        if self.augment_pipe is not None:
            img = self.augment_pipe(img, generator=self.generator)
        return self.D(img, c)

    def contrastive(self, feat: Tensor, cam: Tensor) -> Tensor:
        return L.pose_contrastive_loss(feat, cam, self.loss_cfg.contrastive_temperature,
                                       sum_grads=self.sum_contrastive_grads)

    # ------------------------------------------------------------------------------------------ phases
    def generator_main(self, data: PhaseData, cur_nimg: int, scale: float = 1.0, inject_nan: bool = False) -> Tensor:
        """Gmain: adversarial + pose-contrastive on fakes, kNN and centre regularizers on level-0 anchors."""
        lc, sched = self.loss_cfg, self.schedule(cur_nimg)
        gen_c = self.augment_camera(data.gen_c)
        out = self.run_G(data.gen_z, gen_c, sched)
        probe = nonfinite_probe(out["gaussians"])
        logits, feat, cam = self.run_D(out["image"], gen_c, sched["blur_sigma"])
        adv = L.generator_adv_loss(logits)
        con = self.contrastive(feat, cam)
        if out["anchors"]:
            anchors = out["anchors"][0].means
            knn = L.knn_regularizer(anchors, lc.knn_k)
            center = L.center_regularizer(anchors)
        else:  # the naive generator (--arch naive) has no anchors to regularize
            knn = center = adv.new_zeros(())
        total = adv.mean() + lc.pose_contrastive_weight * con + lc.knn_weight * knn + lc.center_weight * center
        if inject_nan:
            total = total * float("nan")
        (total * scale).backward()
        L.clip_grad_norm_(self.G, lc.g_clip_norm)
        report = self.stats.report
        report("Loss/scores/fake", logits)
        report("Loss/signs/fake", logits.sign())
        report("Loss/G/adv", adv)
        report("Loss/G/contrastive", con)
        report("Loss/G/knn", knn)
        report("Loss/G/center", center)
        report("Loss/G/loss", total)
        return total.detach() + probe

    def discriminator_main(self, data: PhaseData, cur_nimg: int, scale: float = 1.0) -> Tensor:
        """Dmain: fakes (G with update_emas), then reals with the pose-contrastive loss; clip after each backward."""
        lc, sched = self.loss_cfg, self.schedule(cur_nimg)
        gen_c = self.augment_camera(data.gen_c)
        with torch.no_grad():
            fake_out = self.run_G(data.gen_z, gen_c, sched, update_emas=True)
        fake, probe = fake_out["image"], nonfinite_probe(fake_out["gaussians"])
        del fake_out  # the Gaussians are not needed any longer
        fake_logits, _, _ = self.run_D(fake, gen_c, sched["blur_sigma"])
        loss_fake = L.discriminator_fake_loss(fake_logits)
        (loss_fake.mean() * scale).backward()
        L.clip_grad_norm_(self.D, lc.d_clip_norm)

        real_logits, feat, cam = self.run_D(data.real_img.detach(), data.real_c, sched["blur_sigma"])
        loss_real = L.discriminator_real_loss(real_logits)
        con = self.contrastive(feat, cam)
        real_total = loss_real.mean() + lc.pose_contrastive_weight * con
        (real_total * scale).backward()
        L.clip_grad_norm_(self.D, lc.d_clip_norm)
        if self.ada is not None:
            self.ada.accumulate(real_logits)
        report = self.stats.report
        report("Loss/scores/fake", fake_logits)
        report("Loss/signs/fake", fake_logits.sign())
        report("Loss/scores/real", real_logits)
        report("Loss/signs/real", real_logits.sign())
        report("Loss/D/fake", loss_fake)
        report("Loss/D/real", loss_real)
        report("Loss/D/contrastive", con)
        total = loss_fake.mean().detach() + real_total.detach()
        report("Loss/D/loss", total)
        return total + probe

    def discriminator_reg(self, data: PhaseData, cur_nimg: int, scale: float = 1.0) -> Tensor:
        """Dreg: lazy R1 with gain r1_interval, gradient w.r.t. the real image before blur and augmentation.
        compat also re-adds the real pose-contrastive loss with the same gain (docs/official-release.md)."""
        lc, sched = self.loss_cfg, self.schedule(cur_nimg)
        gain = float(lc.r1_interval)
        real = data.real_img.detach().requires_grad_(True)
        real_logits, feat, cam = self.run_D(real, data.real_c, sched["blur_sigma"])
        penalty = L.r1_penalty(real, real_logits)
        loss_r1 = penalty * (lc.r1_gamma / 2)
        total = loss_r1.mean()
        if self.cfg.compat:
            total = total + lc.pose_contrastive_weight * self.contrastive(feat, cam)
        (total * gain * scale).backward()
        L.clip_grad_norm_(self.D, lc.d_clip_norm)
        self.stats.report("Loss/r1_penalty", penalty)
        self.stats.report("Loss/D/reg", loss_r1)
        return total.detach()
