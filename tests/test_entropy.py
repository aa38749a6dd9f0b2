"""Entropy models on their own: exact integer round trips (escapes included), tables, errors, real bits."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compass.entropy import (PRECISION, CodingError, EntropyBottleneck, GaussianConditional, NotUpdatedError,
                             quantize_pmf)


def _eb(channels: int = 5, seed: int = 0) -> EntropyBottleneck:
    """An updated bottleneck with per-channel fractional medians and tables of different lengths."""
    torch.manual_seed(seed)
    eb = EntropyBottleneck(channels)
    with torch.no_grad():
        for c in range(channels):
            med = 0.37 * c - 0.61
            half = 3.0 + 4 * c
            eb.quantiles[c, 0] = torch.tensor([med - half, med, med + half])
    eb.update()
    return eb


def _gc_symbols(gc: GaussianConditional, shape, seed: int = 0):
    """Indexes over every table, symbols with the table edges, just-outside values and far escapes."""
    g = torch.Generator().manual_seed(seed)
    n_levels = gc.scale_table.numel()
    idx = torch.randint(0, n_levels, shape, generator=g)
    idx.view(-1)[:n_levels] = torch.arange(n_levels)
    off = gc._offsets.long()[idx]
    scale = gc.scale_table[idx]
    sym = torch.round(torch.randn(shape, generator=g) * scale).long()
    flat, offf = sym.view(-1), off.view(-1)
    k = n_levels
    flat[k:k + 64] = offf[k:k + 64]            # last symbol inside the table
    flat[k + 64:k + 128] = -offf[k + 64:k + 128]
    flat[k + 128:k + 192] = offf[k + 128:k + 192] + 1  # first escape
    flat[k + 192:k + 256] = -offf[k + 192:k + 256] - 1
    flat[k + 256:k + 262] = torch.tensor([10**6, -10**6, 2**20 + 3, -(2**24), 12345, -77777])
    means = torch.empty(shape).uniform_(-40, 40, generator=g)
    return idx, sym, means


def test_bottleneck_round_trip_is_exact_including_escapes():
    eb = _eb()
    g = torch.Generator().manual_seed(1)
    sym = torch.randint(-12, 13, (1, 5, 9, 11), generator=g)
    sym[0, :, 0, 0] = torch.tensor([10**6, -10**6, 4096, -5000, 2**23])
    sym[0, 0, 1, :2] = torch.tensor([3, -3])  # channel 0's table edge is about +-3: just inside / outside
    med = eb._medians.view(1, -1, 1, 1)
    z = sym.float() + med + (torch.rand(sym.shape, generator=g) - 0.5) * 0.98  # anything rounding to sym
    lengths = eb._lengths.long().view(1, -1, 1, 1)
    outside = (sym + eb._offsets.long().view(1, -1, 1, 1) < 0) | (sym + eb._offsets.long().view(1, -1, 1, 1) >= lengths)
    assert outside.sum() >= 20 and (~outside).sum() >= 200  # both paths are exercised
    s = eb.compress(z)
    out = eb.decompress(s, (9, 11))
    assert torch.equal(torch.round(out - med).long(), sym)
    assert torch.equal(out, sym.float() + med)


def test_gaussian_round_trip_is_exact_including_escapes():
    gc = GaussianConditional()
    gc.update()
    idx, sym, means = _gc_symbols(gc, (1, 6, 20, 30))
    y = sym.float() + means + 0.49 * (torch.rand(sym.shape) * 2 - 1)
    assert torch.equal(torch.round(y - means).long(), sym)
    escapes = (sym.abs() > gc._offsets.long()[idx]).sum()
    assert escapes >= 130
    s = gc.compress(y, idx, means)
    out = gc.decompress(s, idx, means)
    assert out.shape == y.shape
    assert torch.equal(torch.round(out - means).long(), sym)
    assert torch.equal(out, sym.float() + means)


def test_single_symbol_and_all_zero_streams():
    gc = GaussianConditional()
    gc.update()
    for val in (0, 1, -1, 10**6):
        idx = torch.zeros(1, 1, 1, 1, dtype=torch.long)
        means = torch.full((1, 1, 1, 1), 0.25)
        s = gc.compress(torch.full((1, 1, 1, 1), val + 0.25), idx, means)
        assert gc.decompress(s, idx, means).item() == val + 0.25
    eb = _eb(3)
    z = eb._medians.view(1, -1, 1, 1).expand(1, 3, 4, 4).clone()
    assert torch.equal(eb.decompress(eb.compress(z), (4, 4)), z)


def test_escape_values_beyond_the_decoder_limit_are_refused_at_encoding():
    """The decoder treats escapes of more than 40 bits as damage, so the encoder must not write them."""
    gc = GaussianConditional()
    gc.update()
    idx = torch.zeros(1, 1, 1, 2, dtype=torch.long)
    means = torch.zeros(1, 1, 1, 2)
    ok = torch.tensor([[[[2.0**38, -(2.0**38)]]]])
    assert torch.equal(gc.decompress(gc.compress(ok, idx, means), idx, means), ok)
    with pytest.raises(ValueError):
        gc.compress(torch.tensor([[[[2.0**41, 0.0]]]]), idx, means)


def test_coding_before_update_raises():
    eb, gc = EntropyBottleneck(4), GaussianConditional()
    assert not eb.updated and not gc.updated
    idx = torch.zeros(1, 4, 2, 2, dtype=torch.long)
    with pytest.raises(NotUpdatedError):
        eb.compress(torch.zeros(1, 4, 2, 2))
    with pytest.raises(NotUpdatedError):
        eb.decompress(b"\0" * 8, (2, 2))
    with pytest.raises(NotUpdatedError):
        gc.compress(torch.zeros(1, 4, 2, 2), idx, torch.zeros(1, 4, 2, 2))
    with pytest.raises(NotUpdatedError):
        gc.decompress(b"\0" * 8, idx, torch.zeros(1, 4, 2, 2))


def test_state_dict_carries_tables_to_a_fresh_model(tmp_path):
    """A stream written by one model decodes with a fresh model (other random init) that loaded its file."""
    eb1 = _eb(seed=0)
    gc1 = GaussianConditional()
    gc1.update()
    idx, sym, means = _gc_symbols(gc1, (1, 4, 16, 20), seed=3)
    y = sym.float() + means
    z = torch.randn(1, 5, 7, 6) * 6
    zs, ys = eb1.compress(z), gc1.compress(y, idx, means)
    torch.save({"eb": eb1.state_dict(), "gc": gc1.state_dict()}, tmp_path / "w.pt")

    eb2, gc2 = EntropyBottleneck(5), GaussianConditional()
    with torch.no_grad():
        eb2.biases[0].add_(1.0)  # a different density: only the saved tables can make decoding agree
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    eb2.load_state_dict(state["eb"])
    gc2.load_state_dict(state["gc"])
    for a, b in ((eb1, eb2), (gc1, gc2)):
        for name in ("_freqs", "_lengths", "_offsets"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(eb2.decompress(zs, (7, 6)), eb1.decompress(zs, (7, 6)))
    assert torch.equal(gc2.decompress(ys, idx, means), y)
    assert eb2.compress(z) == zs and gc2.compress(y, idx, means) == ys


def test_loading_weights_without_tables_drops_stale_tables():
    """Training checkpoints hold no tables; loading one into an updated model must not keep the old tables."""
    trained = EntropyBottleneck(3)            # never updated: empty table buffers, as in a training checkpoint
    eb = _eb(3)
    eb.load_state_dict(trained.state_dict())
    assert not eb.updated
    with pytest.raises(NotUpdatedError):
        eb.compress(torch.zeros(1, 3, 2, 2))


def test_bottleneck_escape_probability_is_each_channels_tail_mass():
    """The escape frequency must be the density's mass outside each channel's own table.

    Tables of different lengths share one padded tensor; the upper tail used to be read at the longest table's
    end for every channel, which under-counts the tail of every shorter table.
    """
    torch.manual_seed(0)
    eb = EntropyBottleneck(3)
    with torch.no_grad():
        eb.quantiles[0, 0] = torch.tensor([-2.0, 0.0, 2.0])    # narrow table over a wide density: big tails
        eb.quantiles[1, 0] = torch.tensor([-6.0, 0.0, 6.0])
        eb.quantiles[2, 0] = torch.tensor([-40.0, 0.0, 40.0])
    eb.update()
    for c in range(3):
        n, off = int(eb._lengths[c]), int(eb._offsets[c])
        lo_edge = torch.tensor([[[-off - 0.5]]])
        hi_edge = torch.tensor([[[n - off - 0.5]]])
        with torch.no_grad():
            one = lambda v: eb._logits_cumulative(v.expand(3, 1, 1), stop_gradient=True)[c, 0, 0]
            tail = float(torch.sigmoid(one(lo_edge)) + torch.sigmoid(-one(hi_edge)))
        p_escape = eb._freqs[c, n].item() / 2**PRECISION
        assert p_escape == pytest.approx(tail, rel=0.02, abs=3 / 2**PRECISION), c


@pytest.mark.parametrize("lo,hi", [(0.11, 256.0), (0.11, 0.6), (0.6, 8.0), (8.0, 256.0)])
def test_gaussian_real_bits_match_the_likelihood(lo, hi):
    """Samples from the predicted Gaussians cost what the likelihood says (table choice, quantization, coder)."""
    gc = GaussianConditional()
    gc.update()
    g = torch.Generator().manual_seed(0)
    scales = torch.exp(torch.empty(1, 4, 40, 50).uniform_(math.log(lo), math.log(hi), generator=g))
    means = torch.empty_like(scales).uniform_(-3, 3, generator=g)
    y = means + scales * torch.randn(scales.shape, generator=g)
    y_hat, lik = gc(y, scales, means, False)
    est = float((-torch.log2(lik)).sum())
    real = 8 * len(gc.compress(y, gc.build_indexes(scales), means))
    assert est > 1500
    assert abs(real - est) <= 0.01 * est + 64, (real, est)


def test_bottleneck_real_bits_match_the_likelihood():
    eb = _eb(5)
    g = torch.Generator().manual_seed(0)
    # inside every channel's table (escapes are coded with a flat code, on purpose not at the likelihood's cost)
    half = (eb._lengths.float() / 2 - 1).view(1, -1, 1, 1)
    z = eb._medians.view(1, -1, 1, 1) + (torch.randn(1, 5, 30, 40, generator=g) * half / 2).clamp(-half, half)
    with torch.no_grad():
        _, lik = eb(z, False)
    est = float((-torch.log2(lik)).sum())
    real = 8 * len(eb.compress(z))
    assert est > 10000
    assert abs(real - est) <= 0.01 * est + 64, (real, est)


def test_scale_index_is_the_nearest_level_in_log():
    gc = GaussianConditional()
    t = gc.scale_table
    mids = torch.sqrt(t[:-1] * t[1:])
    s = torch.cat([t, mids * 0.999, mids * 1.001, torch.tensor([0.0, -3.0, 1e-6, 1e6])])
    idx = gc.build_indexes(s)
    L = t.numel()
    assert torch.equal(idx[:L], torch.arange(L))
    assert torch.equal(idx[L:2 * L - 1], torch.arange(L - 1))
    assert torch.equal(idx[2 * L - 1:3 * L - 2], torch.arange(1, L))
    assert idx[-4:].tolist() == [0, 0, 0, L - 1]
    assert torch.equal(gc.build_indexes(mids), torch.arange(L - 1))  # a scale on a boundary takes the lower level


def test_scale_index_equals_comparison_with_every_bound():
    """The binary search gives, shape and dtype included, the count of boundaries below each scale."""
    gc = GaussianConditional()
    t = gc.scale_table
    bounds = torch.sqrt(t[:-1] * t[1:])
    torch.manual_seed(5)
    s = torch.exp(torch.empty(2, 7, 9, 11).uniform_(-4, 6))
    s.view(-1)[:bounds.numel()] = bounds
    expect = (s.clamp_min(gc.scale_bound).unsqueeze(-1) > bounds).sum(-1)
    idx = gc.build_indexes(s)
    assert idx.dtype == expect.dtype and torch.equal(idx, expect)


def test_quantize_pmf():
    pmf = np.array([1e-12, 0.2, 0.5, 0.3 - 1e-6])
    f = quantize_pmf(pmf, 1e-9)
    assert f.sum() == 2**PRECISION and f.min() >= 1 and f.size == 5
    assert f[2] > f[3] > f[1] > f[0]
    with pytest.raises(ValueError):
        quantize_pmf(np.ones(2**PRECISION), 0.0)


def test_decoding_errors_are_coding_errors():
    gc = GaussianConditional()
    gc.update()
    idx = torch.zeros(1, 1, 2, 2, dtype=torch.long)
    with pytest.raises(CodingError):
        gc.decompress(b"abc", idx, torch.zeros(1, 1, 2, 2))  # not a whole number of 32-bit words


def test_lower_bound_lets_gradients_raise_values_below_it():
    """A scale under the bound must still receive the gradient that raises it (a clamp would kill it for good)."""
    from compass.entropy import GaussianConditional

    gc = GaussianConditional()
    scales = torch.tensor([-1.0, 0.05, 2.0], requires_grad=True)
    y = torch.tensor([1.0, 1.0, 1.0])  # 4.5 sigma out at the bound: likelihood small but above its floor
    (-torch.log2(gc.likelihood(y, scales, torch.zeros(3)))).sum().backward()
    assert scales.grad[0] < 0 and scales.grad[1] < 0  # the rate falls when these scales grow
    assert torch.equal(gc.likelihood(y, scales, torch.zeros(3))[:2], gc.likelihood(y[:2], torch.full((2,), 0.11), torch.zeros(2)))
