"""Encoder-side latent refinement (compass.refine): real gains, exact decodes, nothing else changed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compass.api import Compass
from compass.imageio import load_image
from compass.pixels import to_tensor
from compass.quality import q_to_lambda
from compass.models import load
from compass.refine import RefineConfig, compress_refined, refine_latents, sga_round

KINGFISHER = Path(__file__).resolve().parents[1] / "examples" / "kingfisher.png"


@pytest.fixture(scope="module")
def single():
    return load("compass-cpu-single").model.base


@pytest.fixture(scope="module")
def crop():
    """A 96x128 crop of the bundled photo (a natural image: texture, edges, smooth sky)."""
    return to_tensor(load_image(KINGFISHER).pixels[100:196, 200:328])


def _cost(m, x, q, strings, x_hat):
    bits = sum(len(s) for s in strings) * 8
    return bits / x[0, 0].numel() + q_to_lambda(q) * 255 ** 2 * torch.mean((x_hat - x) ** 2).item()


def test_sga_round_stays_between_neighbours_and_hardens_as_tau_falls():
    g = torch.Generator().manual_seed(0)
    v = torch.linspace(-3.4, 3.4, 4001)
    v = v[(v - v.round()).abs() < 0.4]  # away from the halfway points, where rounding is a coin toss
    soft = sga_round(v, 0.5, g)
    assert torch.all(soft >= v.floor()) and torch.all(soft <= v.floor() + 1)
    assert (soft - v.round()).abs().mean() > 0.05  # still soft
    hard = sga_round(v, 0.02, g)
    assert (hard - v.round()).abs().max() < 1e-3
    x = v.clone().requires_grad_(True)
    sga_round(x, 0.3, g).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_refine_config_schedule_and_validation():
    c = RefineConfig(steps=11, tau_start=0.5, tau_end=0.05)
    assert c.tau(0) == pytest.approx(0.5) and c.tau(10) == pytest.approx(0.05)
    assert c.tau(5) == pytest.approx(0.5 * 0.1 ** 0.5)
    with pytest.raises(ValueError):
        RefineConfig(steps=-1)


@pytest.mark.parametrize("q", [0.0, 1.0])
def test_refined_latents_cost_less_in_real_bits_and_decode_exactly(single, crop, q):
    """On the shipped single-layer codec, 40 steps lower the real RD cost (coded bytes, decoded MSE) by > 1%,
    and the refined strings decode to the encoder's reconstruction and symbols."""
    plain = single.compress(crop, q)
    refined = compress_refined(single, crop, q, RefineConfig(steps=40))
    c_plain = _cost(single, crop, q, plain["strings"], plain["x_hat"])
    c_ref = _cost(single, crop, q, refined["strings"], refined["x_hat"])
    assert c_ref < 0.99 * c_plain
    assert refined["strings"] != plain["strings"]
    dec = single.decompress(refined["strings"], refined["shape"], q)
    assert dec["check"] == refined["check"]
    assert torch.equal(dec["x_hat"], refined["x_hat"])


def test_refinement_is_deterministic_leaves_the_model_alone_and_zero_steps_is_plain(single, crop):
    before = {k: v.clone() for k, v in single.state_dict().items()}
    a = compress_refined(single, crop, 0.5, RefineConfig(steps=5))
    b = compress_refined(single, crop, 0.5, RefineConfig(steps=5))
    assert a["strings"] == b["strings"]
    assert all(torch.equal(v, single.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in single.parameters())
    plain = single.compress(crop, 0.5)["strings"]
    assert compress_refined(single, crop, 0.5, RefineConfig(steps=0))["strings"] == plain


def test_a_useless_refinement_is_not_written(single, crop):
    """A refinement that only hurts (a huge learning rate) loses to the plain latents, which are then coded."""
    plain = single.compress(crop, 0.5)
    latents = single.analyse(crop, 0.5)
    wild = refine_latents(single, crop, 0.5, latents, RefineConfig(steps=3, lr=50.0))
    assert (wild["y"] - latents["y"]).abs().mean() > 10  # the refinement really went astray
    assert compress_refined(single, crop, 0.5, RefineConfig(steps=3, lr=50.0))["strings"] == plain["strings"]


def test_refined_scalable_file_decodes_every_layer_and_spends_less():
    """Compass.encode(refine=...) refines the base and each residual; a plain decoder reads the file exactly
    (symbol checks of every layer) and the top layer's RD cost falls."""
    codec = Compass("compass-cpu-mini")
    px = load_image(KINGFISHER).pixels[64:192, 160:352]
    q = 0.5
    plain = codec.encode(px, layers=(0.5, 1), quality=q)
    refined = codec.encode(px, layers=(0.5, 1), quality=q, refine=RefineConfig(steps=30))
    assert refined != plain
    costs = []
    for data in (plain, refined):
        top = codec.decode_all(data)[-1].astype(np.float64)
        mse = np.mean((top - px) ** 2) / 255 ** 2
        costs.append(len(data) * 8 / (px.shape[0] * px.shape[1]) + q_to_lambda(q) * 255 ** 2 * mse)
    assert costs[1] < costs[0]


def _tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, KINGFISHER.parents[1] / "experiments" / name / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.filterwarnings("ignore::compass.evaluate.bdrate.BDWarning")  # a random tiny codec: 7 dB, no overlap
def test_single_layer_table_same_numbers_in_one_process_or_two(tiny_single_weights, photo_pixels):
    """layers_report's single-layer table: worker processes (--jobs) give the plain run's exact numbers, and the
    refined run differs from the plain one (its bytes are other bytes)."""
    from compass.evaluate.layers_report import single_layer_table

    images = [photo_pixels, photo_pixels[::-1, :48].copy()]
    qs = (0.0, 0.5, 1.0)
    one = single_layer_table(str(tiny_single_weights), images, qs, RefineConfig(steps=2))
    two = single_layer_table(str(tiny_single_weights), images, qs, RefineConfig(steps=2), jobs=2)
    drop = lambda t: [{k: v for k, v in r.items() if k != "encode_s"} for img in t["per_image"] for r in img]
    assert drop(one) == drop(two) and one["refine"]["steps"] == 2
    plain = single_layer_table(str(tiny_single_weights), images, qs)
    assert drop(plain) != drop(one) and plain["refine"] is None
    assert [r["q"] for r in plain["rows"]] == list(qs) and all(r["jpeg2000_bpp"] > 0 for r in plain["rows"])


def test_refine_gain_tool_reports_bd_per_plan_and_layer():
    """experiments/refine_gain/refine_gain.py: identical tables give 0%; refined at 10% fewer bits everywhere gives -10%."""
    from compass.evaluate.layers_report import PLANS, QUALITIES

    tool = _tool("refine_gain")
    psnr = {0.0: 27.0, 1 / 3: 29.0, 2 / 3: 30.5, 1.0: 31.5}
    plain = [{"plan": list(f), "q": q, "layer": k, "bpp": 0.2 + q + 0.01 * k, "psnr": psnr[q], "encode_s": 1.0}
             for f in PLANS for q in QUALITIES for k in range(len(f))]
    assert all(r["bd_rate"] == pytest.approx(0, abs=1e-9) for r in tool.compare(plain, plain))
    cheaper = [{**r, "bpp": r["bpp"] * 0.9, "encode_s": 50.0} for r in plain]
    rows = tool.compare(plain, cheaper)
    assert [(r["plan"], r["layer"]) for r in rows] == [(list(f), k) for f in PLANS for k in range(len(f))]
    assert all(r["bd_rate"] == pytest.approx(-10, abs=1e-6) for r in rows)
    assert all((r["plain_encode_s"], r["refined_encode_s"]) == (1.0, 50.0) for r in rows)


def test_decoder_ceiling_tool_orders_its_ceilings(single, crop):
    """experiments/decoder_ceiling/decoder_ceiling.py on the shipped codec: the unquantized decode beats the coded one, and latents
    optimized for the MSE beat the encoder's."""
    from compass.pixels import to_pixels

    tool = _tool("decoder_ceiling")
    px = to_pixels(crop)
    row = tool.ceilings(single, px, 1.0, optimize=20)
    assert row["psnr"] < row["amortized_ceiling"] < row["decoder_ceiling"]
    assert row["bpp"] > 0 and row["jpeg2000_psnr"] > 20


def test_decoder_probe_widens_g_s_without_changing_its_output_and_trains_it(single, crop):
    """experiments/decoder_probe/decoder_probe.py: the widened g_s decodes as the shipped one (no noise: to float precision), a wider
    width that is not a multiple is refused, and one training step changes g_s and nothing else."""
    import copy

    tool = _tool("decoder_probe")
    coder = tool.FrozenCoder(single)
    q = torch.tensor([1.0])
    latents, sizes = coder(crop, q)
    with torch.no_grad():
        shipped = single.g_s(latents, sizes)
        wide = tool.widen_synthesis(single.g_s, 2 * single.config.N, noise=0.0)(latents, sizes)
    assert torch.allclose(wide, shipped, atol=1e-4)
    with pytest.raises(ValueError, match="multiple"):
        tool.widen_synthesis(single.g_s, single.config.N + 1)
    g_s = copy.deepcopy(single.g_s).requires_grad_(True)
    before = {k: v.clone() for k, v in coder.state_dict().items()}
    loss, _ = tool.distortion(g_s, coder, crop, q)
    loss.backward()
    torch.optim.SGD(g_s.parameters(), lr=1e-3).step()
    assert not torch.equal(g_s.convs[0].weight, single.g_s.convs[0].weight)
    assert all(torch.equal(v, before[k]) for k, v in coder.state_dict().items())
