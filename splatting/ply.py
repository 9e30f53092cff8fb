"""3DGS-standard .ply files (the layout splat viewers and the 3DGS tools read), written and read losslessly.

One `vertex` element of float32 properties, binary little-endian, in this order:
x y z, nx ny nz (zeros), f_dc_0..2, f_rest_0.. (only for SH degree > 0; channel-major: f_rest index =
channel * (K - 1) + coefficient - 1), opacity (logit), scale_0..2 (log), rot_0..3 (w, x, y, z, unnormalized).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from .atomic import atomic_file
from .gaussians import Gaussians

_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]

# World frames a splat .ply can be written in: "opencv" (y down, z forward; what common splat viewers expect and
# gen_videos exports by default) or "eg3d" (the generator's y-up world).
PLY_FRAMES = ("opencv", "eg3d")
MAX_SH_DEGREE = 3  # the largest degree the 3DGS layout (and read_ply) knows


def property_names(sh_degree: int) -> list[str]:
    """Property names in file order for SH degree 0-3."""
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _rows(g: Gaussians) -> np.ndarray:
    """[N, P] float32 matrix of one scene's properties in file order."""
    def np32(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy()

    n, k = g.num_gaussians, g.sh.shape[2]
    sh = np32(g.sh[0])  # [N, K, 3]
    rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))  # channel-major
    return np.concatenate([np32(g.means[0]), np.zeros((n, 3), np.float32), sh[:, 0, :], rest,
                           np32(g.opacity_logits[0])[:, None], np32(g.log_scales[0]), np32(g.quats[0])], axis=1)


def pad_sh(gaussians: Gaussians, sh_degree: int) -> Gaussians:
    """The same Gaussians with SH degree `sh_degree` (>= theirs): the added coefficients are zero, so every
    renderer shows the same colours. The Inria 3DGS loader, for one, asserts degree 3 (45 f_rest_* columns)."""
    if isinstance(sh_degree, bool) or not isinstance(sh_degree, int) or not 0 <= sh_degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh_degree: expected an integer 0-{MAX_SH_DEGREE}, got {sh_degree!r}")
    if sh_degree < gaussians.sh_degree:
        raise ValueError(f"sh_degree: {sh_degree} is below the Gaussians' own degree {gaussians.sh_degree} "
                         f"(writing would drop colour information)")
    extra = (sh_degree + 1) ** 2 - gaussians.sh.shape[2]
    if extra == 0:
        return gaussians
    zeros = gaussians.sh.new_zeros(*gaussians.sh.shape[:2], extra, 3)
    return dataclasses.replace(gaussians, sh=torch.cat([gaussians.sh, zeros], dim=2))


def write_ply(path: str | os.PathLike, gaussians: Gaussians, scene: int | None = None,
              sh_degree: int | None = None) -> None:
    """Write one scene of `gaussians` (B must be 1 unless `scene` picks one) atomically to `path`; sh_degree
    (None = the Gaussians' own) pads the colours with zero higher-order coefficients (see pad_sh)."""
    if not isinstance(gaussians, Gaussians):
        raise ValueError(f"write_ply: expected a splatting.Gaussians, got {type(gaussians).__name__}")
    if scene is None:
        if gaussians.batch_size != 1:
            raise ValueError(f"write_ply: gaussians hold B = {gaussians.batch_size} scenes; pass scene=<index> "
                             f"to pick the one to write")
        scene = 0
    if not -gaussians.batch_size <= scene < gaussians.batch_size:
        raise ValueError(f"write_ply: scene={scene} is out of range for B = {gaussians.batch_size}")
    g = gaussians.map(lambda t: t[scene:scene + 1])
    g.validate()
    if sh_degree is not None:
        g = pad_sh(g, sh_degree)
    names = property_names(g.sh_degree)
    data = np.ascontiguousarray(_rows(g), dtype="<f4")
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {data.shape[0]}"]
                       + [f"property float {name}" for name in names] + ["end_header"]) + "\n"
    path = os.fspath(path)
    with atomic_file(path) as f:
        f.write(header.encode("ascii"))
        f.write(data.tobytes())


def read_ply(path: str | os.PathLike, device: torch.device | str = "cpu") -> Gaussians:
    """Read a 3DGS-standard .ply (any PLY encoding) into Gaussians with B = 1 (float32)."""
    from plyfile import PlyData  # read-only dependency; writing needs nothing but numpy

    path = os.fspath(path)
    try:
        ply = PlyData.read(path)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable PLY file ({type(exc).__name__}: {exc})") from None
    if "vertex" not in [el.name for el in ply.elements]:
        raise ValueError(f"{path}: no 'vertex' element; not a Gaussian splat PLY")
    vertex = ply["vertex"]
    present = [p.name for p in vertex.properties]
    missing = [name for name in _REQUIRED if name not in present]
    if missing:
        raise ValueError(f"{path}: not a 3DGS splat PLY; vertex element lacks propert"
                         f"{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}")
    rest_names = [name for name in present if name.startswith("f_rest_")]
    num_rest = len(rest_names)
    if num_rest not in (0, 9, 24, 45) or set(rest_names) != {f"f_rest_{i}" for i in range(num_rest)}:
        raise ValueError(f"{path}: expected f_rest_0..f_rest_<M-1> with M in 0, 9, 24, 45 (SH degree 0-3), "
                         f"got {num_rest} f_rest properties")

    def column(*names: str) -> torch.Tensor:
        array = np.stack([np.asarray(vertex[name], dtype=np.float32) for name in names], axis=-1)
        return torch.from_numpy(array).to(device)

    n, k = vertex.count, num_rest // 3 + 1
    dc = column("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :]
    if num_rest:
        rest = column(*[f"f_rest_{i}" for i in range(num_rest)]).reshape(n, 3, k - 1).transpose(1, 2)
        sh = torch.cat([dc, rest], dim=1)
    else:
        sh = dc
    return Gaussians(
        means=column("x", "y", "z")[None],
        log_scales=column("scale_0", "scale_1", "scale_2")[None],
        quats=column("rot_0", "rot_1", "rot_2", "rot_3")[None],
        opacity_logits=column("opacity")[None, :, 0],
        sh=sh[None].contiguous(),
    )
