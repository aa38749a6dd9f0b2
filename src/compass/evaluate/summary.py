"""The summary of `compass eval`: mean rate-distortion curves over the images, and Bjontegaard deltas of compass
against every other method."""
from __future__ import annotations

import math
import warnings

import numpy as np

from .bdrate import BDWarning, bd_problem, bd_psnr, bd_rate


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _db(ms: float) -> float:
    """MS-SSIM in dB, -10 log10(1 - MS-SSIM), the usual axis for BD on MS-SSIM."""
    return math.inf if ms >= 1 else -10 * math.log10(1 - ms)


def mean_curves(points: list[dict]) -> dict:
    """{method: {config: {layer: {param, bpp, bpp_noheader, psnr, ms_ssim, psnr_bicubic?}}}}, lists in sweep order.

    Each rate point is averaged over the images (mean bpp, mean PSNR, mean MS-SSIM at one q / qp / target bpp),
    the way published Kodak curves are; MS-SSIM is None where a layer is too small for it.
    """
    groups: dict = {}
    for p in points:
        for l in p["layers"]:
            groups.setdefault((p["method"], p["config"], l["layer"]), {}).setdefault(p["param"], []).append(l)
    curves: dict = {}
    for (method, config, layer), by_param in groups.items():
        params = list(by_param)
        c = {"param": params}
        for f in ("bpp", "bpp_noheader", "psnr", "ms_ssim", "psnr_bicubic"):
            vals = [_mean(l.get(f) for l in by_param[p]) for p in params]
            if any(v is not None for v in vals):
                c[f] = vals
        curves.setdefault(method, {}).setdefault(config, {})[str(layer)] = c
    return curves


def _bd(test: dict, anchor: dict) -> dict:
    """BD-rate (PSNR, PSNR without headers, MS-SSIM dB) and BD-PSNR of test vs anchor; None + reason where NaN."""
    out = {}
    pairs = {"bd_rate": (bd_rate, "bpp", "psnr"), "bd_rate_noheader": (bd_rate, "bpp_noheader", "psnr"),
             "bd_psnr": (bd_psnr, "bpp", "psnr"), "bd_rate_msssim": (bd_rate, "bpp", "ms_ssim")}
    for name, (fn, rate, quality) in pairs.items():
        if quality not in test or quality not in anchor or None in test[quality] or None in anchor[quality]:
            out[name], out[f"{name}_reason"] = None, f"no {quality} on every point (layer too small)"
            continue
        qt, qa = test[quality], anchor[quality]
        if quality == "ms_ssim":
            qt, qa = [_db(v) for v in qt], [_db(v) for v in qa]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BDWarning)
            value = fn(test[rate], qt, anchor[rate], qa)
        out[name] = None if math.isnan(value) else value
        if out[name] is None:
            out[f"{name}_reason"] = (bd_problem(test[rate], qt, anchor[rate], qa, "psnr" if fn is bd_psnr else "rate")
                                     or "the Bjontegaard integral is undefined for these curves")
    return out


def summarize(results: dict) -> dict:
    """Mean curves, and BD values of compass against every other method on each configuration's top layer."""
    curves = mean_curves(results["points"])
    bd: dict = {}
    for method in results["setup"]["methods"]:
        if method == "compass":
            continue
        for config, info in results["setup"]["configs"].items():
            top = str(info["layers"] - 1)
            anchor = curves.get(method, {}).get(config, {}).get(top)
            test = curves.get("compass", {}).get(config, {}).get(top)
            if anchor is not None and test is not None:
                bd.setdefault(method, {})[config] = _bd(test, anchor)
    return {"averaging": "per rate point: mean bpp and mean quality over the images", "curves": curves, "bd": bd}

