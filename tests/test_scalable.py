"""The scalable codec end to end: round trips at any number of layers and factors, prefixes, extract, errors."""
import contextlib
import math

import numpy as np
import pytest
import torch

from compass import bitstream
from compass.api import Compass, DecodeMismatch, ModelMismatch
from compass.errors import CompassError
from compass.pixels import to_pixels, to_tensor
from compass.quality import q_to_lambda
from compass.resample import pyramid

from conftest import tiny_scalable_weights

PLANS = {
    "1 layer": dict(layers=[1.0]),
    "2 layers 1.2x": dict(scales=[1.2]),
    "3 layers 1.6x, 2.8x": dict(scales=[1.6, 2.8]),
    "5 layers": dict(layers=[0.2, 0.3, 0.5, 0.7, 1.0]),
    "unequal 1.5x wide, 2.0x tall": dict(scales=[(2.0, 1.5)]),
}


@pytest.mark.parametrize("mode", ["auto", "predicted", "intra"])
@pytest.mark.parametrize("plan", list(PLANS))
def test_round_trip_matches_encoder_reconstruction(tiny_codec, photo_pixels, plan, mode):
    """Every layer decodes to exactly what the encoder reconstructed (so its predictions stay in sync)."""
    data = tiny_codec.encode(photo_pixels, quality=0.7, layer_mode=mode, **PLANS[plan])
    header, _ = bitstream.read_header(data)
    sizes = [(l.height, l.width) for l in header.layers]
    assert sizes[-1] == photo_pixels.shape[:2]
    if mode != "auto":
        assert [l.intra for l in header.layers[1:]] == [mode == "intra"] * (len(sizes) - 1)
    codes, recons = tiny_codec.model.compress(pyramid(to_tensor(photo_pixels), sizes),
                                              [l.quality for l in header.layers], mode=mode)
    assert [c.intra for c in codes] == [l.intra for l in header.layers]
    decoded = tiny_codec.decode_all(data)
    assert len(decoded) == len(sizes)
    for k, (img, ref) in enumerate(zip(decoded, recons)):
        assert img.shape == (*sizes[k], 3)
        np.testing.assert_array_equal(img, to_pixels(ref))
        np.testing.assert_array_equal(tiny_codec.decode(data, k), img)


def test_unequal_factors_give_expected_sizes(tiny_codec, photo_pixels):
    data = tiny_codec.encode(photo_pixels, scales=[(2.0, 1.5)])
    h, w = photo_pixels.shape[:2]
    assert [(l.height, l.width) for l in bitstream.read_header(data)[0].layers] == [(round(h / 2), round(w / 1.5)), (h, w)]


def test_per_layer_quality_changes_only_that_layer(tiny_codec, photo_pixels):
    a = tiny_codec.encode(photo_pixels, layers=[0.5, 1], qualities=[0.2, 0.9])
    b = tiny_codec.encode(photo_pixels, layers=[0.5, 1], qualities=[0.2, 0.1])
    ia, ib = bitstream.info(a), bitstream.info(b)
    assert ia["layers"][0]["chunk_bytes"] == ib["layers"][0]["chunk_bytes"]
    assert [l.quality for l in bitstream.read_header(a)[0].layers] == [bitstream.quantize_quality(q) for q in (0.2, 0.9)]
    np.testing.assert_array_equal(tiny_codec.decode(a, 0), tiny_codec.decode(b, 0))


def test_prefix_decodes_like_full_file(tiny_codec, photo_pixels):
    data = tiny_codec.encode(photo_pixels, layers=[0.25, 0.5, 1])
    meta = bitstream.info(data)
    for k, layer in enumerate(meta["layers"]):
        prefix = data[: layer["total_bytes"]]
        np.testing.assert_array_equal(tiny_codec.decode(prefix, k), tiny_codec.decode(data, k))
        with pytest.raises(bitstream.ChunkError, match=f"layer {k + 1}") if k < 2 else contextlib.nullcontext():
            tiny_codec.decode(prefix, -1)


def test_extract_keeps_lower_layers_identical(tiny_codec, photo_pixels):
    data = tiny_codec.encode(photo_pixels, layers=[0.25, 0.5, 1])
    sub = bitstream.extract(data, 1)
    assert len(sub) < len(data)
    assert len(bitstream.read_header(sub)[0].layers) == 2
    for k in (0, 1):
        np.testing.assert_array_equal(tiny_codec.decode(sub, k), tiny_codec.decode(data, k))


def test_damaged_layer_names_it_and_lower_layers_decode(tiny_codec, photo_pixels):
    data = bytearray(tiny_codec.encode(photo_pixels, layers=[0.25, 0.5, 1]))
    meta = bitstream.info(bytes(data))
    pos = meta["layers"][1]["total_bytes"] - 3  # inside layer 1's payload
    data[pos] ^= 0x40
    with pytest.raises(bitstream.ChunkCRCMismatch, match="layer 1"):
        tiny_codec.decode(bytes(data))
    assert tiny_codec.decode(bytes(data), 0).shape[:2] == (meta["layers"][0]["height"], meta["layers"][0]["width"])
    layers = []
    with pytest.raises(bitstream.ChunkError):
        for img in tiny_codec.decode_iter(bytes(data)):
            layers.append(img)
    assert len(layers) == 1


def test_symbol_check_detects_probability_model_mismatch(tiny_codec, photo_pixels):
    """A file whose chunks are intact but whose decoded symbols differ is reported, naming the layer."""
    data = tiny_codec.encode(photo_pixels, layers=[0.5, 1])
    header, offset = bitstream.read_header(data)
    chunks = bitstream.read_chunks(data, header, offset, 1)
    bad = [chunks[0], bitstream.Chunk(chunks[1].strings, chunks[1].check ^ 1)]
    with pytest.raises(DecodeMismatch, match="layer 1"):
        tiny_codec.decode(bitstream.write(header, bad))
    assert tiny_codec.decode(bitstream.write(header, bad), 0) is not None


def test_damage_behind_a_valid_crc_names_its_layer(tiny_codec, photo_pixels):
    """Issue 22, row 11: random strings in layer 1's chunk, under a correct CRC, end in an error naming layer 1
    (the entropy decoder's own errors do not know the layer), and layer 0 still decodes."""
    import random

    data = tiny_codec.encode(photo_pixels, layers=[0.5, 1])
    header, offset = bitstream.read_header(data)
    chunks = bitstream.read_chunks(data, header, offset, 1)
    rng = random.Random(0)
    for _ in range(40):
        strings = [rng.randbytes(rng.choice([rng.randrange(1, 100), 4 * rng.randrange(1, 50)])) for _ in range(2)]
        bad = bitstream.write(header, [chunks[0], bitstream.Chunk(strings, chunks[1].check)])
        with pytest.raises(CompassError, match="^layer 1: .*; layers below 1 are fine$"):
            tiny_codec.decode(bad)
        assert tiny_codec.decode(bad, 0).shape == (22, 34, 3)


def test_other_weights_and_ablation_are_refused(tiny_codec, photo_pixels, tmp_path, tiny_weights):
    data = tiny_codec.encode(photo_pixels, layers=[0.5, 1])
    other = Compass(tiny_scalable_weights(tmp_path / "other.pt", seed=5))
    with pytest.raises(ModelMismatch, match="compass-test-tiny"):
        other.decode(data)
    ablation = Compass(tiny_weights, predictor="bicubic")
    with pytest.raises(ModelMismatch):
        ablation.decode(data)
    own = ablation.encode(photo_pixels, layers=[0.5, 1])
    assert ablation.decode(own).shape == photo_pixels.shape


def test_layer_out_of_range(tiny_codec, photo_pixels):
    data = tiny_codec.encode(photo_pixels, layers=[0.5, 1])
    with pytest.raises(bitstream.LayerOutOfRange):
        tiny_codec.decode(data, 2)
    with pytest.raises(bitstream.LayerOutOfRange):
        tiny_codec.decode(data, -3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=[1.0, 0.5]), "shrink"),
    (dict(sizes=[(10, 10), (20, 20)]), "input size"),
    (dict(layers=[0.5, 1], qualities=[0.5]), "qualities"),
    (dict(quality=1.5), "quality"),
    # issue 22, row 7: no layers, empty sizes, non-finite fractions
    (dict(layers=[]), "1 to 16 layers, got 0"),
    (dict(layers=[1] * 17), "1 to 16 layers, got 17"),
    (dict(sizes=[(0, 0), (45, 67)]), "layer 0x0 is under the smallest layer size, 8x8"),
    (dict(layers=[math.nan, 1]), r"fractions must be in \(0, 1\], got nan"),
    # row 8: fractions outside (0, 1], factors that leave a layer under 8 pixels a side
    (dict(layers=[-0.5, 1]), "fractions must be in"),
    (dict(layers=[0, 1]), "fractions must be in"),
    (dict(layers=[1.5]), "fractions must be in"),
    (dict(scales=[math.inf]), "scale factors must be finite and at least 1, got inf"),
    (dict(scales=[0.5]), "at least 1"),
    (dict(scales=[1e6]), "layer 1x1 is under the smallest layer size"),
    (dict(scales=[(1.0, 10.0)]), "layer 7x45 is under the smallest layer size"),
])
def test_bad_plans_are_refused(tiny_codec, photo_pixels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_codec.encode(photo_pixels, **kwargs)


@pytest.mark.parametrize("call", ["refine=1.5", "refine=True", "sizes of floats", "decode(None)", "decode(path)"])
def test_arguments_of_the_wrong_type_raise_type_error(call, tiny_codec, photo_pixels):
    """Issue 22, row 7: TypeError with a message, not an AttributeError from deep inside."""
    with pytest.raises(TypeError, match="refine is a step count|integer|expected the bytes of a compass file"):
        {"refine=1.5": lambda: tiny_codec.encode(photo_pixels, refine=1.5),
         "refine=True": lambda: tiny_codec.encode(photo_pixels, refine=True),
         "sizes of floats": lambda: tiny_codec.encode(photo_pixels, sizes=[(22.5, 33), (45, 67)]),
         "decode(None)": lambda: tiny_codec.decode(None),
         "decode(path)": lambda: tiny_codec.decode("x.cmp")}[call]()


def test_tiny_images(tiny_codec):
    """An input under `MIN_LAYER_SIDE` codes in layers of its own size; lower layers would be smaller still."""
    for h, w in [(1, 1), (2, 3), (3, 2)]:
        px = np.full((h, w, 3), 100, np.uint8)
        data = tiny_codec.encode(px, layers=[1.0, 1.0])
        assert [img.shape for img in tiny_codec.decode_all(data)] == [(h, w, 3)] * 2
    with pytest.raises(ValueError, match="layer 2x1 is under the smallest layer size, 3x2"):
        tiny_codec.encode(np.zeros((2, 3, 3), np.uint8), layers=[0.5, 1])


def test_encoder_without_top_reconstruction_writes_the_same_codes(tiny_codec, photo_pixels):
    """`Compass.encode` skips the top layer's synthesis: same codes, and the lower reconstructions are unchanged."""
    x = to_tensor(photo_pixels)
    for fractions in ([1.0], [0.25, 0.5, 1.0]):
        layers = pyramid(x, tiny_codec.plan(*photo_pixels.shape[:2], layers=fractions))
        qs = [0.6] * len(layers)
        codes, recons = tiny_codec.model.compress(layers, qs)
        lean, lean_recons = tiny_codec.model.compress(layers, qs, reconstruct_top=False)
        assert [(c.strings, c.check) for c in lean] == [(c.strings, c.check) for c in codes]
        assert lean_recons[-1] is None
        assert all(torch.equal(a, b) for a, b in zip(lean_recons[:-1], recons[:-1]))


def _cost(code, x_hat, target, q):
    bpp = 8 * sum(len(s) for s in code.strings) / (target.shape[-2] * target.shape[-1])
    return bpp + q_to_lambda(q) * 255**2 * float(((x_hat.clamp(0, 1) - target) ** 2).mean())


def test_auto_mode_keeps_the_cheaper_of_predicted_and_intra(tiny_codec, photo_pixels):
    """Per layer, "auto" writes exactly what "predicted" or "intra" writes, whichever costs less at the layer's
    q; with a prediction far off the image (from a layer below 20x too contrasty) that is intra, with one from
    the uncoded layer below the residual."""
    m = tiny_codec.model
    lower, target = pyramid(to_tensor(photo_pixels), tiny_codec.plan(*photo_pixels.shape[:2], layers=[0.5, 1.0]))
    chosen = set()
    for q in (0.1, 0.9):
        for below in (lower * 20 - 10, lower):
            options = {mode: m.code_layer(target, q, below, mode=mode) for mode in ("predicted", "intra")}
            best = min(options, key=lambda mode: _cost(*options[mode], target, q))
            code, x_hat = m.code_layer(target, q, below, mode="auto")
            assert (code.strings, code.check, code.intra) == (options[best][0].strings, options[best][0].check,
                                                              best == "intra")
            assert torch.equal(x_hat, options[best][1])
            chosen.add(best)
    assert chosen == {"predicted", "intra"}


def test_decoder_codes_each_layer_as_the_header_says(tiny_codec, photo_pixels):
    """A file mixing intra and predicted layers decodes to the encoder's reconstructions; the same chunks under a
    header that calls an intra layer predicted are refused by the symbol check, never decoded silently wrong."""
    m = tiny_codec.model
    plan = tiny_codec.plan(*photo_pixels.shape[:2], layers=[0.25, 0.5, 1.0])
    layers, q = pyramid(to_tensor(photo_pixels), plan), bitstream.quantize_quality(0.6)
    codes, recons = [], []
    for k, mode in enumerate(["predicted", "intra", "predicted"]):
        code, x = m.code_layer(layers[k], q, recons[-1] if k else None, mode=mode)
        codes.append(code)
        recons.append(x)
    chunks = [bitstream.Chunk(c.strings, c.check) for c in codes]

    def file(intra):
        layer_infos = [bitstream.LayerInfo(h, w, q, i) for (h, w), i in zip(plan, intra)]
        return bitstream.write(bitstream.Header(tiny_codec.name, tiny_codec.model_id, layer_infos), chunks)

    data = file([True, True, False])
    assert data[4] == 2
    for img, ref in zip(tiny_codec.decode_all(data), recons):
        np.testing.assert_array_equal(img, to_pixels(ref))
    with pytest.raises(CompassError, match="^layer 1: "):
        tiny_codec.decode(file([True, False, False]), 1)


def test_unknown_layer_mode_is_refused(tiny_codec, photo_pixels):
    with pytest.raises(ValueError, match="layer_mode 'never': expected one of auto, predicted, intra"):
        tiny_codec.encode(photo_pixels, layer_mode="never")
