"""LIFF: the factorized (per-source-pixel) evaluation equals the direct formulation of the method."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from compass.liff import LIFF, LiffConfig, direct_query, local_grid, source_index
from compass.models import build_liff, sizes
from compass.resample import upsample_bicubic, upsample_bicubic_pil

TINY = sizes("tiny")[1]


def direct(m: LIFF, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return direct_query(m, m.features(x), size)


@pytest.mark.parametrize("unfold", [3, 1])
def test_factorized_equals_direct_at_any_scale(unfold):
    torch.manual_seed(0)
    m = build_liff(dataclasses.replace(TINY, unfold=unfold))  # default init: outputs of order 1, as in use
    x = torch.rand(2, 3, 7, 9)
    for size in [(7, 9), (17, 13), (28, 36), (10, 20), (8, 30)]:  # 1x, odd, 4x, unequal factors
        ref = direct(m, x, size)
        assert ref.std() > 1e-3
        assert (m(x, size) - ref).abs().max() <= 1e-5
        assert (m(x, size, chunk=37) - ref).abs().max() <= 1e-5  # chunked queries


@pytest.mark.parametrize("unfold", [3, 1])
def test_gradients_match_direct(unfold):
    torch.manual_seed(1)
    m = build_liff(dataclasses.replace(TINY, unfold=unfold)).double()
    x = torch.rand(1, 3, 5, 6, dtype=torch.float64)
    g1 = torch.autograd.grad(m(x, (11, 9)).square().sum(), list(m.parameters()))
    g2 = torch.autograd.grad(direct(m, x, (11, 9)).square().sum(), list(m.parameters()))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-9)


def test_source_index_and_grid():
    # 2x: every source pixel feeds two targets, offsets -0.5 / +0.5 source pixels
    assert source_index(4, 2).tolist() == [0, 0, 1, 1]
    assert local_grid(4, 2).tolist() == [-0.5, 0.5, -0.5, 0.5]
    # identity scale maps each pixel to itself with zero offset
    assert source_index(5, 5).tolist() == list(range(5))
    assert local_grid(5, 5).abs().max() == 0
    # offsets stay within half a source pixel on each side at any factor
    for dst, src in [(17, 5), (100, 37), (3, 1)]:
        g = local_grid(dst, src)
        assert g.abs().max() <= 1.0 and source_index(dst, src).max() == src - 1


CPU_WIDTHS = sizes("cpu")[1]  # the shipped widths
FAST_WIDTHS = sizes("cpu-fast")[1]  # no unfolding: parts by a matrix product


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("widths", [CPU_WIDTHS, FAST_WIDTHS], ids=["cpu", "cpu-fast"])
def test_chunked_queries_equal_one_pass_exactly(threads, widths):
    """Chunks (bands of target rows, each projecting only its own source rows) give the same floats as one pass."""
    torch.manual_seed(2)
    m = build_liff(widths).eval()
    if widths.skip:  # its last layer starts at zero: give the filter product something to compute
        for p in m.layers[-1].parameters():
            torch.nn.init.normal_(p, std=0.1)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for src, size in [((7, 9), (17, 13)), ((20, 30), (80, 120)), ((33, 41), (50, 97)), ((24, 40), (24, 40))]:
                f = m.features(torch.rand(1, 3, *src))
                whole = m.query(f, size)
                for chunk in (1, 37, 500, 4000):
                    assert torch.equal(m.query(f, size, chunk), whole), (src, size, chunk)
    finally:
        torch.set_num_threads(old)


def test_inference_writes_in_place_without_changing_results_or_the_input():
    """Without autograd a prediction writes its bands into one output and adds into the fresh upsampling; with
    autograd, or a batch (bands not contiguous), it copies: the same floats, and the input is never touched."""
    torch.manual_seed(6)
    m = build_liff(FAST_WIDTHS).eval()
    for p in m.layers[-1].parameters():
        torch.nn.init.normal_(p, std=0.1)
    for batch, layout in [(1, torch.channels_last), (1, torch.contiguous_format), (2, torch.contiguous_format)]:
        x = torch.rand(batch, 3, 20, 30).contiguous(memory_format=layout)
        kept = x.clone()
        for size in [(20, 30), (41, 60), (33, 77)]:
            with torch.no_grad():
                fast, whole = m(x, size, chunk=97), m(x, size)
            assert torch.equal(fast, whole) and torch.equal(m(x, size, chunk=97).detach(), whole), (batch, size)
            assert torch.equal(x, kept)


@pytest.mark.parametrize("threads", [1, 2])
def test_rdn_stripes_equal_whole_image_exactly(threads):
    """Large inputs run the RDN in row stripes with a receptive-field halo: same floats as the whole image.

    Stripes stay above the size where torch switches convolution backends for small inputs (as they do in use:
    `RDN_STRIPE` pixels); the first and last stripes have context on one side only, the middle ones on both.
    """
    torch.manual_seed(3)
    m = build_liff(CPU_WIDTHS).eval()
    assert m.rdn.halo == 3 + CPU_WIDTHS.blocks * CPU_WIDTHS.convs
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for shape, stripe in [((1, 3, 100, 256), 1 << 13), ((1, 3, 130, 200), 1 << 13)]:
                x = torch.rand(shape)
                assert torch.equal(m.features(x, stripe), m.features(x, None)), (shape, stripe)
    finally:
        torch.set_num_threads(old)


def test_skip_predicts_bicubic_plus_the_filter_product():
    """With `skip` an untrained model predicts exactly bicubic; trained, it adds the (factorized) filter product."""
    torch.manual_seed(4)
    m = build_liff(dataclasses.replace(TINY, skip=True))
    x = torch.rand(2, 3, 7, 9)
    sizes = [(17, 13), (28, 36), (8, 30)]
    for size in sizes:
        assert torch.equal(m(x, size), upsample_bicubic(x, size))
    for p in m.layers[-1].parameters():
        torch.nn.init.normal_(p, std=0.1)
    for size in sizes:
        correction = direct(m, x, size)
        assert correction.std() > 1e-3
        assert (m(x, size, chunk=37) - upsample_bicubic(x, size) - correction).abs().max() <= 1e-5


def test_pil_skip_upsampler_is_pillows_bicubic():
    """"bicubic-pil" upsamples as Pillow does (a = -0.5; Pillow rounds to 8 bits), keeps an equal size exactly, and
    is what an untrained skip model with it predicts."""
    rng = np.random.default_rng(5)  # values well inside [0, 255]: Pillow clips the overshoot between its passes
    pixels = rng.integers(60, 196, (9, 13, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    for h, w in [(18, 26), (31, 17), (9, 40)]:
        ref = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64) / 255
        ours = upsample_bicubic_pil(x, (h, w))[0].permute(1, 2, 0).clamp(0, 1).double().numpy()
        assert np.abs(ours - ref).max() <= 1.5 / 255, (h, w)  # Pillow rounds after each pass
        assert np.abs(ours - ref).max() < np.abs(upsample_bicubic(x, (h, w))[0].permute(1, 2, 0).numpy() - ref).max()
    assert torch.equal(upsample_bicubic_pil(x, (9, 13)), x)
    m = build_liff(dataclasses.replace(TINY, skip=True, skip_upsampler="bicubic-pil"))
    assert torch.equal(m(x, (20, 30)), upsample_bicubic_pil(x, (20, 30)))
    with pytest.raises(ValueError, match="skip_upsampler"):
        dataclasses.replace(TINY, skip_upsampler="lanczos")


def test_configs_without_skip_or_unfold_load_as_the_method():
    d = sizes("cpu")[1].to_dict()
    del d["skip"], d["unfold"]  # a config written before the options existed (the shipped compass-cpu)
    cfg = LiffConfig.from_dict(d)
    assert cfg == sizes("cpu")[1] and not cfg.skip and cfg.unfold == 3
    with pytest.raises(ValueError, match="unfold"):
        dataclasses.replace(TINY, unfold=2)
