"""Losses, regularizers and schedules against direct reference computations; the cross-rank gather's gradients."""
import math
import os
import tempfile

import numpy as np
import pytest
import torch
from scipy import ndimage

from training import loss as L


def test_blur_taps_and_image_blur_match_reference():
    sigma = 1.3
    size = math.floor(3 * sigma)
    x = np.arange(-size, size + 1)
    taps = 2.0 ** (-(x / sigma) ** 2)
    taps /= taps.sum()
    np.testing.assert_allclose(L.blur_taps(sigma).numpy(), taps, rtol=1e-6)
    images = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    out = L.blur_images(images, sigma)
    kernel = np.outer(taps, taps)
    for b in range(2):
        for c in range(3):
            ref = ndimage.convolve(images[b, c].numpy(), kernel, mode="constant", cval=0.0)
            np.testing.assert_allclose(out[b, c].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert L.blur_images(images, 0.0) is images and L.blur_images(images, 0.3) is images  # floor(3 sigma) = 0


def test_blur_sigma_schedule():
    assert L.blur_sigma(0, 200) == 10
    assert L.blur_sigma(100_000, 200) == pytest.approx(5)
    assert L.blur_sigma(250_000, 200) == 0
    assert L.blur_sigma(0, 200, official_resume=True) == 0


def test_gpc_swap_probability_fades_from_one():
    assert L.gpc_swap_prob(0, 0.5, 1000) == 1
    assert L.gpc_swap_prob(500_000, 0.5, 1000) == pytest.approx(0.75)
    assert L.gpc_swap_prob(2_000_000, 0.8, 1000) == pytest.approx(0.8)
    assert L.gpc_swap_prob(0, 0.8, 1000, official_resume=True) == pytest.approx(0.8)


def test_swap_pose_conditioning_rolls_by_one():
    c = torch.arange(8.0).view(8, 1).expand(8, 25).clone()
    assert torch.equal(L.swap_pose_conditioning(c, 1.0, torch.Generator().manual_seed(0)), torch.roll(c, 1, 0))
    assert torch.equal(L.swap_pose_conditioning(c, 0.0, torch.Generator().manual_seed(0)), c)
    mixed = L.swap_pose_conditioning(c, 0.5, torch.Generator().manual_seed(1))
    own, prev = mixed[:, 0] == c[:, 0], mixed[:, 0] == torch.roll(c, 1, 0)[:, 0]
    assert bool((own | prev).all()) and own.any() and prev.any()


def test_background_and_ema_schedules():
    assert not L.background_enabled(49_999, 50) and L.background_enabled(50_000, 50)
    assert L.background_enabled(0, 50, official_resume=True)
    assert L.ema_beta(0, 32, 10, 0.05) == 0.0  # G_ema = G at the start (ramp-up)
    assert L.ema_beta(1_000_000, 32, 10, 0.05) == pytest.approx(0.5 ** (32 / 10_000))
    assert L.ema_beta(100_000, 32, 10, 0.05) == pytest.approx(0.5 ** (32 / 5_000))
    assert L.ema_beta(0, 32, 10, None) == pytest.approx(0.5 ** (32 / 10_000))


def test_adversarial_losses():
    logits = torch.tensor([[-2.0], [0.0], [3.0]])
    torch.testing.assert_close(L.generator_adv_loss(logits), torch.log1p(torch.exp(-logits)))
    torch.testing.assert_close(L.discriminator_fake_loss(logits), torch.log1p(torch.exp(logits)))
    torch.testing.assert_close(L.discriminator_real_loss(logits), torch.log1p(torch.exp(-logits)))


def test_r1_penalty_matches_analytic_gradient():
    w = torch.randn(3, 4, 4, dtype=torch.float64)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    logits = (w * x.square()).flatten(1).sum(1, keepdim=True)
    penalty = L.r1_penalty(x, logits)
    expected = (2 * w * x).square().flatten(1).sum(1)
    torch.testing.assert_close(penalty, expected)
    penalty.sum().backward()  # the double-backward graph is kept: d/dx sum (2 w x)^2 = 8 w^2 x
    torch.testing.assert_close(x.grad, 8 * w.square() * x.detach())


def reference_contrastive(feat, cam, temperature):
    f = feat / np.linalg.norm(feat, axis=1, keepdims=True)
    c = cam / np.linalg.norm(cam, axis=1, keepdims=True)
    s = f @ c.T / temperature
    s = s - s.max(axis=1, keepdims=True)
    log_prob = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_prob))


def test_pose_contrastive_matches_reference_and_gradcheck():
    feat = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    cam = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    value = L.pose_contrastive_loss(feat, cam, 0.1)
    assert value.item() == pytest.approx(reference_contrastive(feat.detach().numpy(), cam.detach().numpy(), 0.1))
    assert torch.autograd.gradcheck(lambda f, c: L.pose_contrastive_loss(f, c, 0.1), (feat, cam))


def test_knn_regularizer_matches_brute_force():
    points = torch.randn(2, 9, 3, dtype=torch.float64)
    k = 4
    expected = []
    for b in range(2):
        p = points[b].numpy()
        for i in range(9):
            d = sorted(((p[i] - p[j]) ** 2).mean() for j in range(9) if j != i)
            expected.append(np.mean(d[:k]))
    assert L.knn_regularizer(points, k).item() == pytest.approx(np.mean(expected))
    assert L.knn_regularizer(points, 64).item() == pytest.approx(L.knn_regularizer(points, 8).item())  # capped


def test_center_regularizer():
    points = torch.randn(3, 7, 3)
    assert L.center_regularizer(points).item() == pytest.approx(points.mean(1).square().mean().item())


def _contrastive_problem(world):
    torch.manual_seed(0)
    inputs = torch.randn(world * 3, 4, dtype=torch.float64)
    layer = torch.nn.Linear(4, 5, dtype=torch.float64)
    cam = torch.randn(world * 3, 5, dtype=torch.float64)
    return inputs, layer, cam


def _gather_worker(rank, world, init_file, out_dir):
    from torch_utils import distributed

    distributed.init(rank, world, torch.device("cpu"), f"file://{init_file}")
    try:
        for sum_grads in (True, False):
            inputs, layer, cam = _contrastive_problem(world)
            local = slice(rank * 3, rank * 3 + 3)
            loss = L.pose_contrastive_loss(layer(inputs[local]), cam[local], 0.1, sum_grads=sum_grads)
            loss.backward()
            flags, finite = distributed.average_gradients(layer.parameters(), extra=torch.ones(1))
            torch.save({"loss": loss.detach(), "grad": layer.weight.grad.clone(), "finite": bool(finite),
                        "flags": flags}, os.path.join(out_dir, f"rank{rank}-{sum_grads}.pt"))
    finally:
        distributed.cleanup()


def test_gather_gradients_match_single_process(tmp_path):
    """2 Gloo processes: averaged gradients equal one process on the whole batch (clean: sum_grads=True), or
    half of it (compat: the official GatherLayer's 1/num_gpus weighting)."""
    world = 2
    init_file = os.path.join(tempfile.mkdtemp(dir=tmp_path), "init")
    torch.multiprocessing.spawn(_gather_worker, args=(world, init_file, str(tmp_path)), nprocs=world)
    inputs, layer, cam = _contrastive_problem(world)
    loss = L.pose_contrastive_loss(layer(inputs), cam, 0.1)
    loss.backward()
    for sum_grads, factor in ((True, 1.0), (False, 0.5)):
        for rank in range(world):
            got = torch.load(tmp_path / f"rank{rank}-{sum_grads}.pt")
            torch.testing.assert_close(got["loss"], loss.detach())
            torch.testing.assert_close(got["grad"], layer.weight.grad * factor)
            assert got["finite"] and got["flags"].item() == world  # extra flags are summed, not averaged


def test_clip_grad_norm():
    layer = torch.nn.Linear(3, 3)
    layer(torch.ones(1, 3)).sum().mul(100).backward()
    L.clip_grad_norm_(layer, 5.0)
    norm = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
    assert norm.item() == pytest.approx(5.0, rel=1e-4)
