"""LIFF, the Local Implicit Filter Function: inter-layer prediction at any scale factor.

Stages (COMPASS, ICCV 2023): an RDN feature extractor on the lower-layer reconstruction; 3x3 feature unfolding;
for every target pixel the nearest source feature, its local grid offset r and the scale token s; an MLP that
turns [unfolded feature | r | s] into a per-pixel (9C x 3) filter; prediction = unfolded feature @ filter.
With `LiffConfig.skip` the prediction is bicubic upsampling plus that filter product (a learned correction).

Feature extraction (`features`) is split from coordinate queries (`query`). The MLP's first layer and the final
filter product are linear in the unfolded feature, which is the same for every target pixel mapped to one source
pixel, so those parts are computed once per SOURCE pixel and gathered; only the hidden layers run per target
pixel. This is exact algebra, not an approximation: `direct_query`, the method as written, is the reference that
the tests and `compass bench` compare it with.

Memory is bounded at any output size: source parts are computed in fixed blocks of source rows, a chunked query
holds one block's parts at a time and queries its targets in bands of rows, and large inputs run the RDN in row
stripes with a halo as wide as its receptive field. Chunked queries equal one-pass ones, and striped RDN features
whole-image ones, to the bit (tests check equality, not closeness).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import one_thread, row_stripes
from .resample import upsample_bicubic, upsample_bicubic_pil

SKIP_UPSAMPLERS = {"bicubic": upsample_bicubic, "bicubic-pil": upsample_bicubic_pil}


@dataclass(frozen=True)
class LiffConfig:
    """Widths: feature C, RDN blocks x convs with growth G, and the MLP's hidden widths (the sizes are the
    recipes', `compass.models.sizes`).

    `skip`: predict bicubic upsampling plus the filter product, which then learns only a correction (its last
    layer starts at zero, so an untrained model predicts exactly bicubic). The method predicts with the filter
    product alone; the skip lets much narrower widths beat bicubic (docs/performance.md).

    `skip_upsampler`: the upsampling under the correction: "bicubic" (torch's, a = -0.75) or "bicubic-pil"
    (Pillow's, a = -0.5, the pyramid's kernel; about 3x faster on CPU).

    `unfold`: side of the feature neighbourhood the filter acts on, 3 as in the method (3x3 unfolding) or 1 (the
    nearest source feature alone; the RDN's receptive field still gives context): a ninth of the per-source
    projection, for light predictors.
    """

    feat: int
    blocks: int
    convs: int
    growth: int
    hidden: tuple[int, ...]
    skip: bool = False
    skip_upsampler: str = "bicubic"
    unfold: int = 3

    def __post_init__(self):
        if self.unfold not in (1, 3):
            raise ValueError(f"LIFF unfold must be 1 or 3, not {self.unfold}")
        if self.skip_upsampler not in SKIP_UPSAMPLERS:
            raise ValueError(f"LIFF skip_upsampler must be one of {', '.join(SKIP_UPSAMPLERS)}, not "
                             f"{self.skip_upsampler!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LiffConfig":
        return cls(**{**d, "hidden": tuple(d["hidden"])})


class _DenseBlock(nn.Module):
    """Residual dense block: densely connected 3x3 convs, 1x1 local fusion, local residual."""

    def __init__(self, channels: int, growth: int, convs: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels + i * growth, growth, 3, padding=1) for i in range(convs))
        self.fuse = nn.Conv2d(channels + convs * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for c in self.convs:
            feats.append(c(_cat(feats)).relu_())  # in place: a fresh tensor
        return x + self.fuse(_cat(feats))


def _cat(tensors: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Concatenation (of channels by default) that does not copy a lone tensor."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


class RDN(nn.Module):
    """Residual dense network without an upsampling tail (the feature extractor of LIFF)."""

    def __init__(self, cfg: LiffConfig):
        super().__init__()
        c = cfg.feat
        self.sfe1 = nn.Conv2d(3, c, 3, padding=1)
        self.sfe2 = nn.Conv2d(c, c, 3, padding=1)
        self.blocks = nn.ModuleList(_DenseBlock(c, cfg.growth, cfg.convs) for _ in range(cfg.blocks))
        self.gff = nn.Sequential(nn.Conv2d(cfg.blocks * c, c, 1), nn.Conv2d(c, c, 3, padding=1))
        self.halo = 3 + cfg.blocks * cfg.convs  # 3x3 convolutions in a row: the receptive field's radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.sfe1(x)
        h = self.sfe2(f1)
        outs = []
        for b in self.blocks:
            h = b(h)
            outs.append(h)
        return f1 + self.gff(_cat(outs))


def source_index(dst: int, src: int, device=None) -> torch.Tensor:
    """Nearest source pixel of each target pixel centre along one axis (exact integer arithmetic)."""
    i = torch.arange(dst, device=device)
    return torch.div((2 * i + 1) * src, 2 * dst, rounding_mode="floor").clamp(max=src - 1)


def local_grid(dst: int, src: int, device=None) -> torch.Tensor:
    """Offset of each target centre to its source centre, in source-pixel units (LIIF's rel_coord * size)."""
    i = torch.arange(dst, device=device, dtype=torch.float64)
    p = -1 + (2 * i + 1) / dst
    ps = -1 + (2 * source_index(dst, src, device).double() + 1) / src
    return ((p - ps) * src).float()


RDN_STRIPE = 1 << 19  # source pixels per RDN stripe; smaller inputs run whole
PARTS_BLOCK = 1 << 14  # source pixels per block of source parts


def source_blocks(h: int, w: int) -> list[tuple[int, int]]:
    """Row ranges of the blocks in which a (h, w) feature map's source parts are computed: equal heights, each
    about PARTS_BLOCK pixels (whole rows), one block for maps up to that size."""
    count = -(-h * w // PARTS_BLOCK)
    rows = -(-h // count)
    return [(r, min(h, r + rows)) for r in range(0, h, rows)]


class LIFF(nn.Module):
    """Arbitrary-scale predictor of layer k from the reconstruction of layer k-1."""

    def __init__(self, cfg: LiffConfig):
        super().__init__()
        self.config = cfg
        self.rdn = RDN(cfg)
        d = cfg.unfold**2 * cfg.feat
        widths = (d + 4, *cfg.hidden, 3 * d)
        # the filter MLP; its name is in the state dict of every shipped weights file, so it stays "layers"
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        if cfg.skip:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    @property
    def unfolded_width(self) -> int:
        return self.config.unfold**2 * self.config.feat

    def _split_first(self):
        w = self.layers[0].weight
        d = self.unfolded_width
        return w[:, :d], w[:, d:], self.layers[0].bias

    def _split_last(self):
        """Last layer as (3, hidden, d) weights and (3, d) bias: filter row m, colour c = weight[(m, c)]."""
        last = self.layers[-1]
        d = self.unfolded_width
        w = last.weight.view(d, 3, -1).permute(1, 2, 0)
        b = last.bias.view(d, 3).t()
        return w, b

    def features(self, x: torch.Tensor, stripe: int | None = RDN_STRIPE) -> torch.Tensor:
        """RDN features of the normalized image: (B, C, h, w).

        Inputs above `stripe` pixels run in row stripes of about that size, each with `rdn.halo` rows of context
        on either side: every kept row sees exactly the inputs it sees in a whole-image pass.
        """
        x = x.contiguous(memory_format=torch.channels_last).sub(0.5).mul_(2)  # oneDNN's fastest layout here
        b, _, h, w = x.shape
        with self._serial():
            if stripe is None or h * w <= stripe:
                return self.rdn(x)
            f = torch.empty(b, self.config.feat, h, w, dtype=x.dtype, device=x.device,
                            memory_format=torch.channels_last)
            for r0, r1, lo, hi in row_stripes(h, h * w, stripe, self.rdn.halo):
                f[:, :, r0:r1] = self.rdn(x[:, :, lo:hi])[:, :, r0 - lo:r1 - lo]
        return f

    def _serial(self):
        """Convolutions at inference run on one thread (layers.one_thread: the same floats whatever the thread
        count); training keeps every thread."""
        return contextlib.nullcontext() if self.training else one_thread()

    def projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-source projection (weight, bias) of `source_parts`, built once per query: its k = hidden0 +
        3 * hidden_last + 3 outputs are the first layer's pre-activation without the r, s terms; then G
        (3 x hidden_last), the unfolded feature contracted with the last layer's weight; then beta (3), contracted
        with its bias. G and beta carry the filter product's factor 1/2 (exact: a power of two).

        With 3x3 unfolding the weight is a 3x3 convolution kernel (unfold's channel order is (C, 3, 3)) in
        channels-last layout; without, a (k, C) matrix.
        """
        w1, _, b1 = self._split_first()
        wl, bl = self._split_last()
        proj = torch.cat([w1, 0.5 * wl.reshape(-1, wl.shape[-1]), 0.5 * bl], 0)
        bias = torch.cat([b1, torch.zeros(proj.shape[0] - b1.shape[0], device=b1.device, dtype=b1.dtype)])
        if self.config.unfold == 3:
            proj = proj.view(proj.shape[0], -1, 3, 3).contiguous(memory_format=torch.channels_last)
        return proj, bias

    def source_parts(self, f: torch.Tensor, projection: tuple[torch.Tensor, torch.Tensor], r0: int,
                     r1: int) -> torch.Tensor:
        """Per-source-pixel parts of the MLP for feature rows r0..r1-1 by `projection()`, channels last:
        (B, rows, w, k). Pixels outside the image unfold as zeros, as in a whole-image unfold.

        A projection of the 3x3-unfolded feature is a 3x3 convolution; in channels-last layout it is about twice
        as fast as unfold + matrix product. Without unfolding it is a matrix product on the channels-last feature.
        """
        proj, bias = projection
        if self.config.unfold == 1:
            with self._serial():
                return F.linear(f[:, :, r0:r1].permute(0, 2, 3, 1), proj, bias)
        h = f.shape[2]
        lo, hi = max(0, r0 - 1), min(h, r1 + 1)
        rows = F.pad(f[:, :, lo:hi], (1, 1, lo - (r0 - 1), r1 + 1 - hi))
        with self._serial():  # channels last: the layout the parts are used in, and oneDNN's fast path
            parts = F.conv2d(rows.contiguous(memory_format=torch.channels_last), proj, bias)
        return parts.permute(0, 2, 3, 1)

    def query(self, f: torch.Tensor, size: tuple[int, int], chunk: int | None = None) -> torch.Tensor:
        """The filter product at `size` from `features(x)`: the prediction, or with `skip` the correction added
        to bicubic upsampling. `chunk` bounds the target pixels per MLP pass.

        Source parts are computed in fixed blocks of source rows (`source_blocks`, set by the feature size alone),
        whatever `chunk`, so chunked and one-pass queries make the same calls and give the same floats. With a
        chunk, each block's targets are queried in bands of rows while only that block's parts are held: memory
        follows `chunk` and the block size, not the image size.
        """
        b, _, h, w = f.shape
        H, W = size
        dev = f.device
        iy, ix = source_index(H, h, dev), source_index(W, w, dev)
        _, wrs, _ = self._split_first()
        # first-layer terms of the local grid and scale token; separable in (row, column)
        row = local_grid(H, h, dev)[:, None] * wrs[:, 0]
        col = local_grid(W, w, dev)[:, None] * wrs[:, 1] + wrs[:, 2] * (2 * h / H) + wrs[:, 3] * (2 * w / W)
        h0 = self.layers[0].out_features
        hl = self.layers[-1].in_features

        def mlp(parts: torch.Tensor, s0: int, r0: int, r1: int, dest: torch.Tensor | None = None) -> torch.Tensor:
            """Target rows r0..r1-1 from the parts of source rows s0.. (channels last), written into `dest` if given
            (without a copy where it can: no autograd, a contiguous band)."""
            idx = ((iy[r0:r1, None] - s0) * w + ix[None, :]).reshape(-1)
            g = parts.reshape(b, -1, parts.shape[-1]).index_select(1, idx).view(b, r1 - r0, W, -1)
            first, G, beta = g.split([h0, 3 * hl, 3], -1)  # split: one allocation in backward, not three
            a = torch.add(first, row[r0:r1, None, :]).add_(col).relu_()  # in place: the sum is a fresh tensor
            for layer in self.layers[1:-1]:
                a = layer(a).relu_()
            # a batch of beta + (3 x hl) @ hl products; 3-D views keep baddbmm from copying G (a strided slice)
            args = beta.reshape(-1, 3, 1), G.reshape(-1, 3, hl), a.reshape(-1, hl, 1)
            if dest is not None and dest.is_contiguous() and not torch.is_grad_enabled():
                return torch.baddbmm(*args, out=dest.view(-1, 3, 1))
            res = torch.baddbmm(*args).view(beta.shape)
            return res if dest is None else dest.copy_(res)

        blocks, projection = source_blocks(h, w), self.projection()
        if chunk is None:
            out = mlp(_cat([self.source_parts(f, projection, s0, s1) for s0, s1 in blocks], 1), 0, 0, H)
        else:
            out = f.new_empty(b, H, W, 3)
            for s0, s1 in blocks:
                t0, t1 = (int(t) for t in torch.searchsorted(iy, torch.tensor([s0, s1], device=dev)))
                if t0 == t1:
                    continue
                parts = self.source_parts(f, projection, s0, s1)
                bands = -(-(t1 - t0) * W // chunk)
                rows = -(-(t1 - t0) // bands)  # equal bands of at most about `chunk` pixels
                for r in range(t0, t1, rows):
                    mlp(parts, s0, r, min(t1, r + rows), out[:, r:min(t1, r + rows)])
        out = out.permute(0, 3, 1, 2)
        return out + self._offset if self._offset else out

    @property
    def _offset(self) -> float:
        """The filter product works in [-1, 1] units; without skip it is the image, with skip a correction."""
        return 0.0 if self.config.skip else 0.5

    def forward(self, x: torch.Tensor, size: tuple[int, int], chunk: int | None = None) -> torch.Tensor:
        """Prediction of `x` upsampled to `size`."""
        out = self.query(self.features(x), size, chunk)
        # the upsampling is a fresh tensor: the sum goes into it (a + b == b + a exactly)
        return SKIP_UPSAMPLERS[self.config.skip_upsampler](x, size).add_(out) if self.config.skip else out


def direct_query(m: LIFF, f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference: LIFF as the method writes it, evaluated per TARGET pixel, from RDN features `f`.

    For every target pixel: MLP([unfolded nearest source feature | r | s]) -> a (9C x 3) filter, prediction =
    feature @ filter. `LIFF.query` must equal it up to float rounding; tests and `compass bench` (speed, multiply-
    adds) compare the two. Memory grows with H * W * 27C: for small sizes only.
    """
    H, W = size
    b, c, h, w = f.shape
    k = m.config.unfold
    u = F.unfold(f, k, padding=k // 2).view(b, k * k * c, h, w)
    feat = u[:, :, source_index(H, h, f.device)][:, :, :, source_index(W, w, f.device)].permute(0, 2, 3, 1)
    grid = torch.meshgrid(local_grid(H, h, f.device), local_grid(W, w, f.device), indexing="ij")
    r = torch.stack(grid, -1).to(f.dtype)
    s = torch.tensor([2 * h / H, 2 * w / W], dtype=f.dtype, device=f.device).expand(H, W, 2)
    a = torch.cat([feat, r.expand(b, H, W, 2), s.expand(b, H, W, 2)], -1)
    for layer in m.layers[:-1]:
        a = F.relu(layer(a))
    filt = m.layers[-1](a).view(b, H, W, k * k * c, 3)
    return m._offset + 0.5 * torch.einsum("bhwd,bhwdc->bchw", feat, filt)
