"""Building blocks of the transforms: GDN/IGDN, strided convolutions and the odd-size pad-and-crop rule.

Odd sides: before each stride-2 stage an odd side gets one pixel of replicate padding (right/bottom); the
matching transposed convolution is cropped back to the recorded size. Any size from 1x1 is coded without
padding to a multiple of 64.
"""
from __future__ import annotations

import contextlib
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn


_THREADS = threading.RLock()


@contextlib.contextmanager
def one_thread():
    """Run the enclosed CPU ops on one thread, then restore the thread count (one caller at a time; re-entrant).

    CPU convolutions (oneDNN) split their sums by thread count, so a convolution computed with 1 and with 2
    threads differs in the last float bits. In the hyperprior that moves a scale across the boundary between two
    tables (a symbol check failure); in the analysis it can flip a rounding (another file); in the synthesis and
    LIFF's feature extractor it changes decoded values (a few 8-bit levels in millions, docs/reliability.md). So
    every convolution stack of `compress`, `decompress` and inference-time prediction runs here, and files and
    decodes are bit-identical whatever the thread count. Matrix products (LIFF's MLP, MKL) split rows, not sums,
    and keep every thread. Cost on 2 threads: about 1.1x the time of a Kodak decode (docs/reliability.md).
    """
    with _THREADS:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)


def halve(size: int) -> int:
    """Side length after one stride-2 stage (odd sides are padded by one pixel first)."""
    return (size + 1) // 2


def size_chain(height: int, width: int, stages: int) -> list[tuple[int, int]]:
    """Sizes before each of `stages` stride-2 stages, plus the final size: stages + 1 entries."""
    sizes = [(height, width)]
    for _ in range(stages):
        h, w = sizes[-1]
        sizes.append((halve(h), halve(w)))
    return sizes


def pad_even(x: torch.Tensor) -> torch.Tensor:
    """Replicate-pad the right/bottom edge by one pixel where a side is odd (by concatenating the last row or
    column: the same values as F.pad's replicate mode, whose backward torch.compile gets wrong)."""
    if x.shape[-2] % 2:
        x = torch.cat([x, x[..., -1:, :]], dim=-2)
    if x.shape[-1] % 2:
        x = torch.cat([x, x[..., -1:]], dim=-1)
    return x


def conv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def deconv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel, stride=stride, padding=kernel // 2, output_padding=stride - 1)


class GDN(nn.Module):
    """Generalized divisive normalization (Balle et al. 2016), simplified parametrization.

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2), or its inverse (IGDN) with multiplication.
    beta and gamma are kept non-negative by a squared reparametrization with a small floor.
    """

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.pedestal = 2.0**-36
        self.beta_bound = (beta_min + self.pedestal) ** 0.5
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self.pedestal))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self.pedestal))

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(beta, gamma) as the normalization uses them, from their non-negative parametrization."""
        beta = self.beta.clamp(min=self.beta_bound) ** 2 - self.pedestal
        gamma = self.gamma.clamp(min=self.pedestal**0.5) ** 2 - self.pedestal
        return beta, gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta, gamma = self.effective()
        c = gamma.shape[0]
        norm = F.conv2d(x * x, gamma.view(c, c, 1, 1), beta)
        norm = torch.sqrt(norm)
        return x * norm if self.inverse else x / norm


STRIPE = 1 << 21  # image pixels per analysis or synthesis stripe at inference; smaller images run whole


def row_stripes(rows: int, pixels: int, stripe: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Cut `rows` rows into stripes of equal height, about `stripe` of the image's `pixels` each: (r0, r1) the
    rows a stripe keeps, (lo, hi) the rows it computes from, `halo` more on either side where the image has them."""
    count = -(-pixels // stripe)
    step = -(-rows // count)
    return [(r, min(rows, r + step), max(0, r - halo), min(rows, r + step + halo)) for r in range(0, rows, step)]


def receptive_rows(convs) -> int:
    """Rows at the coarse end of a stack of convolutions that one coarse row needs on either side (rounded up)."""
    reach, scale = 0.0, 1
    for c in convs:
        reach += (c.kernel_size[0] // 2) * scale
        scale *= c.stride[0]
    return math.ceil(reach / scale)


class _Stack(nn.Module):
    """Convolutions, each followed by its activation (the last may have none)."""

    def __init__(self, convs: list[nn.Module], acts: list[nn.Module]):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.acts = nn.ModuleList(acts)

    @property
    def halo(self) -> int:
        """Rows of context at the coarse end (the output of an analysis, the input of a synthesis) that each of
        its rows needs on either side."""
        return receptive_rows(self.convs)


class Analysis(_Stack):
    """A stack of stride-2 convolutions, each preceded by the odd-side replicate padding."""

    def forward(self, x: torch.Tensor, stripe: int | None = None) -> torch.Tensor:
        """Inputs above `stripe` pixels run in row stripes of about that size, each with `halo` output rows of
        context on either side, cut at multiples of the total stride so that only the last stripe meets the odd-
        side padding: every kept row sees the inputs of a whole-image pass (the same floats on one thread)."""
        height, width = x.shape[-2:]
        if stripe is None or height * width <= stripe:
            return self._run(x)
        unit = math.prod(c.stride[0] for c in self.convs)
        h = -(-height // unit)  # output rows
        out = None
        for r0, r1, lo, hi in row_stripes(h, height * width, stripe, self.halo):
            part = self._run(x[:, :, lo * unit:hi * unit])
            if out is None:
                out = part.new_empty(*part.shape[:2], h, part.shape[-1])
            out[:, :, r0:r1] = part[:, :, r0 - lo:r1 - lo]
        return out

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        for i, c in enumerate(self.convs):
            if c.stride[0] == 2:
                x = pad_even(x)
            x = c(x)
            if i < len(self.acts):
                x = self.acts[i](x)
        return x


class Synthesis(_Stack):
    """A stack of transposed convolutions, each cropped to the size recorded for its stage."""

    def forward(self, x: torch.Tensor, sizes: list[tuple[int, int]], stripe: int | None = None) -> torch.Tensor:
        """`sizes`: output size of every stride-2 stage in order (from the matching analysis, reversed).

        Outputs above `stripe` pixels are made in row stripes of about that size, each from its input rows plus
        `halo` rows on either side, so every kept row sees exactly the inputs of a whole-image pass: the same
        floats on one thread (a test checks equality), with memory that follows the stripe, not the image.
        """
        sizes = list(sizes)
        (height, width), h = sizes[-1], x.shape[-2]
        if stripe is None or height * width <= stripe:
            return self._rows(x, sizes, 0)
        scale = math.prod(c.stride[0] for c in self.convs)
        out = None
        for r0, r1, lo, hi in row_stripes(h, height * width, stripe, self.halo):
            part = self._rows(x[:, :, lo:hi], sizes, lo)
            if out is None:
                out = part.new_empty(*part.shape[:2], height, width)
            t0, t1 = r0 * scale, min(height, r1 * scale)
            out[:, :, t0:t1] = part[:, :, t0 - lo * scale:t1 - lo * scale]
        return out

    def _rows(self, x: torch.Tensor, sizes: list[tuple[int, int]], lo: int) -> torch.Tensor:
        """The stack on input rows from `lo` on, each stage cropped to the recorded size less the rows above."""
        sizes, scale = iter(sizes), 1
        for i, c in enumerate(self.convs):
            x = c(x)
            if c.stride[0] == 2:
                scale *= c.stride[0]
                h, w = next(sizes)
                x = x[..., :h - lo * scale, :w]
            if i < len(self.acts):
                x = self.acts[i](x)
        return x
