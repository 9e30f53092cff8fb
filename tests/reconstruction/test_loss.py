"""ReconstructionLoss: MSE + LPIPS of several renders against one set of targets."""
import pytest
import torch

from reconstruction.loss import ReconstructionLoss
from reconstruction.metrics import ImageMetricError, LPIPS


def _renders(seed: int):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 2, 3, 32, 32, generator=gen)
    renders = {name: (target + 0.1 * torch.randn(target.shape, generator=gen)).requires_grad_(True)
               for name in ("coarse", "fine")}
    return renders, target


def test_terms_of_several_renders_equal_one_loss_each():
    loss = ReconstructionLoss(lpips_weight=0.05)
    renders, target = _renders(0)
    together = loss.terms(renders, target, step=0)
    sum(t["total"] for t in together.values()).backward()
    grads = {name: r.grad.clone() for name, r in renders.items()}
    for name, render in renders.items():
        alone_render = render.detach().clone().requires_grad_(True)
        alone = loss(alone_render, target, step=0)
        alone["total"].backward()
        for key in ("mse", "lpips", "total"):
            assert torch.allclose(together[name][key], alone[key], rtol=1e-5, atol=1e-7), (name, key)
        assert torch.allclose(grads[name], alone_render.grad, rtol=1e-4, atol=1e-9), name


def test_targets_go_through_lpips_once_and_without_autograd(monkeypatch):
    loss = ReconstructionLoss(lpips_weight=0.05)
    renders, target = _renders(1)
    net = loss.lpips_module(target.device)
    calls = []
    original = LPIPS.reference

    def counting(self, gt):
        features = original(self, gt)
        calls.append(all(not f.requires_grad for f in features))
        return features

    monkeypatch.setattr(LPIPS, "reference", counting)
    terms = loss.terms(renders, target, step=0)
    assert calls == [True]
    assert all(t["lpips"].requires_grad for t in terms.values())
    assert net is loss.lpips_module(target.device)


def test_lpips_term_waits_for_lpips_after_and_weight():
    renders, target = _renders(2)
    assert "lpips" not in ReconstructionLoss(lpips_weight=0.05, lpips_after=10).terms(renders, target, 9)["fine"]
    assert "lpips" in ReconstructionLoss(lpips_weight=0.05, lpips_after=10).terms(renders, target, 10)["fine"]
    assert "lpips" not in ReconstructionLoss(lpips_weight=0.0).terms(renders, target, 0)["coarse"]


def test_shape_mismatch_names_the_render():
    renders, target = _renders(3)
    renders["fine"] = renders["fine"][:, :1]
    with pytest.raises(ValueError, match=r"\(fine\)"):
        ReconstructionLoss().terms(renders, target, 0)


def test_lpips_too_small_for_the_network_is_a_clear_error():
    loss = ReconstructionLoss(lpips_weight=0.05)
    target = torch.rand(1, 1, 3, 8, 8)
    with pytest.raises(ImageMetricError, match="at least"):
        loss(target.clone(), target, 0)


def test_lpips_is_differentiable_in_gt_when_gt_requires_grad():
    model = LPIPS("alex")
    pred = torch.rand(2, 3, 48, 48)
    gt = torch.rand(2, 3, 48, 48, requires_grad=True)
    model(pred, gt).sum().backward()
    assert gt.grad is not None and gt.grad.abs().sum() > 0


def test_reference_of_other_images_is_rejected():
    model = LPIPS("alex")
    reference = model.reference(torch.rand(2, 3, 48, 48))
    with pytest.raises(ImageMetricError, match="reference"):
        model.distance(torch.rand(2, 3, 64, 64), reference)
