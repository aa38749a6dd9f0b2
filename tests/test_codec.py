"""The single-layer codec end to end: real bitstreams against forward, rate, damage, gains, determinism, quality."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import (calibrated_codec, coded_symbols, estimated_bits, run_python, set_constant_prior,
                      spread_codec, synthetic_image)

from compass.entropy import NotUpdatedError
from compass.limits import check_quality
from compass.models import build_codec, sizes
from compass.quality import LAMBDA_MAX, LAMBDA_MIN, interpolate_log_gains, q_to_lambda

SIZES = [(1, 1), (2, 3), (17, 31), (64, 48)]
QUALITIES = [0.0, 0.3, 1.0]


def _bits(strings) -> int:
    return 8 * sum(len(s) for s in strings)


# ---------------------------------------------------------------- compress -> decompress against forward

@pytest.mark.parametrize("q", QUALITIES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_decoded_image_equals_forward_reconstruction(spread_model, size, q):
    """decompress(compress(x)) gives forward's eval-mode reconstruction, and the encoder's own x_hat agrees."""
    x = synthetic_image(*size, seed=size[0] * 100 + size[1])
    with torch.no_grad():
        ref = spread_model(x, q)["x_hat"]
    enc = spread_model.compress(x, q)
    assert tuple(enc["shape"]) == size
    dec = spread_model.decompress(enc["strings"], enc["shape"], q)
    assert dec["x_hat"].shape == (1, 3, *size)
    torch.testing.assert_close(dec["x_hat"], ref, rtol=1e-5, atol=1e-5)
    if "x_hat" in enc:  # the scalable encoder predicts the next layer from this: it must be the decoder's image
        torch.testing.assert_close(enc["x_hat"], dec["x_hat"], rtol=1e-5, atol=1e-5)
    if "check" in enc:
        assert enc["check"] == dec["check"]


def test_spread_model_latents_are_not_trivial(spread_model):
    """Guard for the test above: symbols spread, many scale levels, escapes and a non-constant z."""
    totals = {"escapes": 0}
    for size in [(17, 31), (64, 48)]:
        for q in QUALITIES:
            s = coded_symbols(spread_model, synthetic_image(*size, seed=size[0] * 100 + size[1]), q)
            totals["escapes"] += s["escapes"]
            assert s["y"].unique().numel() >= 5
    s = coded_symbols(spread_model, synthetic_image(64, 48, seed=6448), 1.0)
    assert s["y"].unique().numel() >= 20 and s["z"].unique().numel() >= 4 and s["indexes"].unique().numel() >= 15
    assert totals["escapes"] >= 50


def test_stream_decodes_with_a_fresh_model_loaded_from_file(spread_model, tmp_path):
    x = synthetic_image(40, 56, seed=4)
    enc = spread_model.compress(x, 0.7)
    ref = spread_model.decompress(enc["strings"], enc["shape"], 0.7)["x_hat"]
    torch.save(spread_model.state_dict(), tmp_path / "codec.pt")
    torch.manual_seed(123)
    fresh = build_codec(sizes("tiny")[0]).eval()
    fresh.load_state_dict(torch.load(tmp_path / "codec.pt", weights_only=True))
    assert torch.equal(fresh.decompress(enc["strings"], enc["shape"], 0.7)["x_hat"], ref)


def test_coding_before_update_raises():
    m = build_codec(sizes("tiny")[0]).eval()
    with pytest.raises(NotUpdatedError):
        m.compress(synthetic_image(8, 8), 0.5)
    with pytest.raises(NotUpdatedError):
        m.decompress([b"\0" * 4, b"\0" * 4], (8, 8), 0.5)


def test_compress_rejects_bad_quality_and_batches(spread_model):
    x = synthetic_image(8, 8)
    for q in (float("nan"), -0.01, 1.01, float("inf")):
        with pytest.raises(ValueError):
            spread_model.compress(x, q)
        with pytest.raises(ValueError):
            spread_model.decompress([b"", b""], (8, 8), q)
    with pytest.raises(ValueError):
        spread_model.compress(x.expand(2, -1, -1, -1), 0.5)


# ---------------------------------------------------------------- real bits against the likelihoods

@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_real_bits_match_forward_estimate(q):
    """Real string bits are within 3 % + 8 bytes of forward's likelihood bits, on thousands of bits.

    The codec is built so that its predicted y scales are honest (see conftest.calibrated_codec) and use many
    table levels; the gap then measures only what coding adds: choosing a table level for each scale, the 16-bit
    integer tables, constriction's own quantization and the 32-bit word padding of each string.
    """
    x = synthetic_image(256, 320, seed=7)
    m = calibrated_codec(x, q)
    assert coded_symbols(m, x, q)["indexes"].unique().numel() >= 8
    est = estimated_bits(m, x, q)
    real = _bits(m.compress(x, q)["strings"])
    assert est > 5000
    assert abs(real - est) <= 0.03 * est + 64, f"real {real} bits vs estimated {est:.0f}"


# ---------------------------------------------------------------- damaged strings

_FUZZ_SCRIPT = r"""
import json, sys, time, numpy as np, torch
from compass.models import build_codec, sizes
from compass.entropy import CodingError
torch.set_num_threads(1)
blob = torch.load(sys.argv[1], weights_only=False)
m = build_codec(sizes("tiny")[0]).eval()
m.load_state_dict(blob["state"])
(ys, zs), shape, q = blob["strings"], blob["shape"], blob["q"]
rng = np.random.default_rng(int(sys.argv[2]))

def damage(s, kind):
    if kind == 0:
        return rng.integers(0, 256, 4 * int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
    if kind == 1:
        return s[: int(rng.integers(0, len(s) + 1))]
    if kind == 2:
        b = bytearray(s)
        for _ in range(int(rng.integers(1, 4))):
            if b:
                i = int(rng.integers(len(b) * 8)); b[i // 8] ^= 1 << (i % 8)
        return bytes(b)
    if kind == 3:
        return bytes([int(rng.integers(256))]) * (4 * int(rng.integers(0, 40)))
    return s + rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()

cases = [([b"", b""], "empty"), ([zs, ys], "swapped")]
cases += [([ys[:n], zs], "y cut") for n in range(0, len(ys), max(1, len(ys) // 40))]
cases += [([ys, zs[:n]], "z cut") for n in range(len(zs))]
for i in range(int(sys.argv[3])):
    which, kind = i % 3, int(rng.integers(5))
    y2 = damage(ys, kind) if which != 1 else ys
    z2 = damage(zs, kind) if which != 0 else zs
    cases.append(([y2, z2], f"kind{kind}"))
res = {"ok": 0, "coding_error": 0, "other": [], "max_s": 0.0}
for strings, name in cases:
    t = time.perf_counter()
    try:
        out = m.decompress(strings, shape, q)
        assert tuple(out["x_hat"].shape) == (1, 3, *shape), out["x_hat"].shape
        res["ok"] += 1
    except CodingError:
        res["coding_error"] += 1
    except BaseException as e:
        res["other"].append(f"{name}: {type(e).__name__}: {e}"[:200])
    res["max_s"] = max(res["max_s"], time.perf_counter() - t)
# the entropy models on their own, with damage in the whole string
gc, eb = m.gaussian_conditional, m.entropy_bottleneck
idx = torch.randint(0, 64, (1, 12, 6, 5)); means = torch.randn(1, 12, 6, 5) * 9
for i in range(300):
    s = damage(gc.compress(torch.randn(1, 12, 6, 5) * 30, idx, means), i % 5)
    try:
        out = gc.decompress(s, idx, means) if i % 2 else eb.decompress(s, (3, 4))
        res["ok"] += 1
    except CodingError:
        res["coding_error"] += 1
    except BaseException as e:
        res["other"].append(f"entropy: {type(e).__name__}: {e}"[:200])
print(json.dumps(res))
"""


def test_damaged_strings_never_hang_or_crash(spread_model, tmp_path):
    """Random bytes, truncations, bit flips, appended junk: decoding returns an image or raises CodingError.

    It runs in a child process with a timeout, so a hang fails the test and a crash of the interpreter (a panic
    in the range coder, a segfault) cannot take pytest down with it.
    """
    x = synthetic_image(64, 48, seed=6448)
    enc = spread_model.compress(x, 1.0)
    assert len(enc["strings"][0]) > 100 and len(enc["strings"][1]) >= 8
    torch.save({"state": spread_model.state_dict(), "strings": enc["strings"], "shape": enc["shape"], "q": 1.0},
               tmp_path / "blob.pt")
    proc = run_python(_FUZZ_SCRIPT, str(tmp_path / "blob.pt"), "0", "900", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["other"] == []
    assert res["ok"] > 50 and res["coding_error"] > 50  # both outcomes are reached
    assert res["max_s"] < 5


# ---------------------------------------------------------------- gain interpolation

def _fixed_prior_codec():
    """A construction in which rate must rise with every channel gain, so bits must fall as q falls.

    h_a's last conv is zeroed, so z = 0 and its bits do not depend on q; h_s predicts the same Gaussian
    (scale 1.5, mean 0) for every y element. The coded symbols are round(gain_c(q) * y), whose magnitudes never
    shrink as a gain grows, and a symbol's cost under a fixed zero-mean Gaussian never falls as its magnitude
    grows. The initial log-gains increase with the level in every channel, so the bits are monotone in q if and
    only if q reaches the gains monotonically (interpolation, level order, the gain applied before rounding).
    """
    torch.manual_seed(0)
    m = build_codec(sizes("tiny")[0]).eval()
    with torch.no_grad():
        m.g_a.convs[-1].weight.mul_(40)
        m.h_a.convs[-1].weight.zero_()
        m.h_a.convs[-1].bias.zero_()
    set_constant_prior(m, torch.full((m.config.M,), 1.5), torch.zeros(m.config.M))
    m.update()
    assert (m.log_gain.diff(dim=0) > 0).all()
    return m


def test_bits_fall_monotonically_as_q_falls():
    m = _fixed_prior_codec()
    x = synthetic_image(96, 128, seed=11)
    qs = [i / 20 for i in range(21)]
    real = [_bits(m.compress(x, q)["strings"]) for q in qs]
    est = [estimated_bits(m, x, q) for q in qs]
    for a, b in zip(range(20), range(1, 21)):
        assert est[a] <= est[b] + 1e-3 * est[b], (qs[a], qs[b], est[a], est[b])
        assert real[a] <= real[b] + 32, (qs[a], qs[b], real[a], real[b])  # one 32-bit word of coder slack
    assert real[0] < 0.6 * real[-1] and real[-1] > 3000


def test_gain_interpolation_is_geometric_and_hits_the_levels():
    log_gains = torch.tensor([[-1.0, 0.5], [0.0, 0.0], [2.0, -0.5]])
    g = interpolate_log_gains(log_gains, torch.tensor([0.0, 0.5, 1.0, 0.25, 0.75]))[:, :, 0, 0]
    torch.testing.assert_close(g[:3], log_gains.exp())
    torch.testing.assert_close(g[3], (log_gains[0].exp() * log_gains[1].exp()).sqrt())
    torch.testing.assert_close(g[4], (log_gains[1].exp() * log_gains[2].exp()).sqrt())
    dense = interpolate_log_gains(log_gains, torch.linspace(0, 1, 101))[:, 0, 0, 0]
    assert (dense.diff() >= 0).all()


# ---------------------------------------------------------------- determinism across processes and threads

_DET_SCRIPT = r"""
import hashlib, json, sys, torch
from compass.models import build_codec, sizes
threads, blob_path, out_dir, other = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
torch.set_num_threads(threads)
blob = torch.load(blob_path, weights_only=False)
m = build_codec(sizes("tiny")[0]).eval()
m.load_state_dict(blob["state"])
sha = lambda b: hashlib.sha256(b).hexdigest()
tsha = lambda t: sha(t.detach().contiguous().numpy().tobytes())

def decode(strings, shape, q):
    with torch.no_grad():
        _, inv, _, hinv = m.gains(torch.tensor([q]))
        _, hyp = m.latent_sizes(*shape)
        z_hat = m.entropy_bottleneck.decompress(strings[1], hyp[-1])
        scales, means = m._hyper_synthesis(z_hat, hinv, hyp)
        y_hat = m.gaussian_conditional.decompress(strings[0], m.gaussian_conditional.build_indexes(scales), means)
        z_sym = torch.round(z_hat - m.entropy_bottleneck._medians.view(1, -1, 1, 1))
        sym = torch.cat([torch.round(y_hat - means).flatten(), z_sym.flatten()])
    return tsha(sym.to(torch.int64)), m.decompress(strings, shape, q)["x_hat"]

res = {"threads": torch.get_num_threads(), "runs": []}
saved = {}
for q in blob["qs"]:
    enc = m.compress(blob["x"], q)
    sym, x_hat = decode(enc["strings"], enc["shape"], q)
    saved[q] = {"strings": enc["strings"], "x_hat": x_hat}
    res["runs"].append({"q": q, "strings": sha(b"".join(enc["strings"])), "symbols": sym, "x_hat": tsha(x_hat)})
from compass.refine import RefineConfig, compress_refined
refined = compress_refined(m, blob["x"], 0.45, RefineConfig(steps=4))
res["refined"] = sha(b"".join(refined["strings"])) + tsha(refined["x_hat"])
if other != "-":
    theirs = torch.load(other + "/out.pt", weights_only=False)
    res["cross_symbols"] = [decode(theirs[q]["strings"], tuple(blob["x"].shape[-2:]), q)[0] for q in blob["qs"]]
fresh = build_codec(sizes("tiny")[0]).eval()
fresh.load_state_dict(blob["state"])
fresh.update()
res["tables"] = sha(b"".join(getattr(mod, n).numpy().tobytes() for n in ("_freqs", "_lengths", "_offsets")
                             for mod in (fresh.entropy_bottleneck, fresh.gaussian_conditional)))
torch.save(saved, out_dir + "/out.pt")
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def determinism_runs(tmp_path_factory):
    """Three child processes code the same image: 1 thread, 2 threads (also decoding the first's strings), 1 thread."""
    d = tmp_path_factory.mktemp("det")
    m = spread_codec(seed=2)
    torch.save({"state": m.state_dict(), "x": synthetic_image(144, 176, seed=9), "qs": [0.0, 0.45, 1.0]},
               d / "blob.pt")
    runs = {}
    for name, threads, other in (("a1", 1, "-"), ("b2", 2, "a1"), ("c1", 1, "b2")):
        (d / name).mkdir()
        proc = run_python(_DET_SCRIPT, str(threads), str(d / "blob.pt"), str(d / name),
                          str(d / other) if other != "-" else "-", threads=threads, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        runs[name]["dir"] = d / name
    return runs


def test_strings_and_symbols_identical_across_processes_and_threads(determinism_runs):
    a1, b2, c1 = (determinism_runs[k] for k in ("a1", "b2", "c1"))
    assert (a1["threads"], b2["threads"], c1["threads"]) == (1, 2, 1)
    for r in (b2, c1):
        for ra, rb in zip(a1["runs"], r["runs"]):
            assert ra["strings"] == rb["strings"], ra["q"]  # byte-identical strings
            assert ra["symbols"] == rb["symbols"], ra["q"]  # identical decoded integer symbols
        assert r["cross_symbols"] == [run["symbols"] for run in a1["runs"]]  # decoding the other's strings
        assert r["tables"] == a1["tables"]  # update() builds the same integer tables


def test_refined_encodes_identical_across_thread_counts(determinism_runs):
    """Latent refinement (gradient steps on the whole image) also runs on one thread: same file on 1 or 2."""
    a1, b2, c1 = (determinism_runs[k] for k in ("a1", "b2", "c1"))
    assert a1["refined"] == b2["refined"] == c1["refined"]


def test_decoded_images_bit_identical_across_processes_and_thread_counts(determinism_runs):
    """Convolutions run on one thread in compress/decompress (layers.one_thread): 2 threads decode the same floats."""
    a1, b2, c1 = (determinism_runs[k] for k in ("a1", "b2", "c1"))
    assert [r["x_hat"] for r in a1["runs"]] == [r["x_hat"] for r in c1["runs"]] == [r["x_hat"] for r in b2["runs"]]


# ---------------------------------------------------------------- quality mapping

def test_q_to_lambda_endpoints_and_shape():
    assert q_to_lambda(0.0) == pytest.approx(LAMBDA_MIN, rel=1e-12)
    assert q_to_lambda(1.0) == pytest.approx(LAMBDA_MAX, rel=1e-12)
    assert q_to_lambda(0.5) == pytest.approx(math.sqrt(LAMBDA_MIN * LAMBDA_MAX), rel=1e-12)
    lam = q_to_lambda(torch.linspace(0, 1, 11, dtype=torch.float64))
    assert (lam.diff() > 0).all()
    torch.testing.assert_close(lam.log().diff(), torch.full((10,), math.log(LAMBDA_MAX / LAMBDA_MIN) / 10,
                                                              dtype=torch.float64))  # log-linear


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), -1e-9, -1.0, 1.0 + 1e-9, 2.0, "abc"])
def test_check_quality_rejects(bad):
    with pytest.raises(ValueError):
        check_quality(bad)


@pytest.mark.parametrize("good", [0, 0.0, 1, 1.0, 0.5, np.float32(0.25), "0.75"])
def test_check_quality_accepts(good):
    q = check_quality(good)
    assert isinstance(q, float) and q == float(good)


# ---------------------------------------------------------------- transforms in row stripes

@pytest.mark.parametrize("size,stripe", [((301, 517), 1 << 15), ((256, 200), 1 << 14), ((97, 130), 1 << 13)])
def test_transform_stripes_equal_whole_image_exactly(size, stripe, monkeypatch):
    """compress/decompress run g_a and g_s in row stripes with a receptive-field halo (on one thread), g_s in
    channels-last layout: the same floats as one whole-image pass, odd sizes included; one row less of halo
    changes them (the halo is tight)."""
    torch.manual_seed(4)
    m = build_codec(sizes("cpu")[0]).eval()
    assert m.g_a.halo == m.g_s.halo == 2
    img, _ = m.latent_sizes(*size)
    x = synthetic_image(*size, seed=6)
    y = torch.randn(1, m.config.M, *img[-1]) * 3
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            whole_a, whole_s = m.g_a(x), m.g_s(y, img[-2::-1])
            assert whole_a.shape[-2:] == img[-1] and whole_s.shape[-2:] == size
            assert torch.equal(m.g_a(x, stripe), whole_a)
            assert torch.equal(m.g_s(y, img[-2::-1], stripe), whole_s)
            # the decoder's layout (channels last, MeanScaleHyperprior.synthesise) changes no float either
            assert torch.equal(m.g_s(y.contiguous(memory_format=torch.channels_last), img[-2::-1], stripe), whole_s)
            inv_gain = m.gains(torch.tensor([0.5]))[1]
            assert torch.equal(m.synthesise(y / inv_gain, 0.5, size), m.g_s(y / inv_gain * inv_gain, img[-2::-1]))
            for transform in (m.g_a, m.g_s):
                monkeypatch.setattr(type(transform), "halo", property(lambda self: 1))
            assert not torch.equal(m.g_a(x, stripe), whole_a)
            assert not torch.equal(m.g_s(y, img[-2::-1], stripe), whole_s)
    finally:
        torch.set_num_threads(old)
