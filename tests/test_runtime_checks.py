"""training/runtime_checks.py: the one check gen_videos.py and calc_metrics.py run on --backend and --dtype."""
import click
import pytest

from training.runtime_checks import check_runtime_choices


def test_usable_choices_pass_through():
    assert check_runtime_choices("auto", "fp32", "cpu") == ("auto", "fp32")
    assert check_runtime_choices("reference", "fp32", "cpu") == ("reference", "fp32")


def test_a_cuda_rasterizer_on_the_cpu_names_backend():
    with pytest.raises(click.BadParameter) as info:
        check_runtime_choices("gsplat", "fp32", "cpu")
    assert info.value.param_hint == "'--backend'" and "gsplat" in str(info.value)


def test_unforced_bf16_without_native_support_names_dtype(monkeypatch):
    from training import precision

    monkeypatch.delenv(precision.FORCE_ENV, raising=False)
    monkeypatch.setattr(precision, "native_bf16", lambda device: False, raising=False)
    try:
        precision.check_dtype_usable("bf16", "cpu")
    except precision.PrecisionError:
        pass
    else:
        pytest.skip("this CPU runs bf16 natively")
    with pytest.raises(click.BadParameter) as info:
        check_runtime_choices("auto", "bf16", "cpu")
    assert info.value.param_hint == "'--dtype'"
