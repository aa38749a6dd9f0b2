"""Bjontegaard deltas (BD-rate, BD-PSNR) between two rate-distortion curves, PCHIP interpolation.

Argument order everywhere: the TEST curve first, the ANCHOR second. BD-rate < 0 means the test method needs
fewer bits than the anchor for the same quality; BD-PSNR > 0 means it reaches a higher quality at the same rate.
Points may come in any order. When a delta cannot be computed (too few points, non-positive or non-finite
values, repeated qualities, or no overlap), the functions return NaN and warn with the reason; `bd_problem`
returns that reason for callers that want to print it.
"""
from __future__ import annotations

import math
import warnings

import bjontegaard
import numpy as np


class BDWarning(UserWarning):
    """A BD value came out NaN; the message says why."""


def _curve(rate, quality) -> tuple[np.ndarray, np.ndarray]:
    rate = np.asarray(rate, dtype=np.float64).ravel()
    quality = np.asarray(quality, dtype=np.float64).ravel()
    if rate.shape != quality.shape:
        raise ValueError(f"{rate.size} rates but {quality.size} quality values")
    return rate, quality


def _problem(rate_test, q_test, rate_anchor, q_anchor, along: str) -> str | None:
    for name, rate, q in (("test", rate_test, q_test), ("anchor", rate_anchor, q_anchor)):
        if rate.size < 2:
            return f"the {name} curve has {rate.size} point(s), at least 2 are needed"
        if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(q))):
            return f"the {name} curve has a non-finite value (e.g. an infinite PSNR of a lossless point)"
        if np.any(rate <= 0):
            return f"the {name} curve has a rate <= 0"
        axis = q if along == "quality" else rate
        if np.unique(axis).size != axis.size:
            return f"the {name} curve repeats a {along} value, so it is not a function of it"
    axis_t, axis_a = (q_test, q_anchor) if along == "quality" else (rate_test, rate_anchor)
    lo, hi = max(axis_t.min(), axis_a.min()), min(axis_t.max(), axis_a.max())
    if hi <= lo:
        return (f"the curves do not overlap in {along}: test [{axis_t.min():.4g}, {axis_t.max():.4g}], "
                f"anchor [{axis_a.min():.4g}, {axis_a.max():.4g}]")
    return None


def bd_problem(rate_test, psnr_test, rate_anchor, psnr_anchor, metric: str = "rate") -> str | None:
    """Why `bd_rate` (metric="rate") or `bd_psnr` (metric="psnr") would be NaN for these curves; None if not."""
    if metric not in ("rate", "psnr"):
        raise ValueError(f"metric must be 'rate' or 'psnr', got {metric!r}")
    rt, qt = _curve(rate_test, psnr_test)
    ra, qa = _curve(rate_anchor, psnr_anchor)
    return _problem(rt, qt, ra, qa, "quality" if metric == "rate" else "rate")


def _delta(fn, rate_test, psnr_test, rate_anchor, psnr_anchor, along: str) -> float:
    rt, qt = _curve(rate_test, psnr_test)
    ra, qa = _curve(rate_anchor, psnr_anchor)
    reason = _problem(rt, qt, ra, qa, along)
    if reason is not None:
        warnings.warn(reason, BDWarning, stacklevel=3)
        return math.nan
    # The package integrates over the overlap only; it wants each curve ascending along its integration axis.
    ot = np.argsort(qt if along == "quality" else rt)
    oa = np.argsort(qa if along == "quality" else ra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its partial-overlap warning: the overlap rule is ours (any overlap)
        return float(fn(ra[oa], qa[oa], rt[ot], qt[ot], method="pchip", require_matching_points=False, min_overlap=0))


def bd_rate(rate_test, psnr_test, rate_anchor, psnr_anchor) -> float:
    """Average rate difference of test vs anchor in percent at equal quality (negative: test needs fewer bits).

    Integrates log-rate as a PCHIP function of quality over the quality range both curves cover. Any rate unit
    works (bpp, bytes) as long as both curves use the same; "psnr" can be any higher-is-better quality (MS-SSIM
    in dB too). NaN with a BDWarning when it cannot be computed (see `bd_problem`).
    """
    return _delta(bjontegaard.bd_rate, rate_test, psnr_test, rate_anchor, psnr_anchor, "quality")


def bd_psnr(rate_test, psnr_test, rate_anchor, psnr_anchor) -> float:
    """Average quality difference of test vs anchor (dB for PSNR) at equal rate (positive: test is better).

    Integrates quality as a PCHIP function of log-rate over the rate range both curves cover; NaN with a
    BDWarning when it cannot be computed (see `bd_problem`).
    """
    return _delta(bjontegaard.bd_psnr, rate_test, psnr_test, rate_anchor, psnr_anchor, "rate")
