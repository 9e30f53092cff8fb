"""3DGS-standard .ply: exact round trip, property names and order (checked with plyfile), clear errors."""
import os

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from splatting import Gaussians, read_ply, write_ply
from splatting.ply import property_names

from ._scenes import random_gaussians


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_is_exact(tmp_path, degree):
    g = random_gaussians(1, 37, sh_degree=degree, dtype=torch.float32)
    path = tmp_path / "scene.ply"
    write_ply(path, g)
    back = read_ply(path)
    assert back.batch_size == 1 and back.sh_degree == degree
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert torch.equal(getattr(back, name), getattr(g, name)), name
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir()), "temp file left behind"


def test_layout_matches_3dgs_convention(tmp_path):
    g = random_gaussians(2, 5, sh_degree=2, dtype=torch.float32)
    path = tmp_path / "scene.ply"
    write_ply(path, g, scene=1)
    ply = PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    assert [e.name for e in ply.elements] == ["vertex"]
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(24)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected == property_names(2)
    assert all(vertex[name].dtype == np.float32 for name in names)
    assert np.all(vertex["nx"] == 0)
    sh = g.sh[1].numpy()  # [N, 9, 3]
    # channel-major f_rest: index = channel * (K - 1) + (coefficient - 1)
    for channel in range(3):
        for coeff in range(1, 9):
            np.testing.assert_array_equal(vertex[f"f_rest_{channel * 8 + coeff - 1}"], sh[:, coeff, channel])
    np.testing.assert_array_equal(vertex["rot_0"], g.quats[1, :, 0].numpy())  # w first
    np.testing.assert_array_equal(vertex["opacity"], g.opacity_logits[1].numpy())
    np.testing.assert_array_equal(vertex["scale_2"], g.log_scales[1, :, 2].numpy())


def test_write_errors_and_atomicity(tmp_path):
    g = random_gaussians(2, 3)
    with pytest.raises(ValueError, match="B = 2 scenes; pass scene=<index>"):
        write_ply(tmp_path / "a.ply", g)
    with pytest.raises(ValueError, match="scene=5 is out of range"):
        write_ply(tmp_path / "a.ply", g, scene=5)
    bad = g.map(torch.clone)
    bad.means[0, 0, 0] = float("inf")
    target = tmp_path / "keep.ply"
    target.write_bytes(b"old contents")
    with pytest.raises(ValueError, match="non-finite"):
        write_ply(target, bad, scene=0)
    assert target.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["keep.ply"]


def test_read_rejects_non_splat_files(tmp_path):
    mesh = np.zeros(4, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("opacity", "f4")])
    path = tmp_path / "mesh.ply"
    PlyData([PlyElement.describe(mesh, "vertex")]).write(str(path))
    with pytest.raises(ValueError, match=r"mesh.ply: not a 3DGS splat PLY; vertex element lacks properties f_dc_0"):
        read_ply(path)
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"hello world\n")
    with pytest.raises(ValueError, match="junk.ply: not a readable PLY file"):
        read_ply(junk)
    faces = tmp_path / "faces.ply"
    PlyData([PlyElement.describe(np.zeros(2, dtype=[("a", "f4")]), "face")]).write(str(faces))
    with pytest.raises(ValueError, match="no 'vertex' element"):
        read_ply(faces)


def test_read_accepts_ascii_and_float64(tmp_path):
    names = property_names(0)
    data = np.zeros(3, dtype=[(name, "f8") for name in names])
    data["rot_0"] = 1.0
    data["x"] = [0.1, 0.2, 0.3]
    path = tmp_path / "ascii.ply"
    PlyData([PlyElement.describe(data, "vertex")], text=True).write(str(path))
    g = read_ply(path)
    assert isinstance(g, Gaussians) and g.means.dtype == torch.float32 and g.num_gaussians == 3
    torch.testing.assert_close(g.means[0, :, 0], torch.tensor([0.1, 0.2, 0.3]))
