"""bench/render_spectrum.py: the per-band power that the densification diagnosis rests on."""
import math
import os

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")


@pytest.fixture
def spectrum(monkeypatch):
    import reconstruction.geometry  # noqa: F401  (the package first: bench/ also holds a reconstruction.py)

    monkeypatch.syspath_prepend(BENCH)
    import render_spectrum
    return render_spectrum


def _stripes(period: float, size: int = 64) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64)
    row = 0.5 + 0.4 * torch.cos(2 * math.pi * x / period)
    return row.expand(size, size).expand(1, 3, size, size).clone()


@pytest.mark.parametrize("period, band", [(32.0, 0), (10.0, 1), (5.0, 2), (3.2, 3), (2.2, 4)])
def test_a_sinusoid_lands_in_its_band(spectrum, period, band):
    power = spectrum.band_power(_stripes(period))
    assert max(range(len(power)), key=power.__getitem__) == band
    assert power[band] > 0.9 * sum(power)


def test_nyquist_is_counted_and_constant_images_have_no_power(spectrum):
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2  # f = (0.5, 0.5)
    power = spectrum.band_power(checker.to(torch.float64).expand(1, 3, 64, 64))
    assert power[-1] > 0.99 * sum(power)
    assert sum(spectrum.band_power(torch.full((2, 3, 16, 16), 0.7))) == pytest.approx(0.0, abs=1e-18)


def test_blur_lowers_high_bands_only(spectrum):
    """A 3-tap blur keeps the low band's power and removes most of the high one's: what 'power / truth' reads."""
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kernel = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    blurred = torch.nn.functional.conv2d(image.reshape(3, 1, 64, 64), (kernel[:, None] * kernel[None, :])[None, None],
                                         padding=1).reshape(1, 3, 64, 64)
    ratio = [b / a for a, b in zip(spectrum.band_power(image), spectrum.band_power(blurred))]
    assert ratio[0] > 0.9 and ratio[-1] < 0.1
    assert all(x >= y for x, y in zip(ratio, ratio[1:]))


def test_footprint_is_scale_times_focal_over_depth(spectrum):
    from splatting import Gaussians

    means = torch.tensor([[[0.0, 0.0, 2.0], [0.1, 0.0, 4.0], [0.0, 0.0, -1.0]]])
    log_scales = torch.log(torch.tensor([[[0.01, 0.002, 0.001], [0.001, 0.03, 0.001], [0.5, 0.5, 0.5]]]))
    gaussians = Gaussians(means=means, log_scales=log_scales, quats=torch.tensor([1.0, 0, 0, 0]).expand(1, 3, 4),
                          opacity_logits=torch.zeros(1, 3), sh=torch.zeros(1, 3, 1, 3))
    views = {"image": torch.zeros(1, 2, 3, 64, 64),  # normalized intrinsics: fx = 100 px at 64 px wide
             "intrinsics": torch.tensor([[100 / 64, 0, 0.5], [0, 100 / 64, 0.5], [0, 0, 1]]).expand(1, 2, 3, 3),
             "extrinsics": torch.eye(4).expand(1, 2, 4, 4)}
    assert spectrum.footprint_px(gaussians, views).tolist() == pytest.approx([0.5, 0.75])  # behind: left out
