"""Adaptive discriminator augmentation (ADA): random geometric and colour transforms applied to every image the
discriminator sees, with a probability p that a controller raises when D over-fits the real images.

Each op fires independently per sample with probability p * strength. Geometric ops (xflip, rotate90, xint, scale,
rotate, aniso, xfrac) are composed into one 3x3 affine matrix in pixel units about the image centre and applied with
a single bilinear `grid_sample` using reflection padding; colour ops (brightness, contrast, lumaflip, hue,
saturation) are composed into one 4x4 matrix acting on (r, g, b, 1), shared by every 3-channel group of the input
(so [image, image_raw] 6-channel stacks get identical colours).

Simplification w.r.t. StyleGAN2-ADA: no wavelet-filtered 2x upsampling around the resampling, and the padding
mirrors the image including its edge pixel (grid_sample's "reflection"); integer ops (xflip, rotate90, xint) stay
exact. Everything is differentiable in the images, to any order (R1 through the augmentation works).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
_LUMA = (1.0 / math.sqrt(3.0),) * 3


def _host_constant(values, device) -> Tensor:
    """A small constant tensor on `device` without a host sync: torch.tensor(..., device=cuda) waits for the stream
    to drain, an asynchronous copy from host memory does not."""
    return torch.tensor(values, dtype=torch.float32).to(device, non_blocking=True)


def _eye(n: int, batch: int, device) -> Tensor:
    return torch.eye(n, device=device).expand(batch, n, n).clone()


def _translate(tx: Tensor, ty: Tensor) -> Tensor:
    m = _eye(3, tx.shape[0], tx.device)
    m[:, 0, 2] = tx
    m[:, 1, 2] = ty
    return m


def _scale(sx: Tensor, sy: Tensor) -> Tensor:
    m = _eye(3, sx.shape[0], sx.device)
    m[:, 0, 0] = sx
    m[:, 1, 1] = sy
    return m


def _rotate(theta: Tensor) -> Tensor:
    m = _eye(3, theta.shape[0], theta.device)
    cos, sin = theta.cos(), theta.sin()
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    return m


def _where(mask: Tensor, value: Tensor, default: float) -> Tensor:
    """Per-sample value where the op fires, `default` (the identity parameter) elsewhere."""
    return torch.where(mask, value, torch.full_like(value, default))


class AugmentPipe(nn.Module):
    """ADA pipeline. `forward(images [B,C,H,W], generator=None) -> same shape/dtype`, C a multiple of 3.

    Strengths (0 disables an op) multiply p; the magnitudes are the ADA defaults. xflip is off by default.
    `p` is a buffer (saved in the state dict) that `AdaController` adjusts during training with set_p(); its value
    is read from the device only after it changed, so a forward pass costs no host sync.
    """

    def __init__(self, xflip: float = 0.0, rotate90: float = 1.0, xint: float = 1.0, scale: float = 1.0,
                 rotate: float = 1.0, aniso: float = 1.0, xfrac: float = 1.0, brightness: float = 1.0,
                 contrast: float = 1.0, lumaflip: float = 1.0, hue: float = 1.0, saturation: float = 1.0,
                 xint_max: float = 0.125, scale_std: float = 0.2, rotate_max: float = 1.0, aniso_std: float = 0.2,
                 xfrac_std: float = 0.125, brightness_std: float = 0.2, contrast_std: float = 0.5,
                 hue_max: float = 1.0, saturation_std: float = 1.0, p: float = 0.0):
        super().__init__()
        self.init_kwargs = dict(
            xflip=xflip, rotate90=rotate90, xint=xint, scale=scale, rotate=rotate, aniso=aniso, xfrac=xfrac,
            brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue, saturation=saturation,
            xint_max=xint_max, scale_std=scale_std, rotate_max=rotate_max, aniso_std=aniso_std, xfrac_std=xfrac_std,
            brightness_std=brightness_std, contrast_std=contrast_std, hue_max=hue_max,
            saturation_std=saturation_std, p=p)
        for name, value in self.init_kwargs.items():
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not is_number or value < 0 or not math.isfinite(value):
                raise ValueError(f"training/augment.py: {name} must be a finite number >= 0, got {value!r}")
            if name != "p":
                setattr(self, name, float(value))
        if p > 1:
            raise ValueError(f"training/augment.py: p must be in [0, 1], got {p}")
        self.register_buffer("p", torch.tensor(float(p)))
        self._p_seen = self._p_key()   # (storage, device, version) of p when _p_host was taken
        self._p_host = float(p)

    def set_p(self, value: float) -> None:
        """Set p and remember it on the host (the next forward pass needs no device read)."""
        self.p.fill_(float(value))
        self._p_seen, self._p_host = self._p_key(), float(value)

    def _p_key(self) -> tuple:
        return self.p.data_ptr(), self.p.device, self.p._version

    def p_value(self) -> float:
        """p as a float; read from the device only when the buffer changed since the last read (fill_,
        load_state_dict and .to() all change the key)."""
        key = self._p_key()
        if key != self._p_seen:
            self._p_seen, self._p_host = key, float(self.p)
        return self._p_host

    # ------------------------------------------------------------------ random draws
    def _draws(self, batch: int, generator: Optional[torch.Generator], device) -> Callable:
        gen_device = generator.device if generator is not None else device

        def rand(*shape, normal=False):
            fn = torch.randn if normal else torch.rand
            return fn((batch,) + shape, generator=generator, device=gen_device).to(device, non_blocking=True)
        return rand

    def _fires(self, rand, strength: float, p: Tensor) -> Tensor:
        return rand() < p * strength

    # ------------------------------------------------------------------ geometric
    def _geometric_matrix(self, rand, p: Tensor, width: int, height: int) -> Tensor:
        """Sampling matrix [B,3,3]: output pixel (centred coordinates) -> input pixel. Built as the product of the
        inverses of the ops in application order, so the image is transformed by op 1 first."""
        m = None

        def then_inv(op_inv: Tensor):
            nonlocal m
            m = op_inv if m is None else m @ op_inv

        dev = p.device
        n = p.shape[0]
        if self.xflip > 0:
            fire = self._fires(rand, self.xflip, p)
            flip = torch.floor(rand() * 2)
            sx = _where(fire, 1 - 2 * flip, 1.0)
            then_inv(_scale(sx, torch.ones(n, device=dev)))
        if self.rotate90 > 0:
            fire = self._fires(rand, self.rotate90, p)
            k = _where(fire, torch.floor(rand() * 4), 0.0)
            then_inv(_rotate(-k * (math.pi / 2)).round())  # entries 0 / +-1 exactly
        if self.xint > 0:
            fire = self._fires(rand, self.xint, p)
            t = (rand(2) * 2 - 1) * self.xint_max
            tx = _where(fire, torch.round(t[:, 0] * width), 0.0)
            ty = _where(fire, torch.round(t[:, 1] * height), 0.0)
            then_inv(_translate(-tx, -ty))
        if self.scale > 0:
            fire = self._fires(rand, self.scale, p)
            s = _where(fire, torch.exp2(rand(normal=True) * self.scale_std), 1.0)
            then_inv(_scale(1 / s, 1 / s))
        p_rot = 1 - torch.sqrt((1 - p * self.rotate).clamp(min=0))  # two rotations with total probability p
        if self.rotate > 0:
            fire = rand() < p_rot
            theta = _where(fire, (rand() * 2 - 1) * math.pi * self.rotate_max, 0.0)
            then_inv(_rotate(-theta))
        if self.aniso > 0:
            fire = self._fires(rand, self.aniso, p)
            s = _where(fire, torch.exp2(rand(normal=True) * self.aniso_std), 1.0)
            then_inv(_scale(1 / s, s))
        if self.rotate > 0:
            fire = rand() < p_rot
            theta = _where(fire, (rand() * 2 - 1) * math.pi * self.rotate_max, 0.0)
            then_inv(_rotate(-theta))
        if self.xfrac > 0:
            fire = self._fires(rand, self.xfrac, p)
            t = rand(2, normal=True) * self.xfrac_std
            tx = _where(fire, t[:, 0] * width, 0.0)
            ty = _where(fire, t[:, 1] * height, 0.0)
            then_inv(_translate(-tx, -ty))
        return m if m is not None else _eye(3, n, dev)

    @staticmethod
    def _resample(images: Tensor, m: Tensor) -> Tensor:
        """Bilinear resampling of images at m @ (output pixel), reflection padding. Pixel-centred coordinates are
        converted to grid_sample's normalized ones (align_corners=False: +-1 are the outer pixel edges)."""
        b, _, h, w = images.shape
        to_norm = torch.diag(_host_constant([2.0 / w, 2.0 / h, 1.0], m.device).to(m.dtype))
        from_norm = torch.diag(_host_constant([w / 2.0, h / 2.0, 1.0], m.device).to(m.dtype))
        theta = (to_norm @ m @ from_norm)[:, :2, :]
        grid_dtype = torch.promote_types(images.dtype, torch.float32)  # half images: grid still built in fp32
        grid = F.affine_grid(theta.to(grid_dtype), [b, images.shape[1], h, w], align_corners=False)
        return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="reflection",
                             align_corners=False)

    # ------------------------------------------------------------------ colour
    def _color_matrix(self, rand, p: Tensor) -> Tensor:
        """Colour matrix [B,4,4] acting on (r, g, b, 1); later ops multiply from the left."""
        dev = p.device
        n = p.shape[0]
        c = _eye(4, n, dev)
        v = _host_constant(list(_LUMA) + [0.0], dev)               # luma axis, homogeneous
        vvt = torch.outer(v, v)
        if self.brightness > 0:
            fire = self._fires(rand, self.brightness, p)
            b = _where(fire, rand(normal=True) * self.brightness_std, 0.0)
            t = _eye(4, n, dev)
            t[:, :3, 3] = b[:, None]
            c = t @ c
        if self.contrast > 0:
            fire = self._fires(rand, self.contrast, p)
            s = _where(fire, torch.exp2(rand(normal=True) * self.contrast_std), 1.0)
            t = _eye(4, n, dev)
            t[:, 0, 0] = t[:, 1, 1] = t[:, 2, 2] = s
            c = t @ c
        if self.lumaflip > 0:
            fire = self._fires(rand, self.lumaflip, p)
            i = _where(fire, torch.floor(rand() * 2), 0.0)
            c = (torch.eye(4, device=dev) - 2 * vvt * i[:, None, None]) @ c   # Householder reflection of luma
        if self.hue > 0:
            fire = self._fires(rand, self.hue, p)
            theta = _where(fire, (rand() * 2 - 1) * math.pi * self.hue_max, 0.0)
            c = self._rotation_about_luma(theta) @ c
        if self.saturation > 0:
            fire = self._fires(rand, self.saturation, p)
            s = _where(fire, torch.exp2(rand(normal=True) * self.saturation_std), 1.0)
            c = (vvt + (torch.eye(4, device=dev) - vvt) * s[:, None, None]) @ c
        return c

    @staticmethod
    def _rotation_about_luma(theta: Tensor) -> Tensor:
        """Rodrigues rotation by theta [B] about the luma axis (1, 1, 1)/sqrt(3), embedded in a 4x4 matrix."""
        n = theta.shape[0]
        kx, ky, kz = _LUMA
        k = _host_constant([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]], theta.device).to(theta.dtype)
        r3 = (torch.eye(3, device=theta.device) + theta.sin()[:, None, None] * k
              + (1 - theta.cos())[:, None, None] * (k @ k))
        r = _eye(4, n, theta.device)
        r[:, :3, :3] = r3
        return r

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if images.ndim != 4 or images.shape[1] % 3 != 0:
            raise ValueError(f"training/augment.py: images must be [B, C, H, W] with C a multiple of 3, "
                             f"got {list(images.shape)}")
        b, ch, h, w = images.shape
        if self.rotate90 > 0 and h != w:
            raise ValueError(f"training/augment.py: rotate90 needs square images, got {h}x{w}")
        if self.p_value() == 0.0:
            return images
        rand = self._draws(b, generator, images.device)
        p = self.p.to(device=images.device, dtype=torch.float32).expand(b)

        m = self._geometric_matrix(rand, p, w, h)
        out = self._resample(images, m)

        cm = self._color_matrix(rand, p).to(images.dtype)
        x = out.reshape(b, ch // 3, 3, h * w)
        x = cm[:, None, :3, :3] @ x + cm[:, None, :3, 3:]
        return x.reshape(b, ch, h, w)

    def extra_repr(self) -> str:
        enabled = [op for op in GEOMETRIC_OPS + COLOR_OPS if getattr(self, op) > 0]
        return f"p={self.p_value():.4f}, ops={enabled}"


def ada_p_update(p: float, sign_mean: float, target: float, batch_size: int, interval: int,
                 speed_kimg: float) -> float:
    """ADA's heuristic: move p by sign(E[sign(D(real))] - target) * (images in the interval) / (speed_kimg * 1000),
    so p can go from 0 to 1 in `speed_kimg` thousand images. Clamped to [0, 1] (StyleGAN2-ADA clamps only below;
    p > 1 behaves like 1 and would only delay a later decrease)."""
    step = math.copysign(1.0, sign_mean - target) if sign_mean != target else 0.0
    p = p + step * batch_size * interval / (speed_kimg * 1000.0)
    return min(max(p, 0.0), 1.0)


class AdaController:
    """Tunes `pipe.p` from the signs of D's logits on real images (target 0.6, every 4 iterations, 500 kimg).

    Call `accumulate(real_logits)` wherever D scores real images (D-main; StyleGAN2-ADA also counts the D-reg
    phase) and `step(batch_size)` once per training iteration (batch size = global batch). `reduce_fn`, when given,
    sums the [2] statistics tensor (sum of signs, count) across processes. Save/restore with state_dict().
    The statistics stay on the logits' device: accumulating never waits for the device; the one host read is in
    the step that updates p, every `interval` iterations.
    """

    def __init__(self, pipe: AugmentPipe, target: float = 0.6, interval: int = 4, speed_kimg: float = 500.0):
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"training/augment.py: ADA target must be in [0, 1], got {target}")
        if interval < 1 or speed_kimg <= 0:
            raise ValueError(f"training/augment.py: ADA interval must be >= 1 and speed_kimg > 0, "
                             f"got {interval}, {speed_kimg}")
        self.pipe = pipe
        self.target = target
        self.interval = interval
        self.speed_kimg = speed_kimg
        self.iteration = 0
        self.stats = torch.zeros(2, dtype=torch.float64)  # [sum of signs, count]
        self.last_rt: Optional[float] = None

    def accumulate(self, real_logits: Tensor) -> None:
        logits = real_logits.detach()
        if self.stats.device != logits.device:
            self.stats = self.stats.to(logits.device)
        self.stats[0] += logits.sign().sum(dtype=torch.float64)
        self.stats[1] += logits.numel()

    def step(self, batch_size: int, reduce_fn: Optional[Callable[[Tensor], Tensor]] = None) -> Optional[float]:
        """Advance one iteration; every `interval` iterations update p and return r_t = E[sign(D(real))]."""
        self.iteration += 1
        if self.iteration % self.interval != 0:
            return None
        stats = self.stats.clone()
        if reduce_fn is not None:
            stats = reduce_fn(stats)
        self.stats.zero_()
        total, count = stats.tolist()  # the controller's one host read per interval
        if count == 0:
            return None
        rt = total / count
        self.pipe.set_p(ada_p_update(self.pipe.p_value(), rt, self.target, batch_size, self.interval,
                                     self.speed_kimg))
        self.last_rt = rt
        return rt

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "stats": self.stats.detach().to("cpu", copy=True),
                "last_rt": self.last_rt}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.stats = state["stats"].clone().to(torch.float64)
        self.last_rt = state["last_rt"]
