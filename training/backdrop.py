"""A backdrop at infinity: a colour per world ray direction, driven by w, behind every Gaussian.

Why it exists: the small `shapes` preset builds no background Gaussians (its budget goes to the object), so without
this it composites onto black. On any other backdrop the foreground Gaussians then have to paint the backdrop
themselves, and the run degrades (big splats painting it, speckles, a G loss that runs away). What a camera sees
where its rays miss the object is an environment at infinity (exactly what `dataset_tool.py synth` renders, and
close to a distant real background), so that is what this models:

    colour(d) = phi(d) (S + A(w)),   phi(d) = [1, d, sin(f_k . d), cos(f_k . d)],  k = 1..K,

with d the unit world direction of a pixel's ray, S [F, 3] the learned backdrop every scene shares (its constant
row initialised to the dataset's border colour, so the first images already sit on the right backdrop, the rest
zero) and A(w) [F, 3] each scene's departure from it, one linear layer on the generator's background w
(zero-initialised: the untrained backdrop is exactly the border colour). A(w) learns at A_LR_MULTIPLIER times the
rate: with full-rate equalized weights, Adam moves a coefficient by up to lr x sum |w_i| / sqrt(w_dim), about 0.09
per step for the `shapes` preset's w_dim = 512, and the backdrop then flickers from sample to sample by +-0.2
within the first kimg; at 0.05 a step moves A(w) no more than S. The constant term covers plain backdrops (and a
per-scene tint), the linear terms a vertical gradient, and the K fixed sinusoids
(directions on a Fibonacci sphere, 0.6 / 1.2 / 2.4 cycles per radian) low-frequency noise. Because it depends on the
direction only, it is multi-view consistent and needs no depth. Its finest wavelength (0.4 rad) is about four times
the angular size of a `shapes` object (0.27 units seen from 2.7), so it cannot draw the object and leave the
Gaussians transparent; that is why, unlike the background Gaussians, it is not held back at the start of training.
Cost: one [pixels, F] x [F, 3] product per image (F = 28).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from splatting.cameras import camera_rays
from training.config import BACKDROP_MODES
from training.layers import EqLinear

# What a generator can be built with ("off": no backdrop, black behind the Gaussians, nothing added to the model):
# the config's modes less "auto", which train.py resolves to one of these before a generator is built.
BACKDROP_KINDS = tuple(mode for mode in BACKDROP_MODES if mode != "auto")
NUM_FREQUENCIES = 12
CYCLES_PER_RADIAN = (0.6, 1.2, 2.4)  # frequency k gets CYCLES_PER_RADIAN[k % 3]
A_LR_MULTIPLIER = 0.05  # learning-rate multiplier of the per-scene coefficients A(w) (module docstring)


def check_backdrop(kind, color) -> tuple[str, tuple[float, float, float]]:
    """(kind, colour as three floats); ValueError naming the argument otherwise."""
    if kind not in BACKDROP_KINDS:
        raise ValueError(f"backdrop: expected one of {', '.join(map(repr, BACKDROP_KINDS))}, got {kind!r}")
    try:
        values = tuple(float(v) for v in color)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or any(isinstance(v, bool) for v in color):
        raise ValueError(f"backdrop_color: expected three finite numbers (linear RGB, 0..1), got {color!r}")
    return kind, values


def fibonacci_frequencies(count: int = NUM_FREQUENCIES, cycles=CYCLES_PER_RADIAN) -> Tensor:
    """[count, 3] angular frequencies (radians per unit of direction): `count` directions spread evenly over the
    sphere (a Fibonacci lattice), frequency k scaled to 2 pi cycles[k % len(cycles)], so that every magnitude gets
    directions from the whole sphere rather than one band of elevations. Deterministic (no RNG)."""
    k = torch.arange(count, dtype=torch.float64)
    y = 1.0 - 2.0 * (k + 0.5) / count
    r = (1.0 - y * y).sqrt()
    phi = k * math.pi * (3.0 - math.sqrt(5.0))  # the golden angle
    directions = torch.stack([r * phi.cos(), y, r * phi.sin()], dim=-1)
    magnitude = 2 * math.pi * torch.tensor([cycles[i % len(cycles)] for i in range(count)], dtype=torch.float64)
    return (directions * magnitude[:, None]).float()


def world_ray_directions(world_to_cam: Tensor, K: Tensor, height: int, width: int) -> Tensor:
    """[N, H, W, 3] unit world directions of the rays through every pixel centre of N cameras (world_to_cam
    [N, 4, 4] OpenCV, K [N, 3, 3] in pixels). Only the rotation matters: a backdrop at infinity ignores where the
    camera is."""
    scale = K.new_tensor([width, height, 1.0])[:, None]
    rays = camera_rays(K / scale, height, width)  # [N, H, W, 3] camera space, z = 1
    rotation = world_to_cam[:, :3, :3]  # world -> camera; its transpose takes camera vectors to the world
    return torch.nn.functional.normalize(torch.einsum("nji,nhwj->nhwi", rotation, rays), dim=-1)


class BackdropField(nn.Module):
    """w [B, w_dim] -> coefficients [B, F, 3]; `image` turns them into the backdrop seen by a camera (see the module
    docstring for the model and why it looks like this)."""

    def __init__(self, w_dim: int, color=(0.0, 0.0, 0.0)):
        super().__init__()
        _, color = check_backdrop("field", color)
        self.w_dim = w_dim
        self.register_buffer("frequencies", fibonacci_frequencies())
        self.num_features = 4 + 2 * self.frequencies.shape[0]
        shared = torch.zeros(self.num_features, 3)
        shared[0] = torch.tensor(color)
        self.shared = nn.Parameter(shared)
        # Zero weights need no random draws: the fork leaves the global generator where it was, so that switching
        # the backdrop on changes no other weight's initialisation.
        with torch.random.fork_rng(devices=[]):
            self.per_scene = EqLinear(w_dim, self.num_features * 3, bias=False, lr_multiplier=A_LR_MULTIPLIER,
                                      weight_init=0.0)

    def forward(self, w: Tensor) -> Tensor:
        """-> S + A(w) [B, F, 3]."""
        if w.ndim != 2 or w.shape[1] != self.w_dim:
            raise ValueError(f"BackdropField: w must be [B, {self.w_dim}], got {list(w.shape)}")
        return self.shared + self.per_scene(w).view(w.shape[0], self.num_features, 3)

    def features(self, directions: Tensor) -> Tensor:
        """[..., 3] unit directions -> phi [..., F]."""
        phase = directions @ self.frequencies.to(directions.dtype).T
        return torch.cat([torch.ones_like(directions[..., :1]), directions, phase.sin(), phase.cos()], dim=-1)

    def colors(self, coefficients: Tensor, directions: Tensor) -> Tensor:
        """coefficients [B, F, 3] (forward's), unit directions [B, ..., 3] -> linear RGB [B, ..., 3] (not
        clamped, like the Gaussians' colours)."""
        phi = self.features(directions)
        rgb = torch.bmm(phi.reshape(phi.shape[0], -1, self.num_features), coefficients.to(phi.dtype))
        return rgb.view(*directions.shape)

    def image(self, coefficients: Tensor, world_to_cam: Tensor, K: Tensor, height: int, width: int) -> Tensor:
        """coefficients [N, F, 3] of N views' scenes, their cameras (world_to_cam [N, 4, 4], K [N, 3, 3] in
        pixels) -> the backdrop [N, 3, H, W] they see."""
        directions = world_ray_directions(world_to_cam.to(coefficients.dtype), K.to(coefficients.dtype),
                                          height, width)
        return self.colors(coefficients, directions).permute(0, 3, 1, 2)
