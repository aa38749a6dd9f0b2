import numpy as np
import pytest
from conftest import synthetic_image
from PIL import Image

from compass.evaluate.baselines import (BASELINES, hevc444, j2k_decode, j2k_encode, j2k_layout, j2k_prefix, jpeg,
                                        jpeg2000, jpeg2000_levels, jpeg2000_lowpass)
from compass.evaluate.metrics import psnr, to_float
from compass.paths import data_dir


@pytest.fixture(scope="module")
def photo():
    """A 64x48 crop of a Kodak image, or conftest's synthetic image where Kodak is missing."""
    path = data_dir("kodak") / "kodim23.png"
    if path.is_file():
        return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))[200:248, 300:364])
    x = synthetic_image(48, 64, seed=3)[0].permute(1, 2, 0)
    return np.ascontiguousarray((x * 255).round().byte().numpy())


def _score(img, coded):
    assert coded.image.shape == img.shape and coded.image.dtype == np.uint8
    assert coded.num_bytes > 0
    return coded.num_bytes, psnr(to_float(img), to_float(coded.image))


@pytest.mark.parametrize("code, low, high", [(jpeg, 20, 80), (jpeg2000, 0.5, 2.0), (hevc444, 40, 28)])
def test_round_trip_and_rate_order(photo, code, low, high):
    bytes_low, psnr_low = _score(photo, code(photo, low))
    bytes_high, psnr_high = _score(photo, code(photo, high))
    assert bytes_high > bytes_low
    assert psnr_high > psnr_low > 15


@pytest.mark.parametrize("h, w", [(193, 257), (15, 17), (1, 1)])
def test_hevc_odd_sizes(photo, h, w):
    img = np.ascontiguousarray(np.resize(photo, (h, w, 3)))
    coded = hevc444(img, 30)
    assert coded.image.shape == img.shape
    assert 0 < coded.num_bytes < coded.info["file_bytes"]


def test_jpeg2000_small_sizes(photo):
    for h, w in [(1, 1), (15, 17)]:
        img = np.ascontiguousarray(photo[:h, :w])
        assert jpeg2000(img, 1.0).image.shape == img.shape


def test_jpeg2000_levels(photo):
    levels = jpeg2000_levels(photo, 1.0, (0, 1, 2))
    assert levels[0].num_bytes == levels[0].info["full_bytes"]
    assert levels[0].num_bytes > levels[1].num_bytes > levels[2].num_bytes
    for r in (1, 2):
        assert levels[r].image.shape == (photo.shape[0] >> r, photo.shape[1] >> r, 3)
        assert psnr(to_float(jpeg2000_lowpass(photo, r)), to_float(levels[r].image)) > 20
    with pytest.raises(ValueError):
        jpeg2000_levels(photo, 1.0, (6,))


def test_jpeg2000_prefix_is_exact(photo):
    """PLT removal gives the stream OpenJPEG writes without PLT; each prefix decodes like the whole stream."""
    options = dict(irreversible=True, quality_mode="rates", quality_layers=[24.0])
    layout = j2k_layout(j2k_encode(photo, plt=True, **options))
    assert layout.stream == j2k_encode(photo, **options)
    assert j2k_prefix(layout, 0) == layout.stream
    for r in (1, 2, 3):
        prefix = j2k_prefix(layout, r)
        assert len(prefix) < len(layout.stream)
        np.testing.assert_array_equal(j2k_decode(prefix, r), j2k_decode(layout.stream, r))


def test_registry_sweeps():
    for b in BASELINES.values():
        assert len(b.sweep) >= 5
