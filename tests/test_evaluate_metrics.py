import math
import warnings

import numpy as np
import pytest
from conftest import synthetic_image

from compass.evaluate.bdrate import BDWarning, bd_problem, bd_psnr, bd_rate
from compass.evaluate.metrics import ms_ssim, ms_ssim_scales, psnr, psnr_uint8, to_float


def _image(h=192, w=200, seed=0):
    """conftest's photo-like synthetic image as an HxWx3 float64 array in [0, 1]."""
    return synthetic_image(h, w, seed)[0].permute(1, 2, 0).double().numpy()


def test_psnr_identical_is_inf():
    a = _image(16, 16)
    assert psnr(a, a) == math.inf


def test_psnr_known_value():
    a = np.zeros((4, 5, 3))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    b = a.copy()
    b[0, 0, 0] = 1.0  # MSE = 1/60
    assert psnr(a, b) == pytest.approx(10 * math.log10(60))


def test_psnr_refuses_integers_and_shape_mismatch():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError):
        psnr(img, img)
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    assert psnr(to_float(img), to_float(img + 1)) == pytest.approx(20 * math.log10(255))


def test_ms_ssim_identical_is_one_and_falls_with_noise():
    a = _image()
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(1)
    scores = [ms_ssim(a, np.clip(a + s * rng.standard_normal(a.shape), 0, 1)) for s in (0.01, 0.05, 0.2)]
    assert 1 > scores[0] > scores[1] > scores[2] >= 0


def test_ms_ssim_scales_and_small_images():
    assert ms_ssim_scales(512, 768) == 5
    assert ms_ssim_scales(176, 300) == 5
    assert ms_ssim_scales(175, 300) == 4
    assert ms_ssim_scales(11, 11) == 1
    assert ms_ssim_scales(10, 300) == 0
    a = _image(24, 30)
    b = np.clip(a + 0.05, 0, 1)
    assert 0 < ms_ssim(a, b) < 1
    assert ms_ssim(a[..., 0], a[..., 0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ms_ssim(a[:10], b[:10])


RATES = np.array([0.1, 0.2, 0.4, 0.8, 1.5])
PSNRS = np.array([27.0, 29.5, 32.4, 35.6, 38.3])


def test_bd_rate_ten_percent_fewer_bits():
    assert bd_rate(0.9 * RATES, PSNRS, RATES, PSNRS) == pytest.approx(-10.0, abs=0.01)
    assert bd_rate(RATES, PSNRS, 0.9 * RATES, PSNRS) == pytest.approx(100 / 0.9 - 100, abs=0.01)


def test_bd_unsorted_input_and_bd_psnr():
    order = [3, 0, 4, 2, 1]
    assert bd_rate(0.9 * RATES[order], PSNRS[order], RATES, PSNRS) == pytest.approx(-10.0, abs=0.01)
    assert bd_psnr(RATES[order], PSNRS[order] + 0.5, RATES, PSNRS) == pytest.approx(0.5, abs=1e-9)


def test_bd_non_overlapping_curves_are_nan_with_reason():
    far = PSNRS + 20
    assert "overlap" in bd_problem(RATES, far, RATES, PSNRS)
    with pytest.warns(BDWarning, match="overlap"):
        assert math.isnan(bd_rate(RATES, far, RATES, PSNRS))
    with pytest.warns(BDWarning, match="overlap"):
        assert math.isnan(bd_psnr(RATES * 100, PSNRS, RATES, PSNRS))
    with pytest.warns(BDWarning, match="point"):
        assert math.isnan(bd_rate(RATES[:1], PSNRS[:1], RATES, PSNRS))
    with pytest.warns(BDWarning, match="non-finite"):
        assert math.isnan(bd_rate(RATES, np.r_[PSNRS[:-1], np.inf], RATES, PSNRS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bd_problem(RATES, PSNRS, RATES, PSNRS) is None
        assert bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


def test_psnr_uint8_reads_8_bit_pixels_and_refuses_floats():
    a = np.zeros((4, 5, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # one sample off by the full range: MSE = 1/60
    assert psnr_uint8(a, b) == pytest.approx(10 * np.log10(60))
    with pytest.raises(ValueError, match="uint8"):
        psnr_uint8(a.astype(np.float32), b)
