"""The one resampler (antialiased bicubic) and the layer-size plan.

Every layer image I^k is the input downscaled directly to (H^k, W^k) with `resize`; training and coding
share it. It is torch's antialiased bicubic (a = -0.5, the kernel Pillow uses for RGB), computed in float and
rounded to 8 bits, so a lower layer is exactly the rendition a server would otherwise store.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .limits import MAX_LAYERS, MIN_LAYER_SIDE


def resize(x: torch.Tensor, size: tuple[int, int], quantize: bool = True) -> torch.Tensor:
    """Resize (B, C, H, W) in [0, 1] to `size` with antialiased bicubic; rounds to 8-bit levels by default."""
    if tuple(x.shape[-2:]) == tuple(size):
        y = x
    else:
        y = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return torch.round(y * 255) / 255 if quantize else y


def upsample_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Plain bicubic interpolation (the predictor of the no-LIFF ablation); not clamped, not quantized."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


def upsample_bicubic_pil(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic upsampling with Pillow's kernel (a = -0.5, that of `resize`); not clamped, not quantized.

    torch's antialiased kernel, which for upsampling is the plain kernel: it runs separably, about 3x faster on CPU
    than `upsample_bicubic` (a = -0.75). For sizes that grow or stay (a size that stays is copied exactly).
    """
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def pyramid(x: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Layer images I^0..I^K, each downscaled directly from x (the top size may equal x's own)."""
    return [resize(x, s) for s in sizes]


def plan_from_fractions(height: int, width: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """Layer sizes from fractions of the input size (e.g. 0.25, 0.5, 1), each in (0, 1]."""
    for f in fractions:
        if not (math.isfinite(f) and 0 < f <= 1):
            raise ValueError(f"layer fractions must be in (0, 1], got {f}")
    return check_plan([(max(1, round(height * f)), max(1, round(width * f))) for f in fractions], height, width)


def plan_from_scales(height: int, width: int, scales: Sequence[float | tuple[float, float]]) -> list[tuple[int, int]]:
    """Layer sizes from factors between adjacent layers (each finite and at least 1), the top layer being the
    input size.

    A factor may be a pair (vertical, horizontal). E.g. scales (1.6, 2.4) on 768x512 -> 3 layers.
    """
    sizes = [(height, width)]
    for s in reversed(list(scales)):
        sy, sx = (s, s) if isinstance(s, (int, float)) else s
        if not all(math.isfinite(f) and f >= 1 for f in (sy, sx)):
            raise ValueError(f"scale factors must be finite and at least 1, got {s}")
        h, w = sizes[0]
        sizes.insert(0, (max(1, round(h / sy)), max(1, round(w / sx))))
    return check_plan(sizes, height, width)


def plan_from_widths(height: int, width: int, widths: Sequence[int]) -> list[tuple[int, int]]:
    """Layer sizes from layer widths in pixels, heights keeping the aspect ratio, the top layer being the input:
    widths at or above the input's are dropped, so one list of breakpoints fits images of any size."""
    below = sorted({int(w) for w in widths if 1 <= int(w) < width})
    return check_plan([(max(1, round(height * w / width)), w) for w in below] + [(height, width)], height, width)


def check_plan(sizes: list[tuple[int, int]], height: int, width: int) -> list[tuple[int, int]]:
    """Refuse plans of no layer or over `MAX_LAYERS`, with sizes that shrink from one layer to the next, exceed the
    input, or fall under `MIN_LAYER_SIDE` (or the input's side where that is smaller); returns `sizes`."""
    if not 1 <= len(sizes) <= MAX_LAYERS:
        raise ValueError(f"a file holds 1 to {MAX_LAYERS} layers, got {len(sizes)}")
    low_h, low_w = min(MIN_LAYER_SIDE, height), min(MIN_LAYER_SIDE, width)
    for h, w in sizes:  # messages in width x height, as sizes are written on the command line
        if h > height or w > width:
            raise ValueError(f"layer {w}x{h} is larger than the {width}x{height} input")
        if h < low_h or w < low_w:
            raise ValueError(f"layer {w}x{h} is under the smallest layer size, {low_w}x{low_h} (width x height)")
    for a, b in zip(sizes, sizes[1:]):
        if b[0] < a[0] or b[1] < a[1]:
            raise ValueError(f"layer sizes must not shrink: {sizes}")
    return sizes
