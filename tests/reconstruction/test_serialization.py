"""Serialization: Morton and Hilbert codes against brute-force definitions, orders/inverses, per-cloud
independence, wide scenes and bad inputs."""
import pytest
import torch

from reconstruction.densify.segment import DensifyError
from reconstruction.densify.serialization import ORDERS, encode, grid_coordinates, serialize


def _cube(side: int) -> torch.Tensor:
    axes = [torch.arange(side)] * 3
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _morton_bruteforce(point, depth):
    code = 0
    for bit in range(depth):
        code |= ((point[0] >> bit) & 1) << (3 * bit + 2)
        code |= ((point[1] >> bit) & 1) << (3 * bit + 1)
        code |= ((point[2] >> bit) & 1) << (3 * bit)
    return code


def test_morton_matches_bit_interleaving_on_8_cube():
    grid = _cube(8)
    expected = torch.tensor([_morton_bruteforce(p, 3) for p in grid.tolist()])
    assert torch.equal(encode(grid, 3, "z"), expected)


def test_morton_matches_bit_interleaving_at_21_bits():
    gen = torch.Generator().manual_seed(1)
    grid = torch.randint(0, 2**21, (64, 3), generator=gen)
    expected = torch.tensor([_morton_bruteforce(p, 21) for p in grid.tolist()])
    assert torch.equal(encode(grid, 21, "z"), expected)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("order", ["hilbert", "hilbert-trans"])
def test_hilbert_visits_every_cell_once_through_face_neighbours(depth, order):
    grid = _cube(2**depth)
    code = encode(grid, depth, order)
    assert torch.equal(torch.sort(code).values, torch.arange(8**depth))  # a bijection onto 0 .. 8^depth - 1
    path = grid[torch.argsort(code)]
    assert torch.equal((path[1:] - path[:-1]).abs().sum(1), torch.ones(8**depth - 1, dtype=torch.int64))


def test_hilbert_depth_one_is_the_gray_code():
    path = _cube(2)[torch.argsort(encode(_cube(2), 1, "hilbert"))]
    assert path.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 1],
                             [1, 0, 0]]


def test_mixed_depths_equal_encoding_each_depth_alone():
    gen = torch.Generator().manual_seed(2)
    depth = torch.randint(1, 8, (200,), generator=gen)
    grid = (torch.rand(200, 3, generator=gen) * (2.0 ** depth[:, None])).long()
    mixed = encode(grid, depth, "hilbert")
    for d in depth.unique().tolist():
        pick = depth == d
        assert torch.equal(mixed[pick], encode(grid[pick], d, "hilbert"))


@pytest.mark.parametrize("base", ["z", "hilbert"])
def test_trans_orders_equal_base_order_of_swapped_coordinates(base):
    grid = torch.randint(0, 32, (300, 3))
    assert torch.equal(encode(grid, 5, base + "-trans"), encode(grid[:, [1, 0, 2]], 5, base))


def _clouds(sizes, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coord = torch.cat([torch.rand(n, 3, generator=gen) * scale + 10 * b for b, n in enumerate(sizes)])
    batch = torch.cat([torch.full((n,), b) for b, n in enumerate(sizes)])
    perm = torch.randperm(coord.shape[0], generator=gen)  # clouds interleaved in the input
    return coord[perm], batch[perm]


def test_orders_are_permutations_sorting_codes_with_inverses():
    coord, batch = _clouds([50, 80, 7])
    ser = serialize(coord, batch, 0.1)
    assert ser.names == ORDERS and ser.code.shape == (4, coord.shape[0])
    positions = torch.arange(coord.shape[0])
    for o in range(4):
        assert torch.equal(torch.sort(ser.order[o]).values, positions)
        assert bool((ser.code[o][ser.order[o]][1:] >= ser.code[o][ser.order[o]][:-1]).all())
        assert torch.equal(ser.inverse[o][ser.order[o]], positions)
        assert torch.equal(ser.order[o][ser.inverse[o]], positions)


def test_batches_never_interleave_and_clouds_are_independent():
    coord, batch = _clouds([40, 60, 25])
    ser = serialize(coord, batch, 0.05)
    for o in range(4):
        sorted_batch = batch[ser.order[o]]
        assert bool((sorted_batch[1:] >= sorted_batch[:-1]).all())
        for b in range(3):
            alone = serialize(coord[batch == b], batch[batch == b] * 0, 0.05, orders=(ser.names[o],))
            members = torch.nonzero(batch == b).flatten()
            assert torch.equal(ser.order[o][sorted_batch == b], members[alone.order[0]])


def test_grid_coordinates_start_at_each_clouds_minimum():
    coord = torch.tensor([[1.0, 2.0, 3.0], [1.25, 2.5, 3.75], [-5.0, -5.0, -5.0], [-4.0, -4.5, -4.95]])
    batch = torch.tensor([0, 0, 3, 3])
    grid = grid_coordinates(coord, batch, 0.5)
    assert grid.tolist() == [[0, 0, 0], [0, 1, 1], [0, 0, 0], [2, 1, 0]]


def test_duplicate_cells_keep_index_order():
    coord = torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [0.51, 0.52, 0.53], [0.01, 0.0, 0.0]])
    ser = serialize(coord, torch.zeros(4, dtype=torch.int64), 0.25)
    for o in range(4):
        assert ser.order[o].tolist() == [1, 3, 0, 2]


def test_wide_scene_spanning_2_to_18_cells():
    gen = torch.Generator().manual_seed(3)
    coord = torch.rand(500, 3, generator=gen, dtype=torch.float64) * 2.0**18
    coord[0] = 0.0
    coord[1] = 2.0**18 - 0.5
    batch = torch.cat([torch.zeros(250, dtype=torch.int64), torch.ones(250, dtype=torch.int64)])
    ser = serialize(coord, batch, 1.0)
    assert ser.depth == 18
    for o in range(4):
        assert torch.equal(torch.sort(ser.order[o]).values, torch.arange(500))
        assert bool((batch[ser.order[o]][1:] >= batch[ser.order[o]][:-1]).all())
    # Codes are exact: the z code of point 1 is the interleaving of its 18-bit cell.
    cell = ser.grid_coord[1].tolist()
    assert ser.code[0, 1].item() == _morton_bruteforce(cell, 18)


def test_shuffle_is_seeded_and_evaluation_is_fixed():
    coord, batch = _clouds([30])
    names = [serialize(coord, batch, 0.1, shuffle=True, generator=torch.Generator().manual_seed(s)).names
             for s in (5, 5, 6, 7, 8)]
    assert names[0] == names[1] and sorted(names[0]) == sorted(ORDERS)
    assert len(set(names)) > 1
    torch.manual_seed(123)
    first = serialize(coord, batch, 0.1).names
    torch.manual_seed(456)
    assert serialize(coord, batch, 0.1).names == first == ORDERS


def test_empty_input():
    ser = serialize(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), 0.1)
    assert ser.order.shape == (4, 0) and ser.grid_coord.shape == (0, 3)


def test_too_wide_clouds_raise_one_clear_error():
    coord = torch.tensor([[0.0, 0.0, 0.0], [2.0**22, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(DensifyError, match="grid_size"):
        serialize(coord, torch.zeros(2, dtype=torch.int64), 1.0)
    coord = torch.tensor([[0.0, 0.0, 0.0], [2.0**21 - 1, 0.0, 0.0]] * 2, dtype=torch.float64)
    with pytest.raises(DensifyError, match="clouds need 1 bits"):
        serialize(coord, torch.tensor([0, 0, 1, 1]), 1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"coord": torch.zeros(3, 2)}, "coord must be"),
    ({"coord": torch.zeros(3, 3, dtype=torch.int64)}, "coord must be"),
    ({"coord": torch.tensor([[0.0, float("nan"), 0.0]] * 3)}, "NaN"),
    ({"batch": torch.zeros(3)}, "batch must be an int64"),
    ({"batch": torch.zeros(2, dtype=torch.int64)}, r"shape \(3,\)"),
    ({"batch": torch.tensor([0, -1, 0])}, ">= 0"),
    ({"grid_size": 0.0}, "grid_size"),
    ({"grid_size": float("inf")}, "grid_size"),
    ({"orders": ("z", "peano")}, "orders"),
    ({"orders": ()}, "orders"),
])
def test_serialize_rejects_bad_inputs(kwargs, match):
    args = {"coord": torch.rand(3, 3), "batch": torch.zeros(3, dtype=torch.int64), "grid_size": 0.1,
            "orders": ORDERS}
    args.update(kwargs)
    with pytest.raises(DensifyError, match=match):
        serialize(**args)


@pytest.mark.parametrize("grid, depth, order, match", [
    (torch.zeros(2, 3, dtype=torch.int64), 2, "morton", "order must be"),
    (torch.zeros(2, 3), 2, "z", "int64"),
    (torch.zeros(2, 2, dtype=torch.int64), 2, "z", "shape"),
    (torch.zeros(2, 3, dtype=torch.int64), 22, "z", "depth must be"),
    (torch.tensor([[4, 0, 0]]), 2, "hilbert", r"\[0, 2\^depth\)"),
    (torch.tensor([[-1, 0, 0]]), 2, "z", r"\[0, 2\^depth\)"),
    (torch.zeros(2, 3, dtype=torch.int64), torch.tensor([1]), "z", "depth tensor"),
])
def test_encode_rejects_bad_inputs(grid, depth, order, match):
    with pytest.raises(DensifyError, match=match):
        encode(grid, depth, order)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    coord, batch = _clouds([300, 200, 50])
    cpu = serialize(coord.double(), batch, 0.01)
    gpu = serialize(coord.double().cuda(), batch.cuda(), 0.01)
    for name in ("code", "order", "inverse", "grid_coord"):
        assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name))
