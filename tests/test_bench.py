"""compass bench end to end on tiny models; the LIFF cost model against the code; bounded LIFF query memory."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from compass.bench.measure import liff_macs, liff_widths, make_large
from compass.cli import main
from compass.procstat import peak_rss_mb, reset_peak
from compass.imageio import save_image
from compass.liff import direct_query
from compass.models import build_liff, sizes
from compass.pixels import to_pixels

from conftest import synthetic_image

STATS = {"median", "q1", "q3", "min", "max", "n"}


def test_bench_runs_end_to_end_and_writes_every_field(tmp_path, tiny_weights, tiny_single_weights, capsys):
    image = tmp_path / "photo.png"
    save_image(to_pixels(synthetic_image(48, 64, seed=4)), image)
    out = tmp_path / "bench.json"
    assert main(["bench", "--image", str(image), "--model", str(tiny_weights), "--single", str(tiny_single_weights),
                 "--repeat", "1", "--repeat-large", "1", "--warmup", "0", "--large", "112x80", "--liff-size", "16",
                 "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "decode all layers / single-layer decode" in text and "LIFF multiply-adds" in text
    res = json.loads(out.read_text())
    assert set(res) == {"meta", "models", "layers", "rates", "idle_rss_mb", "cases", "liff"}
    assert res["meta"]["threads"] == 1 and res["meta"]["torch"] == torch.__version__
    assert res["models"]["scalable"]["name"] == "compass-test-tiny" and res["models"]["random"] is False
    assert res["rates"]["calibrated"] and 0 <= res["rates"]["hevc_qp"] <= 51
    idle = res["idle_rss_mb"]
    assert idle > 50  # an interpreter that imported torch
    assert set(res["cases"]) == {"image", "large"}
    for name, (h, w) in {"image": (48, 64), "large": (80, 112)}.items():
        case = res["cases"][name]
        assert (case["height"], case["width"]) == (h, w)
        assert set(case["codecs"]) == {"compass", "single", "jpeg2000", "hevc"}
        for c in case["codecs"].values():
            assert set(c["encode"]) == STATS and set(c["decode"]) == STATS and c["decode"]["median"] > 0
            assert c["bytes"] > 0 and c["bpp"] > 0
            assert all(c["peak_mb"][op] >= c["rss_ready_mb"][op] > 0 for op in ("encode", "decode"))
        compass = case["codecs"]["compass"]
        assert [(l["height"], l["width"]) for l in compass["layers"]] == [(h // 4, w // 4), (h // 2, w // 2), (h, w)]
        for l in compass["layers"]:
            assert set(l["decode_to"]) == STATS and set(l["decode_increment"]) == STATS
        assert 0 < compass["layers"][-1]["decode_to"]["median"] <= compass["decode"]["median"]
        assert {"liff", "g_s", "h_s", "entropy", "other"} <= set(compass["decode_sections"])
        assert {"liff", "g_a", "h_a", "h_s", "entropy", "other"} <= set(compass["encode_sections"])
        shares = [s["share"] for s in compass["decode_sections"].values()]
        assert sum(shares) == pytest.approx(1) and min(shares) >= 0
        assert set(case["ratios"]) == {"decode_all_over_single", "decode_all_over_single_target",
                                       "compass_over_single", "compass_over_jpeg2000", "compass_over_hevc"}
        assert set(case["fits_memory"]) == {"encode", "decode"}
    assert res["cases"]["image"]["codecs"]["compass"]["profile"][0]["self_ms"] > 0
    assert len(res["liff"]["macs"]) == 4 and len(res["liff"]["micro"]) == 4
    for e in res["liff"]["micro"]:
        assert e["speedup"] > 0 and e["max_abs_diff"] < 1e-4 and set(e["direct"]) == STATS


def test_large_image_is_an_upscale_mirrored_without_seams():
    px = to_pixels(synthetic_image(20, 30, seed=5))
    big = make_large(px, (50, 70))
    assert big.shape == (50, 70, 3)
    np.testing.assert_array_equal(big[:40, 60:], big[:40, 59:49:-1])  # mirrored at the upscale's right edge
    np.testing.assert_array_equal(big[40:], big[39:29:-1])


@pytest.mark.parametrize("widths", ["paper", "cpu"])
@pytest.mark.parametrize("scale", [2, 4])
def test_mac_counts_match_the_operations_run(widths, scale):
    """The cost model counts what the code multiplies: torch's FLOP counter on both formulations (it sees the
    matrix products, the per-source projection's convolution and the filter product's batched products)."""
    cfg = liff_widths()[widths]
    torch.manual_seed(0)
    m = build_liff(cfg).eval()
    src, size = (4, 6), (4 * scale, 6 * scale)
    f = torch.randn(1, cfg.feat, *src)
    pixels = size[0] * size[1]
    macs = liff_macs(cfg, scale)
    with torch.no_grad():
        with FlopCounterMode(display=False) as direct:
            direct_query(m, f, size)
        with FlopCounterMode(display=False) as factorized:
            m.query(f, size)
    assert direct.get_total_flops() / 2 / pixels == macs["direct"]
    assert factorized.get_total_flops() / 2 / pixels == pytest.approx(macs["factorized"], abs=1)
    assert macs["ratio"] > 1


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_chunked_query_memory_is_bounded_by_the_chunk():
    """A 1024x1024 query with chunk=2^14 holds a few MB per band; one pass holds every target pixel's MLP."""
    torch.manual_seed(0)
    m = build_liff(sizes("tiny")[1]).eval()
    f = torch.randn(1, m.config.feat, 256, 256)

    def growth(chunk) -> float:
        with torch.no_grad():
            m.query(f[:, :, :16, :16], (64, 64), chunk)  # kernels and allocator warmed up
            reset_peak()
            base = peak_rss_mb()
            out = m.query(f, (1024, 1024), chunk)
            assert out.shape == (1, 3, 1024, 1024)
            return peak_rss_mb() - base

    output_mb = 1024 * 1024 * 3 * 4 / 2**20
    chunked, whole = growth(1 << 14), growth(None)
    assert chunked < 8 * output_mb  # the output and its copies, plus one band
    assert whole > 4 * chunked, (chunked, whole)
