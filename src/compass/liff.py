"""LIFF, the Local Implicit Filter Function: inter-layer prediction at any scale factor.

Stages (COMPASS, ICCV 2023): an RDN feature extractor on the lower-layer reconstruction; 3x3 feature unfolding;
for every target pixel the nearest source feature, its local grid offset r and the scale token s; an MLP that
turns [unfolded feature | r | s] into a per-pixel (9C x 3) filter; prediction = unfolded feature @ filter.

Feature extraction (`features`) is split from coordinate queries (`query`), and queries run in chunks, so any
output size runs in bounded memory. The MLP's first layer and the final filter product are linear in the
unfolded feature, which is the same for every target pixel mapped to one source pixel, so those parts are
computed once per SOURCE pixel and gathered (`features` returns them); only the hidden layers run per target
pixel. This is exact algebra, not an approximation (tests compare it with the direct formulation).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LiffConfig:
    """Widths: feature C, RDN blocks x convs with growth G, and the MLP's hidden widths."""

    feat: int = 64
    blocks: int = 4
    convs: int = 4
    growth: int = 32
    hidden: tuple[int, ...] = (256, 256, 256, 256)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LiffConfig":
        return cls(**{**d, "hidden": tuple(d["hidden"])})


LIFF_SIZES = {
    "paper": LiffConfig(),
    "cpu": LiffConfig(feat=32, blocks=3, convs=3, growth=16, hidden=(64, 64, 64)),
    "tiny": LiffConfig(feat=8, blocks=1, convs=2, growth=4, hidden=(16, 16)),
}


class _DenseBlock(nn.Module):
    """Residual dense block: densely connected 3x3 convs, 1x1 local fusion, local residual."""

    def __init__(self, channels: int, growth: int, convs: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels + i * growth, growth, 3, padding=1) for i in range(convs))
        self.fuse = nn.Conv2d(channels + convs * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for c in self.convs:
            feats.append(F.relu(c(torch.cat(feats, 1))))
        return x + self.fuse(torch.cat(feats, 1))


class RDN(nn.Module):
    """Residual dense network without an upsampling tail (the feature extractor of LIFF)."""

    def __init__(self, cfg: LiffConfig):
        super().__init__()
        c = cfg.feat
        self.sfe1 = nn.Conv2d(3, c, 3, padding=1)
        self.sfe2 = nn.Conv2d(c, c, 3, padding=1)
        self.blocks = nn.ModuleList(_DenseBlock(c, cfg.growth, cfg.convs) for _ in range(cfg.blocks))
        self.gff = nn.Sequential(nn.Conv2d(cfg.blocks * c, c, 1), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.sfe1(x)
        h = self.sfe2(f1)
        outs = []
        for b in self.blocks:
            h = b(h)
            outs.append(h)
        return f1 + self.gff(torch.cat(outs, 1))


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


class LIFF(nn.Module):
    """Arbitrary-scale predictor of layer k from the reconstruction of layer k-1."""

    def __init__(self, cfg: LiffConfig = LiffConfig()):
        super().__init__()
        self.config = cfg
        self.rdn = RDN(cfg)
        d = 9 * cfg.feat
        widths = (d + 4, *cfg.hidden, 3 * d)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    @property
    def unfolded_width(self) -> int:
        return 9 * self.config.feat

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

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """RDN features of the normalized image, unfolded over 3x3 neighbourhoods: (B, 9C, h, w)."""
        f = self.rdn((x - 0.5) / 0.5)
        b, c, h, w = f.shape
        return F.unfold(f, 3, padding=1).view(b, c * 9, h, w)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-source-pixel parts of the MLP, channels last: (B, h, w, hidden0 + 3*hidden_last + 3).

        Channels: first-layer pre-activation (without the r, s terms); then G (3 x hidden_last), the unfolded
        feature contracted with the last layer's weight; then beta (3), contracted with its bias.
        """
        u = self.unfold(x)
        w1, _, b1 = self._split_first()
        wl, bl = self._split_last()
        proj = torch.cat([w1, wl.reshape(-1, wl.shape[-1]), bl], 0)
        bias = torch.cat([b1, torch.zeros(proj.shape[0] - b1.shape[0], device=b1.device, dtype=b1.dtype)])
        return F.linear(u.permute(0, 2, 3, 1), proj, bias)

    def query(self, feats: torch.Tensor, size: tuple[int, int], chunk: int | None = None) -> torch.Tensor:
        """Predict (B, 3, H, W) at `size` from `features(x)`; `chunk` bounds the target pixels per MLP pass."""
        b, h, w, k = feats.shape
        H, W = size
        dev = feats.device
        iy, ix = source_index(H, h, dev), source_index(W, w, dev)
        _, wrs, _ = self._split_first()
        # first-layer terms of the local grid and scale token; separable in (row, column)
        row = local_grid(H, h, dev)[:, None] * wrs[:, 0]
        col = local_grid(W, w, dev)[:, None] * wrs[:, 1] + wrs[:, 2] * (2 * h / H) + wrs[:, 3] * (2 * w / W)
        h0 = self.layers[0].out_features
        hl = self.layers[-1].in_features
        flat = feats.reshape(b, h * w, k)
        step = H if chunk is None else max(1, chunk // W)
        out = []
        for r in range(0, H, step):
            rows = iy[r:r + step]
            idx = (rows[:, None] * w + ix[None, :]).reshape(-1)
            g = flat.index_select(1, idx).view(b, rows.numel(), W, k)  # nearest source parts per target pixel
            first, G, beta = g.split([h0, 3 * hl, 3], -1)  # split: one allocation in backward, not three
            a = F.relu(first + row[r:r + step, None, :] + col)
            for layer in self.layers[1:-1]:
                a = F.relu(layer(a))
            out.append((G.unflatten(-1, (3, hl)) * a.unsqueeze(-2)).sum(-1) + beta)
        return 0.5 + 0.5 * torch.cat(out, 1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, size: tuple[int, int], chunk: int | None = None) -> torch.Tensor:
        return self.query(self.features(x), size, chunk)
