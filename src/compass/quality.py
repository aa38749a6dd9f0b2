"""The one quality mapping: q in [0, 1] -> lambda, q -> gain-unit interpolation weights, and the cost lambda weighs.

Training and coding both read it from here, so a q written into a file always means the same rate point.
"""
from __future__ import annotations

import torch

LAMBDA_MIN = 0.0018
LAMBDA_MAX = 0.0483


def q_to_lambda(q, lambda_range: tuple[float, float] = (LAMBDA_MIN, LAMBDA_MAX)):
    """Log-linear map from q (float or tensor) to the RD trade-off lambda of the loss R + lambda * 255^2 * MSE.

    `lambda_range` is a codec's (CodecConfig.lambda_range): the shipped cpu models use the default; a model
    trained for higher qualities widens it. Only training and encoder-side refinement read lambda, so a file
    still means what its model was trained for."""
    lo, hi = lambda_range
    return lo * (hi / lo) ** q


def rd_cost(bpp, mse, q, lambda_range: tuple[float, float] = (LAMBDA_MIN, LAMBDA_MAX)):
    """The rate-distortion cost every codec is trained and refined for: R + lambda(q) * 255^2 * MSE, with R in bits
    per pixel and MSE of images in [0, 1] (floats, or tensors of matching shapes)."""
    return bpp + q_to_lambda(q, lambda_range) * 255**2 * mse


def interpolate_log_gains(log_gains: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Gains for qualities q (shape (B,)) from per-level log-gains (shape (L, C)): (B, C, 1, 1).

    Levels sit at q = l / (L - 1); between two levels the gains are interpolated geometrically
    (linear in the log domain), as in Cui et al. (CVPR 2021).
    """
    levels = log_gains.shape[0]
    pos = q.to(log_gains.dtype).clamp(0, 1) * (levels - 1)
    lo = pos.floor().clamp(max=levels - 2).long()
    t = (pos - lo.to(pos.dtype)).unsqueeze(1)
    g = log_gains[lo] * (1 - t) + log_gains[lo + 1] * t
    return g.exp()[:, :, None, None]
