"""Submanifold conv: equals dense F.conv3d at occupied voxels, the duplicate-voxel rule, cloud separation,
float64 gradients, bad inputs, and (with spconv on CUDA) parity with spconv."""
import pytest
import torch
import torch.nn.functional as F

from reconstruction.densify.segment import DensifyError
from reconstruction.densify.sparse_conv import (FORWARD_OFFSETS, NeighbourTable, SubmanifoldConv3d,
                                                neighbour_table, offset_of)


def _random_voxels(shape, num_clouds, density, seed):
    """Distinct occupied voxels of `num_clouds` grids of `shape`, in a shuffled point order."""
    gen = torch.Generator().manual_seed(seed)
    occupied = torch.rand(num_clouds, *shape, generator=gen) < density
    cells = torch.nonzero(occupied)
    cells = cells[torch.randperm(cells.shape[0], generator=gen)]
    return cells[:, 1:].contiguous(), cells[:, 0].contiguous()


def _dense_reference(conv, feats, grid, batch, num_clouds, shape):
    volume = feats.new_zeros(num_clouds, feats.shape[1], *shape)
    volume[batch, :, grid[:, 0], grid[:, 1], grid[:, 2]] = feats
    dense = F.conv3d(volume, conv.weight.permute(0, 4, 1, 2, 3), conv.bias, padding=1)
    return dense[batch, :, grid[:, 0], grid[:, 1], grid[:, 2]]


def test_offsets_follow_the_flat_kernel_index():
    assert offset_of(0) == (-1, -1, -1) and offset_of(13) == (0, 0, 0) and offset_of(26) == (1, 1, 1)
    assert offset_of(14) == (0, 0, 1) and offset_of(15) == (0, 1, -1) and offset_of(22) == (1, 0, 0)
    for k in FORWARD_OFFSETS:
        assert tuple(-d for d in offset_of(k)) == offset_of(26 - k)


@pytest.mark.parametrize("bias", [True, False])
def test_equals_dense_conv3d_without_duplicates(bias):
    shape = (6, 7, 5)
    grid, batch = _random_voxels(shape, 3, 0.35, seed=0)
    conv = SubmanifoldConv3d(4, 5, bias=bias).double()
    feats = torch.randn(grid.shape[0], 4, dtype=torch.float64)
    out = conv(feats, grid, batch)
    torch.testing.assert_close(out, _dense_reference(conv, feats, grid, batch, 3, shape))


def test_translation_and_cloud_id_gaps_do_not_matter():
    shape = (5, 5, 5)
    grid, batch = _random_voxels(shape, 2, 0.4, seed=1)
    conv = SubmanifoldConv3d(3, 2).double()
    feats = torch.randn(grid.shape[0], 3, dtype=torch.float64)
    expected = _dense_reference(conv, feats, grid, batch, 2, shape)
    moved = grid + torch.tensor([-7, 1000, 3])
    torch.testing.assert_close(conv(feats, moved, batch * 5), expected)


def test_clouds_at_the_same_coordinates_do_not_mix():
    grid, _ = _random_voxels((4, 4, 4), 1, 0.5, seed=2)
    conv = SubmanifoldConv3d(2, 3)
    feats_a, feats_b = torch.randn(grid.shape[0], 2), torch.randn(grid.shape[0], 2)
    zeros = torch.zeros(grid.shape[0], dtype=torch.int64)
    together = conv(torch.cat([feats_a, feats_b]), torch.cat([grid, grid]), torch.cat([zeros, zeros + 1]))
    torch.testing.assert_close(together[: grid.shape[0]], conv(feats_a, grid, zeros))
    torch.testing.assert_close(together[grid.shape[0]:], conv(feats_b, grid, zeros))


def test_duplicate_voxels_follow_the_representative_rule():
    # Points 0, 1 share voxel (0,0,0) (0 represents it); 2 is alone at (0,0,1); 3, 4 share (1,0,0) (3 represents
    # it). Point 1 is a non-representative with forward links, point 4 one without.
    grid = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0]])
    batch = torch.zeros(5, dtype=torch.int64)
    conv = SubmanifoldConv3d(2, 2, bias=False).double()
    f = torch.randn(5, 2, dtype=torch.float64)
    w = conv.weight.reshape(2, 27, 2)

    def tap(k, i):
        return w[:, k] @ f[i]

    expected = torch.stack([
        tap(13, 0) + tap(14, 2) + tap(22, 3),
        tap(13, 1) + tap(14, 2) + tap(22, 3),
        tap(13, 2) + tap(12, 0) + tap(12, 1) + tap(21, 3),  # (1,0,0) is at offset (1,0,-1) = tap 21 from (0,0,1)
        tap(13, 3) + tap(4, 0) + tap(4, 1) + tap(5, 2),     # mirrors: 26-22 = 4, 26-21 = 5
        tap(13, 4),                                         # nothing at its forward offsets
    ])
    torch.testing.assert_close(conv(f, grid, batch), expected)


def test_gradcheck_float64_with_duplicates():
    grid = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1], [2, 1, 0]])
    batch = torch.tensor([0, 0, 0, 0, 0, 1])
    conv = SubmanifoldConv3d(2, 3).double()
    feats = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    table = neighbour_table(grid, batch)

    def run(x, weight, bias):
        return torch.func.functional_call(conv, {"weight": weight, "bias": bias}, (x, grid, batch, table))

    assert torch.autograd.gradcheck(run, (feats, conv.weight.detach().clone().requires_grad_(),
                                          conv.bias.detach().clone().requires_grad_()))


def test_reused_neighbour_table_gives_the_same_result():
    grid, batch = _random_voxels((5, 5, 5), 2, 0.3, seed=4)
    grid = torch.cat([grid, grid[:7]])  # some duplicates
    batch = torch.cat([batch, batch[:7]])
    conv = SubmanifoldConv3d(3, 3)
    feats = torch.randn(grid.shape[0], 3)
    table = neighbour_table(grid, batch)
    torch.testing.assert_close(conv(feats, grid, batch, table), conv(feats, grid, batch))
    assert isinstance(table, NeighbourTable) and table.num_points == grid.shape[0]


def test_empty_input_and_state_dict_layout():
    conv = SubmanifoldConv3d(3, 4)
    assert conv(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)).shape \
        == (0, 4)
    assert {k: tuple(v.shape) for k, v in conv.state_dict().items()} == {"weight": (4, 3, 3, 3, 3), "bias": (4,)}


@pytest.mark.parametrize("feats, grid, batch, match", [
    (torch.zeros(3, 5), torch.zeros(3, 3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), r"\(N, 2\)"),
    (torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(3, dtype=torch.int64), "grid_coord must be an int64"),
    (torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), "grid_coord"),
    (torch.zeros(3, 2), torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), "4 rows"),
    (torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.int64), torch.zeros(3, dtype=torch.int32), "batch"),
    (torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.int64), torch.tensor([0, -2, 0]), ">= 0"),
])
def test_forward_rejects_bad_inputs(feats, grid, batch, match):
    with pytest.raises(DensifyError, match=match):
        SubmanifoldConv3d(2, 3)(feats, grid, batch)


def test_rejects_a_table_of_other_points_and_too_wide_keys():
    conv = SubmanifoldConv3d(2, 3)
    grid = torch.zeros(3, 3, dtype=torch.int64)
    batch = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(DensifyError, match="neighbours must be"):
        conv(torch.zeros(3, 2), grid, batch, neighbour_table(grid[:2], batch[:2]))
    wide = torch.tensor([[0, 0, 0], [2**21, 0, 0]])
    with pytest.raises(DensifyError, match="bits of voxel key"):
        neighbour_table(wide, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DensifyError, match="backend"):
        SubmanifoldConv3d(2, 3, backend="cuda")


def test_spconv_backend_off_cuda_is_a_clear_error():
    conv = SubmanifoldConv3d(2, 3, backend="spconv")
    with pytest.raises(DensifyError, match="backend='spconv' needs spconv"):
        conv(torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    grid, batch = _random_voxels((8, 8, 8), 2, 0.3, seed=5)
    grid, batch = torch.cat([grid, grid[:9]]), torch.cat([batch, batch[:9]])
    conv = SubmanifoldConv3d(8, 6)
    feats = torch.randn(grid.shape[0], 8)
    expected = conv(feats, grid, batch)
    torch.testing.assert_close(conv.cuda()(feats.cuda(), grid.cuda(), batch.cuda()).cpu(), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_spconv_backend_matches_torch_without_duplicates():
    pytest.importorskip("spconv.pytorch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    grid, batch = _random_voxels((10, 9, 8), 2, 0.3, seed=6)
    grid, batch = grid.cuda(), batch.cuda()
    torch_conv = SubmanifoldConv3d(8, 16).cuda()
    spconv_conv = SubmanifoldConv3d(8, 16, backend="spconv").cuda()
    spconv_conv.load_state_dict(torch_conv.state_dict())
    feats = torch.randn(grid.shape[0], 8, device="cuda")
    torch.testing.assert_close(spconv_conv(feats, grid, batch), torch_conv(feats, grid, batch), rtol=1e-3, atol=1e-4)
