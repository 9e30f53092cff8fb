"""The fixed sample grid of a GAN run: reals.png once, then fakesKKKKKK.png and fakesKKKKKK_depth.png from G_ema
at every image tick (rank 0 writes them)."""
from __future__ import annotations

import os

import numpy as np
import torch

from torch_utils import misc
from training.config import TrainConfig

# fakes*.png render at least this many pixels per image: Gaussians are resolution-free, and a 16-px model's samples
# show what it learned only when rendered larger (the discriminator still sees the training resolution).
GRID_MIN_RESOLUTION = 128


def grid_shape(config: TrainConfig, resolution: int) -> tuple[int, int]:
    """(columns, rows): official clip(7680/W, 7, 32) x clip(4320/H, 4, 32) unless config.grid_size is set."""
    if config.grid_size is not None:
        return tuple(config.grid_size)
    return int(np.clip(7680 // resolution, 7, 32)), int(np.clip(4320 // resolution, 4, 32))


class SampleGrid:
    """The same reals, z and c at every tick, drawn from the run's seed (with generators of their own: the
    training's random streams are untouched), so a run's fakes*.png, and those of its resume, are comparable."""

    def __init__(self, config: TrainConfig, dataset, labels: torch.Tensor, z_dim: int):
        self.size = grid_shape(config, dataset.resolution)
        self.resolution = max(dataset.resolution, GRID_MIN_RESOLUTION)
        self.batch = config.batch_gpu
        count = self.size[0] * self.size[1]
        rng = np.random.RandomState(config.seed)
        self.indices = rng.choice(len(dataset), count, replace=count > len(dataset))
        self.z = torch.randn(count, z_dim, generator=torch.Generator().manual_seed(config.seed))
        self.c = labels[torch.from_numpy(self.indices)]

    def save_reals(self, dataset, path: str) -> None:
        reals = torch.from_numpy(np.stack([dataset[int(i)][0] for i in self.indices])).float() / 127.5 - 1
        misc.save_image_grid(reals, path, self.size)

    @torch.no_grad()
    def save_fakes(self, G, device: torch.device, run_dir: str, name: str) -> None:
        """run_dir/<name>.png (G, background on) and <name>_depth.png (negated depth, min-max), rendered at
        max(training resolution, GRID_MIN_RESOLUTION) per image."""
        images, depths = [], []
        for z, c in zip(self.z.split(self.batch), self.c.split(self.batch)):
            out = G(z.to(device), c.to(device), neural_rendering_resolution=self.resolution)
            images.append(out["image"].cpu())
            depths.append(-out["image_depth"].cpu())
        depth = torch.cat(depths)
        lo, hi = float(depth.min()), float(depth.max())
        misc.save_image_grid(torch.cat(images), os.path.join(run_dir, f"{name}.png"), self.size)
        misc.save_image_grid(depth, os.path.join(run_dir, f"{name}_depth.png"), self.size,
                             drange=(lo, hi if hi > lo else lo + 1))
