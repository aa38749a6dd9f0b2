"""Entropy models (factorized prior for z, Gaussian conditional for y) and their range coding.

Conventions follow CompressAI: each model is an nn.Module whose forward gives (values_hat, likelihoods) for
training, and whose `update()` builds integer probability tables (kept as buffers, so a weights file carries
the exact tables and every machine codes with the same integers). Coding uses `constriction`'s range coder.

Symbols outside a table's support are coded as an escape symbol followed by the value itself, so no latent
value ever corrupts a stream.
"""
from __future__ import annotations

import math

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CompassError

PRECISION = 16
LIKELIHOOD_BOUND = 1e-9
_ESCAPE_CHUNK = 16


class CodingError(CompassError):
    """A string could not be decoded (damaged data, or tables that do not match the encoder's)."""


class NotUpdatedError(CompassError):
    """Coding was attempted before `update()` built the probability tables."""


def quantize_pmf(pmf: np.ndarray, tail: float, precision: int = PRECISION) -> np.ndarray:
    """Integer frequencies (pmf then one escape symbol) summing to 2**precision, every entry >= 1."""
    probs = np.append(np.clip(pmf, 0, None), max(tail, 0.0)).astype(np.float64)
    total = 1 << precision
    free = total - probs.size
    if free < 0:
        raise ValueError("table longer than the coder precision allows")
    freq = np.floor(probs / probs.sum() * free).astype(np.int64) + 1
    # hand the rounding remainder to the most probable symbol (deterministic)
    freq[np.argmax(freq)] += total - freq.sum()
    return freq


class TableCoder:
    """Range-codes integer symbols, each with one of several integer frequency tables.

    Symbols are grouped by table (ascending table id, original order inside a group) so each group is coded
    with one model; escapes (symbols outside the table) are appended after all groups.
    """

    def __init__(self, freqs: np.ndarray, lengths: np.ndarray, offsets: np.ndarray):
        self.lengths = lengths.astype(np.int64)
        self.offsets = offsets.astype(np.int64)
        self.models = [
            constriction.stream.model.Categorical(freqs[t, : lengths[t] + 1].astype(np.float64), perfect=False)
            for t in range(len(lengths))
        ]

    def encode(self, values: np.ndarray, tables: np.ndarray) -> bytes:
        values = values.reshape(-1).astype(np.int64)
        tables = tables.reshape(-1).astype(np.int64)
        enc = constriction.stream.queue.RangeEncoder()
        escaped = []
        for t in np.unique(tables):
            sel = values[tables == t]
            sym = sel + self.offsets[t]
            esc = (sym < 0) | (sym >= self.lengths[t])
            escaped.append(sel[esc])
            sym[esc] = self.lengths[t]
            enc.encode(sym.astype(np.int32), self.models[t])
        escaped = np.concatenate(escaped) if escaped else np.zeros(0, np.int64)
        _encode_escapes(enc, escaped)
        return enc.get_compressed().astype("<u4").tobytes()

    def decode(self, data: bytes, tables: np.ndarray) -> np.ndarray:
        if len(data) % 4:
            raise CodingError(f"string length {len(data)} is not a multiple of 4")
        tables = tables.reshape(-1).astype(np.int64)
        out = np.empty(tables.size, np.int64)
        dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, "<u4").astype(np.uint32))
        escape_slots = []
        try:
            for t in np.unique(tables):
                idx = np.nonzero(tables == t)[0]
                sym = dec.decode(self.models[t], idx.size).astype(np.int64)
                esc = sym == self.lengths[t]
                escape_slots.append(idx[esc])
                out[idx] = sym - self.offsets[t]
            slots = np.concatenate(escape_slots) if escape_slots else np.zeros(0, np.int64)
            out[slots] = _decode_escapes(dec, slots.size)
        except (ValueError, RuntimeError, AssertionError) as e:
            raise CodingError(f"damaged entropy-coded string ({e})") from None
        return out


_BITS_MODEL = constriction.stream.model.Uniform(65)
_ESCAPE_MAX_BITS = 40  # zigzag codes longer than this are refused by the encoder and treated as damage by the decoder
_CHUNK_MODEL = constriction.stream.model.Uniform(1 << _ESCAPE_CHUNK)


def _encode_escapes(enc, values: np.ndarray) -> None:
    """Code escaped values exactly: bit length of the zigzag code, then its bits in 16-bit chunks."""
    for v in values.tolist():
        u = 2 * v if v >= 0 else -2 * v - 1
        nbits = u.bit_length()
        if nbits > _ESCAPE_MAX_BITS:
            # the decoder rejects such a value, so writing it would give an undecodable string
            raise ValueError(f"latent value {v} is too large to code (non-finite or exploding input?)")
        enc.encode(np.array([nbits], np.int32), _BITS_MODEL)
        for shift in range(0, nbits, _ESCAPE_CHUNK):
            enc.encode(np.array([(u >> shift) & 0xFFFF], np.int32), _CHUNK_MODEL)


def _decode_escapes(dec, count: int) -> np.ndarray:
    out = np.empty(count, np.int64)
    for i in range(count):
        nbits = int(dec.decode(_BITS_MODEL, 1)[0])
        if nbits > _ESCAPE_MAX_BITS:
            raise CodingError("escaped value out of range")
        u = 0
        for shift in range(0, nbits, _ESCAPE_CHUNK):
            u |= int(dec.decode(_CHUNK_MODEL, 1)[0]) << shift
        out[i] = u // 2 if u % 2 == 0 else -(u + 1) // 2
    return out


class _TableModel(nn.Module):
    """Shared table storage: padded integer frequencies, lengths and offsets, all state-dict buffers."""

    def __init__(self):
        super().__init__()
        self.register_buffer("_freqs", torch.zeros(0, 0, dtype=torch.int32))
        self.register_buffer("_lengths", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("_offsets", torch.zeros(0, dtype=torch.int32))
        self._coder = None
        self._coder_key = None

    def _set_tables(self, freq_list: list[np.ndarray], offsets: list[int]) -> None:
        width = max(f.size for f in freq_list)
        freqs = np.zeros((len(freq_list), width), np.int32)
        for i, f in enumerate(freq_list):
            freqs[i, : f.size] = f
        dev = self._freqs.device
        self._freqs = torch.from_numpy(freqs).to(dev)
        self._lengths = torch.tensor([f.size - 1 for f in freq_list], dtype=torch.int32, device=dev)
        self._offsets = torch.tensor(offsets, dtype=torch.int32, device=dev)
        self._coder = None

    @property
    def updated(self) -> bool:
        return self._lengths.numel() > 0

    def coder(self) -> TableCoder:
        if not self.updated:
            raise NotUpdatedError(f"{type(self).__name__}: call update() before compress/decompress")
        key = (self._freqs.data_ptr(), int(self._freqs.sum()))
        if self._coder is None or self._coder_key != key:
            self._coder = TableCoder(self._freqs.cpu().numpy(), self._lengths.cpu().numpy(), self._offsets.cpu().numpy())
            self._coder_key = key
        return self._coder

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # tables have data-dependent shapes: resize the buffers to what the file holds before loading
        for name in ("_freqs", "_lengths", "_offsets"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        self._coder = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it would raise x.

    A plain clamp has zero gradient below the bound, so a scale (or likelihood) that falls under it can never
    come back: such channels die for the rest of training.
    """

    @staticmethod
    def forward(ctx, x, bound: float):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class EntropyBottleneck(_TableModel):
    """Factorized prior (Balle et al. 2018, appendix 6.1): a learned non-parametric density per channel.

    `quantiles` track the tails and median of each channel's density through the auxiliary `loss()`;
    at test time values are rounded around the median.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0,
                 tail_mass: float = 1e-9):
        super().__init__()
        self.channels = channels
        self.tail_mass = tail_mass
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        self.quantiles = nn.Parameter(torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1))
        target = math.log(2 / tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]))
        self.register_buffer("_medians", torch.zeros(channels))

    def _logits_cumulative(self, x: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            m, b = F.softplus(m), b
            if stop_gradient:
                m, b = m.detach(), b.detach()
            x = torch.matmul(m, x) + b
            if i < len(self.factors):
                f = self.factors[i].detach() if stop_gradient else self.factors[i]
                x = x + torch.tanh(f) * torch.tanh(x)
        return x

    def medians(self) -> torch.Tensor:
        return self.quantiles[:, 0, 1].detach()

    @property
    def coded_medians(self) -> torch.Tensor:
        """The medians the integer tables were built with (`update`): symbols are round(z - these)."""
        return self._medians

    def loss(self) -> torch.Tensor:
        """Auxiliary loss that moves `quantiles` to the tails (tail_mass) and median of each density."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return (logits - self.target).abs().sum()

    def _likelihood(self, v: torch.Tensor) -> torch.Tensor:
        """v: (C, 1, n) values -> probability mass of [v - 1/2, v + 1/2]."""
        lower = self._logits_cumulative(v - 0.5, stop_gradient=False)
        upper = self._logits_cumulative(v + 0.5, stop_gradient=False)
        sign = -torch.sign(lower + upper).detach()
        return (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()

    def forward(self, z: torch.Tensor, training: bool | None = None):
        """Return (z_hat for the decoder, likelihoods). Training: noise for the likelihood, STE rounding for z_hat."""
        training = self.training if training is None else training
        med = self.medians().view(1, -1, 1, 1)
        z_hat = _ste_round(z - med) + med
        z_lik = z + torch.empty_like(z).uniform_(-0.5, 0.5) if training else z_hat
        return z_hat, self.likelihood(z_lik)

    def likelihood(self, values: torch.Tensor) -> torch.Tensor:
        """Probability mass of [v - 1/2, v + 1/2] for every value of a (B, C, H, W) tensor (bounded below)."""
        b, c, h, w = values.shape
        flat = values.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lik = self._likelihood(flat).reshape(c, b, h, w).permute(1, 0, 2, 3)
        return lower_bound(lik, LIKELIHOOD_BOUND)

    def fit_quantiles(self, steps: int = 3000, lr: float = 1e-2) -> float:
        """Move the quantiles to their targets by minimizing `loss()` alone; returns the final loss.

        The auxiliary loss depends only on the density, not on data, so this converges in seconds what a
        training run's slow auxiliary optimizer may still be chasing when the run is stopped.
        """
        opt = torch.optim.Adam([self.quantiles], lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = self.loss()
            loss.backward()
            opt.step()
        return float(self.loss().detach())

    @torch.no_grad()
    def update(self) -> None:
        """Build the integer tables (one per channel) from the current density and quantiles."""
        med = self.medians()
        lo = torch.ceil(med - self.quantiles[:, 0, 0]).clamp(min=0).long()
        hi = torch.ceil(self.quantiles[:, 0, 2] - med).clamp(min=0).long()
        lo, hi = lo.clamp(max=4096), hi.clamp(max=4096)
        length = lo + hi + 1
        samples = torch.arange(int(length.max()), device=med.device, dtype=med.dtype)
        samples = (samples[None, :] + (med - lo)[:, None]).unsqueeze(1)
        lower = self._logits_cumulative(samples - 0.5, stop_gradient=True)
        upper = self._logits_cumulative(samples + 0.5, stop_gradient=True)
        sign = -torch.sign(lower + upper)
        pmf = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()[:, 0, :]
        # upper tail at each channel's own last table entry (rows are padded to the longest table)
        last = upper[torch.arange(self.channels, device=med.device), 0, length - 1]
        tail = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-last)[:, None]
        freqs, offsets = [], []
        for ch in range(self.channels):
            n = int(length[ch])
            freqs.append(quantize_pmf(pmf[ch, :n].double().cpu().numpy(), float(tail[ch, 0])))
            offsets.append(int(lo[ch]))
        self._set_tables(freqs, offsets)
        self._medians = med.clone()

    def compress(self, z: torch.Tensor) -> bytes:
        """Code one latent (1, C, h, w); symbols are round(z - median)."""
        coder = self.coder()
        sym = torch.round(z - self._medians.view(1, -1, 1, 1)).to(torch.int64)
        tables = torch.arange(self.channels).view(1, -1, 1, 1).expand_as(sym)
        return coder.encode(sym.cpu().numpy(), tables.cpu().numpy())

    def decompress(self, data: bytes, size: tuple[int, int]) -> torch.Tensor:
        coder = self.coder()
        h, w = size
        tables = np.broadcast_to(np.arange(self.channels).reshape(1, -1, 1, 1), (1, self.channels, h, w))
        sym = coder.decode(data, tables)
        sym = torch.from_numpy(sym.astype(np.float32)).reshape(1, self.channels, h, w)
        return sym.to(self._medians.device) + self._medians.view(1, -1, 1, 1)


def default_scale_table(low: float = 0.11, high: float = 256.0, levels: int = 64) -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(low), math.log(high), levels))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-x * (2**-0.5))


class GaussianConditional(_TableModel):
    """Gaussian conditional for y with predicted means and scales; scales are coded by a table index.

    The coded symbol is round(y - mean); its table is the scale-table level nearest (in the log domain) to the
    predicted scale, so the decoder's probability model depends on an integer index only.
    """

    def __init__(self, scale_table: torch.Tensor | None = None, tail_mass: float = 1e-9):
        super().__init__()
        table = default_scale_table() if scale_table is None else scale_table
        self.register_buffer("scale_table", table.clone().float())
        self.scale_bound = float(table[0])
        self.tail_mass = tail_mass

    def likelihood(self, values: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        v = (values - means).abs()
        s = lower_bound(scales, self.scale_bound)
        lik = _std_normal_cdf((0.5 - v) / s) - _std_normal_cdf((-0.5 - v) / s)
        return lower_bound(lik, LIKELIHOOD_BOUND)

    def forward(self, y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor, training: bool | None = None):
        """Return (y_hat for the decoder, likelihoods). y_hat = round(y - mean) + mean with an STE gradient."""
        training = self.training if training is None else training
        y_hat = _ste_round(y - means) + means
        y_lik = y + torch.empty_like(y).uniform_(-0.5, 0.5) if training else y_hat
        return y_hat, self.likelihood(y_lik, scales, means)

    def build_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """Table index of each scale: the nearest level in the log domain (clamped to the table's ends).

        Nearest, not the first level >= the scale: rounding every scale up to the next level cost 1.8-4.2 %
        more y bits than the likelihoods on Kodak (worst at low rates, where most scales are small); the
        nearest level costs within 0.1 % of them. tests/test_codec.py checks real bits against the likelihoods.
        """
        table = self.scale_table.to(scales.device)
        bounds = torch.sqrt(table[:-1] * table[1:])  # geometric midpoints between neighbouring levels
        # the count of bounds below each scale, by binary search: comparing with every bound at once held a
        # (scales x levels) int64 tensor, 1.5 GB for a 4K layer
        return torch.bucketize(scales.clamp_min(self.scale_bound), bounds)

    @torch.no_grad()
    def update(self) -> None:
        multiplier = -_normal_ppf(self.tail_mass / 2)
        freqs, offsets = [], []
        for s in self.scale_table.double().tolist():
            center = int(math.ceil(s * multiplier))
            k = np.arange(-center, center + 1, dtype=np.float64)
            cdf = np.vectorize(lambda x: 0.5 * math.erfc(-x / math.sqrt(2)))
            pmf = cdf((0.5 - np.abs(k)) / s) - cdf((-0.5 - np.abs(k)) / s)
            tail = 2 * 0.5 * math.erfc((center + 0.5) / s / math.sqrt(2))
            freqs.append(quantize_pmf(pmf, tail))
            offsets.append(center)
        self._set_tables(freqs, offsets)

    def compress(self, y: torch.Tensor, indexes: torch.Tensor, means: torch.Tensor) -> bytes:
        coder = self.coder()
        sym = torch.round(y - means).to(torch.int64)
        return coder.encode(sym.cpu().numpy(), indexes.cpu().numpy())

    def decompress(self, data: bytes, indexes: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        coder = self.coder()
        sym = coder.decode(data, indexes.cpu().numpy())
        sym = torch.from_numpy(sym.astype(np.float32)).reshape(indexes.shape).to(means.device)
        return sym + means


def _normal_ppf(p: float) -> float:
    """Inverse standard normal CDF by bisection (only used to size tables; needs no scipy)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
