"""uint8 pixels <-> float tensors: `to_tensor` gives v / 255; `to_pixels` is THE rounding rule from model output
to 8-bit, round(clamp(x, 0, 1) * 255), rounding halves to even (torch.round), the rule `resample.resize`
quantizes with."""
from __future__ import annotations

import numpy as np
import torch

from .imageio import check_pixels


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) in [0, 1], v / 255."""
    check_pixels(pixels)
    return torch.from_numpy(np.array(pixels.transpose(2, 0, 1), dtype=np.float32, order="C")).div_(255).unsqueeze(0)


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float -> uint8 (H, W, 3) by THE rounding rule, round(clamp(x, 0, 1) * 255).

    Halves round to even (torch.round). NaN is refused rather than written as an arbitrary level.
    """
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3 or not x.is_floating_point():
        raise ValueError(f"expected a float (1, 3, H, W) or (3, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    x = x.detach().cpu()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if torch.isnan(torch.aminmax(x).min):  # aminmax propagates NaN: one pass, nothing of the image's size
        raise ValueError("tensor has NaN values")
    return x.clamp(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def output_mse(x_hat: torch.Tensor, target: torch.Tensor) -> float:
    """MSE of a reconstruction as a decoder outputs it (clamped to [0, 1]; the 8-bit rounding left out): what the
    encoder's choices between codings (layer modes, byte targets) weigh."""
    return float(torch.mean((x_hat.clamp(0, 1) - target) ** 2))


def all_finite(x: torch.Tensor) -> bool:
    """Whether every value is finite, in one pass and without a mask of the image's size (aminmax propagates NaN)."""
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) and torch.isfinite(hi))
