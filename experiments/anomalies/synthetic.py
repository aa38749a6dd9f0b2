"""Synthetic test images for the rate-distortion anomalies (docs/prediction.md): deterministic, no data needed.

gradient: a smooth two-axis colour gradient (a clear sky); sky: the same with a few sharp-edged saturated
ellipses (balloons against the sky); bokeh: a dark smooth background with large blurred bright discs.
All are float (1, 3, H, W) in [0, 1], rounded to 8-bit levels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _grid(h: int, w: int):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return yy, xx


def gradient(h: int = 512, w: int = 768) -> torch.Tensor:
    yy, xx = _grid(h, w)
    r = 0.35 + 0.30 * yy + 0.05 * xx
    g = 0.55 + 0.25 * yy - 0.05 * xx
    b = 0.85 + 0.08 * yy - 0.10 * xx
    return _q(torch.stack([r, g, b])[None])


def sky(h: int = 512, w: int = 768) -> torch.Tensor:
    x = gradient(h, w)
    yy, xx = _grid(h, w)
    for cy, cx, rad, col in ((0.30, 0.25, 0.16, (0.95, 0.30, 0.20)), (0.55, 0.62, 0.20, (0.98, 0.85, 0.15)),
                             (0.72, 0.18, 0.08, (0.20, 0.75, 0.30)), (0.25, 0.82, 0.10, (0.55, 0.25, 0.80))):
        inside = ((yy - cy) * h) ** 2 + ((xx - cx) * w) ** 2 < (rad * h) ** 2  # discs of radius rad * h
        shade = 1.0 - 0.25 * (yy - cy + rad) / (2 * rad)  # a soft vertical shading on every balloon
        for c in range(3):
            x[0, c][inside] = (col[c] * shade)[inside]
    return _q(x)


def bokeh(h: int = 512, w: int = 768) -> torch.Tensor:
    yy, xx = _grid(h, w)
    base = torch.stack([0.10 + 0.10 * xx, 0.12 + 0.08 * yy, 0.08 + 0.05 * xx * yy])[None]
    disc = torch.zeros(1, 3, h, w)
    gen = torch.Generator().manual_seed(7)
    for _ in range(14):
        cy, cx = torch.rand(2, generator=gen).tolist()
        rad = 0.04 + 0.08 * torch.rand(1, generator=gen).item()
        col = 0.3 + 0.6 * torch.rand(3, generator=gen)
        inside = (((yy - cy) * h) ** 2 + ((xx - cx) * w) ** 2).sqrt() < rad * h
        disc[0] = torch.maximum(disc[0], inside.float()[None] * col[:, None, None])
    k = 31
    t = torch.arange(k) - k // 2
    g1 = torch.exp(-(t.float() ** 2) / (2 * 6.0 ** 2))
    g1 = g1 / g1.sum()
    blur = F.conv2d(F.pad(disc, (k // 2,) * 4, mode="replicate"), g1.view(1, 1, 1, k).repeat(3, 1, 1, 1), groups=3)
    blur = F.conv2d(blur, g1.view(1, 1, k, 1).repeat(3, 1, 1, 1), groups=3)
    return _q(base + blur)


def _q(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


IMAGES = {"gradient": gradient, "sky": sky, "bokeh": bokeh}
