"""ADA pipeline: identity at p = 0, exact integer ops, affine resampling against the analytic map, colour ops'
invariants, gradients (including R1's double backward), determinism, state save/restore, and the p controller."""
import json

import pytest
import torch

from training.augment import COLOR_OPS, GEOMETRIC_OPS, AdaController, AugmentPipe, ada_p_update

ALL_OFF = {op: 0.0 for op in GEOMETRIC_OPS + COLOR_OPS}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _only(*ops, **extra):
    kwargs = dict(ALL_OFF)
    kwargs.update({op: 1.0 for op in ops})
    kwargs.update(extra)
    return AugmentPipe(**kwargs)


def _images(b=4, c=3, h=16, w=16, seed=0, dtype=torch.float32):
    return torch.randn(b, c, h, w, generator=_gen(seed), dtype=dtype)


def test_p_zero_is_identity_and_default_ops():
    pipe = AugmentPipe()
    x = _images()
    assert torch.equal(pipe(x, _gen()), x)
    assert pipe.xflip == 0.0 and all(getattr(pipe, op) == 1.0 for op in GEOMETRIC_OPS + COLOR_OPS if op != "xflip")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_p_one_changes_images_keeps_shape_and_dtype(dtype):
    pipe = AugmentPipe(p=1.0)
    x = _images(dtype=dtype)
    y = pipe(x, _gen())
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
    assert (y - x).abs().amax(dim=(1, 2, 3)).min() > 0.1   # every sample changed


def test_deterministic_given_generator():
    pipe = AugmentPipe(p=0.5)
    x = _images(b=8)
    assert torch.equal(pipe(x, _gen(7)), pipe(x, _gen(7)))
    assert not torch.equal(pipe(x, _gen(7)), pipe(x, _gen(8)))


def test_rotate90_and_xflip_are_exact():
    x = _images(b=16)
    y = _only("rotate90", p=1.0)(x, _gen(1))
    # atol 1e-5: the sample points hit pixel centres up to float32 round-off of the normalized grid coordinates.
    seen = set()
    for xi, yi in zip(x, y):
        matches = [k for k in range(4) if torch.allclose(yi, torch.rot90(xi, k, dims=(1, 2)), atol=1e-5)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) >= 3
    y = _only("xflip", p=1.0)(x, _gen(2))
    flips = [torch.allclose(yi, xi.flip(-1), atol=1e-5) for xi, yi in zip(x, y)]
    same = [torch.allclose(yi, xi, atol=1e-5) for xi, yi in zip(x, y)]
    assert all(f or s for f, s in zip(flips, same)) and any(flips) and any(same)


def test_xint_is_an_integer_shift():
    x = _images(b=8, h=32, w=32)
    y = _only("xint", p=1.0)(x, _gen(3))
    for xi, yi in zip(x, y):
        # find the shift (|t| <= 0.125 * 32 = 4) that reproduces the interior of the output
        found = False
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                shifted = torch.roll(xi, shifts=(dy, dx), dims=(1, 2))
                if torch.allclose(yi[:, 5:-5, 5:-5], shifted[:, 5:-5, 5:-5], atol=1e-5):
                    found = True
        assert found


def test_geometric_chain_matches_analytic_affine_map():
    """Bilinear sampling reproduces linear functions exactly, so on ramp images the output is the sampling matrix
    applied to the pixel coordinates (wherever the sample lands inside the image)."""
    h = w = 32
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij")
    ramp = torch.stack([xs, ys, torch.ones_like(xs)]).double()[None].repeat(6, 1, 1, 1)
    pipe = AugmentPipe(**{op: 0.0 for op in COLOR_OPS}, xflip=1.0, p=1.0)
    y = pipe(ramp, _gen(5))
    rand = pipe._draws(6, _gen(5), ramp.device)
    m = pipe._geometric_matrix(rand, pipe.p.double().expand(6), w, h).double()
    q = torch.stack([xs, ys, torch.ones_like(xs)]).double().reshape(3, -1)
    src = m @ q                                                     # [6, 3, H*W]
    inside = (src[:, 0].abs() < w / 2 - 0.5) & (src[:, 1].abs() < h / 2 - 0.5)
    assert inside.float().mean() > 0.2
    got = y.reshape(6, 3, -1)
    assert torch.allclose(got[:, 0][inside], src[:, 0][inside], atol=1e-6)
    assert torch.allclose(got[:, 1][inside], src[:, 1][inside], atol=1e-6)
    # The ops actually changed the geometry (not just identity matrices).
    assert (m - torch.eye(3, dtype=m.dtype)).abs().amax(dim=(1, 2)).min() > 1e-3


def _luma(x):
    return x.mean(dim=1)


def test_color_ops_invariants():
    x = _images(b=8, dtype=torch.float64)
    y = _only("brightness", p=1.0)(x, _gen(1))
    d = y - x
    assert torch.allclose(d, d[:, :1, :1, :1].expand_as(d)) and d.abs().max() > 0
    y = _only("contrast", p=1.0)(x, _gen(2))
    ratio = y / x
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio))
    y = _only("hue", p=1.0)(x, _gen(3))                      # rotation about luma: luma and chroma norm kept
    assert torch.allclose(_luma(y), _luma(x))
    chroma = lambda t: (t - _luma(t)[:, None]).norm(dim=1)  # noqa: E731
    assert torch.allclose(chroma(y), chroma(x)) and not torch.allclose(y, x)
    y = _only("saturation", p=1.0)(x, _gen(4))               # chroma scaled, luma kept
    assert torch.allclose(_luma(y), _luma(x)) and not torch.allclose(y, x)
    y = _only("lumaflip", p=1.0)(x, _gen(5))                 # luma negated or kept, chroma kept
    assert torch.allclose(y - _luma(y)[:, None], x - _luma(x)[:, None])
    flipped = [torch.allclose(_luma(y[i : i + 1]), -_luma(x[i : i + 1])) for i in range(8)]
    kept = [torch.allclose(y[i], x[i]) for i in range(8)]
    assert all(f != k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_six_channel_stack_gets_the_same_transform():
    x = _images(b=4)
    y = AugmentPipe(p=1.0)(torch.cat([x, x], dim=1), _gen(9))
    assert torch.allclose(y[:, :3], y[:, 3:])


def test_differentiable_and_double_backward():
    pipe = AugmentPipe(p=1.0)
    x = _images(b=1, h=6, w=6, dtype=torch.float64).requires_grad_(True)
    f = lambda t: pipe(t, _gen(4))  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    # R1 through the augmentation: gradient of a penalty on d(score)/dx.
    def r1(t):
        g, = torch.autograd.grad((f(t) ** 3).sum(), t, create_graph=True)
        return g.square().sum()
    assert torch.autograd.gradcheck(r1, (x,))


def test_state_roundtrip_and_json_kwargs():
    pipe = AugmentPipe(p=0.0)
    pipe.p.fill_(0.37)
    kwargs = json.loads(json.dumps(pipe.init_kwargs))
    clone = AugmentPipe(**kwargs)
    clone.load_state_dict(pipe.state_dict(), strict=True)
    assert float(clone.p) == pytest.approx(0.37)
    x = _images()
    assert torch.equal(pipe(x, _gen(1)), clone(x, _gen(1)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="hue must be a finite number >= 0"):
        AugmentPipe(hue=-1)
    with pytest.raises(ValueError, match="p must be in"):
        AugmentPipe(p=1.5)
    with pytest.raises(ValueError, match="multiple of 3"):
        AugmentPipe(p=1.0)(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="rotate90 needs square"):
        AugmentPipe(p=1.0)(torch.zeros(1, 3, 8, 16))


def test_ada_p_update_formula():
    step = 32 * 4 / (500 * 1000)
    assert ada_p_update(0.0, 0.9, 0.6, 32, 4, 500) == pytest.approx(step)
    assert ada_p_update(0.5, 0.1, 0.6, 32, 4, 500) == pytest.approx(0.5 - step)
    assert ada_p_update(0.0, 0.1, 0.6, 32, 4, 500) == 0.0
    assert ada_p_update(1.0, 0.9, 0.6, 32, 4, 500) == 1.0


def test_controller_updates_every_interval():
    pipe = AugmentPipe()
    ctl = AdaController(pipe, target=0.6, interval=4, speed_kimg=0.5)   # fast: one update = 4*8/500
    for it in range(4):
        ctl.accumulate(torch.ones(8, 1))
        rt = ctl.step(batch_size=8)
        assert (rt is None) == (it < 3)
    assert rt == 1.0 and float(pipe.p) == pytest.approx(32 / 500)
    for _ in range(4):
        ctl.accumulate(-torch.ones(8, 1))
        ctl.step(batch_size=8)
    assert float(pipe.p) == pytest.approx(0.0, abs=1e-7)
    calls = []
    ctl.accumulate(torch.ones(8, 1))
    state = ctl.state_dict()
    for _ in range(4):
        ctl.step(8, reduce_fn=lambda s: calls.append(1) or s * 2)
    assert calls == [1]
    ctl2 = AdaController(AugmentPipe())
    ctl2.load_state_dict(state)
    assert ctl2.iteration == ctl.iteration - 4 and float(ctl2.stats[1]) == 8
    with pytest.raises(ValueError, match="target"):
        AdaController(pipe, target=1.5)


class _CountReads(torch.overrides.TorchFunctionMode):
    """Counts tensor -> Python value reads (the calls that wait for a GPU)."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
             torch.Tensor.__int__, torch.Tensor.cpu, torch.Tensor.numpy}

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.reads += func in self.READS
        return func(*args, **(kwargs or {}))


def test_ada_statistics_stay_on_the_device_and_p_is_read_once_per_change():
    pipe = AugmentPipe()
    ctl = AdaController(pipe, target=0.6, interval=4, speed_kimg=0.5)
    images, gen = torch.rand(2, 3, 8, 8), torch.Generator().manual_seed(0)
    with _CountReads() as counter:
        for _ in range(3):  # three iterations: accumulate, augment, step; no update of p yet
            ctl.accumulate(torch.ones(8, 1))
            pipe(images, generator=gen)
            assert ctl.step(8) is None
    assert counter.reads == 0
    with _CountReads() as counter:
        ctl.accumulate(torch.ones(8, 1))
        assert ctl.step(8) == 1.0  # the interval's one read of the statistics
        pipe(images, generator=gen)
        pipe(images, generator=gen)
    assert counter.reads == 1 and pipe.p_value() == pytest.approx(32 / 500)
    pipe.p.fill_(0.25)  # any other change of the buffer is noticed (one read, then none)
    with _CountReads() as counter:
        assert pipe.p_value() == 0.25 and pipe.p_value() == 0.25
    assert counter.reads == 1
    clone = AugmentPipe()
    clone.load_state_dict(pipe.state_dict())
    assert clone.p_value() == 0.25
    clone.set_p(0.0)
    assert clone(images) is images  # p = 0: the identity without augmenting
