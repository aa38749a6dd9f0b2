"""Image quality metrics on RGB numpy arrays in [0, 1].

Every function takes two float arrays of the same shape HxWxC (C = 3 for RGB; HxW is read as one channel) with
values in [0, 1], e.g. `to_float(uint8_image)`. Integer arrays are refused rather than guessed at, so a 0..255
image can never be scored as if it were 0..1.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 image -> float64 in [0, 1]."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return image.astype(np.float64) / 255.0


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    for x in (a, b):
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"expected float images in [0, 1], got {x.dtype} (use to_float)")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3 or a.size == 0:
        raise ValueError(f"expected HxWxC or HxW images, got shape {a.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a, b) -> float:
    """PSNR in dB with peak 1, from the MSE over all pixels and channels (RGB PSNR); inf when a == b exactly."""
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """`psnr` of two uint8 images (8-bit pixels as decoded or stored)."""
    return psnr(to_float(a), to_float(b))


def ms_ssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales an image supports: at most 5, while the smallest scale still holds an 11x11 window.

    Each scale halves the size (2x2 mean, an odd last row/column dropped), so all 5 scales need a shorter side of
    at least 176 px; a smaller image uses fewer scales. Below 11 px there is no valid window and this returns 0.
    """
    scales = 0
    side = min(height, width)
    while scales < len(MS_SSIM_WEIGHTS) and side >= WINDOW_SIZE:
        scales += 1
        side //= 2
    return scales


def _window(dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(WINDOW_SIZE, dtype=dtype) - (WINDOW_SIZE - 1) / 2
    g = torch.exp(-(x**2) / (2 * WINDOW_SIGMA**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' region only (no padding), channel by channel: (C, 1, H, W)."""
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean luminance term l and mean contrast-structure term cs (data range 1)."""
    c1, c2 = _K1**2, _K2**2
    mx, my = _blur(x, g), _blur(y, g)
    vx = _blur(x * x, g) - mx * mx
    vy = _blur(y * y, g) - my * my
    cov = _blur(x * y, g) - mx * my
    cs = (2 * cov + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ms_ssim(a, b) -> float:
    """Multi-scale SSIM (Wang, Simoncelli and Bovik 2003), computed per channel, then averaged over channels.

    Gaussian window 11 / sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, 'valid' filtering, 2x2 mean pooling
    between scales, weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Images whose shorter side is under 176 px
    use fewer scales (`ms_ssim_scales`), keeping the first weights renormalised to sum to 1; under 11 px they
    are refused with ValueError. Negative per-scale terms are clipped to 0 before the fractional powers, so a
    badly decorrelated pair scores 0 rather than NaN.
    """
    a, b = _pair(a, b)
    h, w, _ = a.shape
    scales = ms_ssim_scales(h, w)
    if scales == 0:
        raise ValueError(f"MS-SSIM needs images of at least {WINDOW_SIZE}x{WINDOW_SIZE} pixels, got {h}x{w}")
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    weights = weights / weights.sum()
    g = _window(torch.float64)
    x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[:, None]
    y = torch.from_numpy(np.ascontiguousarray(b.transpose(2, 0, 1)))[:, None]
    terms = []
    for s in range(scales):
        if s > 0:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        ssim, cs = _ssim_terms(x, y, g)
        terms.append(ssim if s == scales - 1 else cs)
    values = torch.stack(terms).clamp(min=0)  # (scales, C)
    per_channel = torch.prod(values ** weights[:, None], dim=0)
    return float(per_channel.mean())
