"""Check the baseline pipelines on Kodak against ../shared/docs/baselines.md's numbers; prints a markdown report.

    python -m compass.evaluate.baseline_check [--images N] [--psy-check]

Mean curves: each sweep value's bpp and PSNR averaged over the images, then PSNR read at 0.25 / 0.5 / 1.0 bpp
by linear interpolation in log-bpp. JPEG 2000 also reports its resolution scalability at 0.5 bpp.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from ..paths import data_dir
from ..resample import resize
from .baselines import BASELINES, HEVC_ENC_PARAMS, hevc444, jpeg2000_levels, jpeg2000_lowpass
from .bdrate import bd_rate
from .metrics import psnr, to_float

TARGET_BPPS = (0.25, 0.5, 1.0)
REFERENCE = {"hevc444": (30.2, 33.3, 37.1), "jpeg2000": (29.3, 32.2, 36.0), "jpeg": (26.6, 29.6, 32.9)}
_PSY_KEYS = ("x265:aq-mode", "x265:psy-rd", "x265:psy-rdoq")


def _at(bpp: np.ndarray, quality: np.ndarray, target: float) -> float:
    order = np.argsort(bpp)
    if not bpp.min() <= target <= bpp.max():
        return float("nan")
    return float(np.interp(np.log(target), np.log(bpp[order]), quality[order]))


def _sweep(code, images, values) -> tuple[np.ndarray, np.ndarray, list]:
    """bpp and PSNR, shape (images, values), and the Coded results."""
    bpp, q, coded = np.zeros((len(images), len(values))), np.zeros((len(images), len(values))), []
    for i, img in enumerate(images):
        for j, v in enumerate(values):
            c = code(img, v)
            bpp[i, j] = 8 * c.num_bytes / (img.shape[0] * img.shape[1])
            q[i, j] = psnr(to_float(img), to_float(c.image))
            coded.append(c)
    return bpp, q, coded


def _bicubic(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(to_float(img).transpose(2, 0, 1)).float()[None]
    return resize(x, size)[0].numpy().transpose(1, 2, 0).astype(np.float64)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24, help="first N Kodak images")
    p.add_argument("--psy-check", action="store_true", help="also run HEVC with libheif's psychovisual defaults")
    args = p.parse_args(argv)
    paths = sorted(data_dir("kodak").glob("kodim*.png"))[:args.images]
    images = [np.asarray(Image.open(f).convert("RGB")) for f in paths]
    print(f"{len(images)} Kodak images ({paths[0].name} .. {paths[-1].name}); PSNR (dB, RGB) of the mean curve\n")
    print("| codec | sweep | bpp range | " + " | ".join(f"{t} bpp" for t in TARGET_BPPS)
          + " | reference | s/image |")
    print("|---|---|---|" + "---|" * len(TARGET_BPPS) + "---|---|")
    curves, extras = {}, {}
    for name, b in BASELINES.items():
        t0 = time.perf_counter()
        bpp, q, coded = _sweep(b.code, images, b.sweep)
        secs = (time.perf_counter() - t0) / len(images)
        mb, mq = bpp.mean(0), q.mean(0)
        curves[name] = (mb, mq)
        if name == "hevc444":
            extras["container"] = np.mean([c.info["file_bytes"] - c.num_bytes for c in coded])
        got = " | ".join(f"{_at(mb, mq, t):.2f}" for t in TARGET_BPPS)
        ref = " / ".join(f"{r}" for r in REFERENCE[name])
        print(f"| {name} | {b.parameter} {b.sweep} | {mb.min():.3f}-{mb.max():.3f} | {got} | {ref} | {secs:.2f} |")
    print(f"\nHEVC: rate = HEVC stream; the .heic container adds {extras['container']:.0f} bytes/image on average.")

    fractions, own, bic = {1: [], 2: []}, {1: [], 2: []}, {1: [], 2: []}
    for img in images:
        levels = jpeg2000_levels(img, 0.5, (0, 1, 2))
        for r in (1, 2):
            c = levels[r]
            fractions[r].append(c.info["fraction"])
            own[r].append(psnr(to_float(jpeg2000_lowpass(img, r)), to_float(c.image)))
            bic[r].append(psnr(_bicubic(img, c.image.shape[:2]), to_float(c.image)))
    print("\nJPEG 2000 at 0.5 bpp, reduced decodes from the measured codestream prefix (mean over images):\n")
    print("| reduce | size | bytes needed / full stream | PSNR vs own 9/7 low-pass | PSNR vs compass bicubic |")
    print("|---|---|---|---|---|")
    for r in (1, 2):
        print(f"| {r} | 1/{2 ** r} | {np.mean(fractions[r]):.1%} | {np.mean(own[r]):.2f} | {np.mean(bic[r]):.2f} |")

    if args.psy_check:
        default = {k: v for k, v in HEVC_ENC_PARAMS.items() if k not in _PSY_KEYS}
        values = BASELINES["hevc444"].sweep
        bpp, q, _ = _sweep(lambda img, qp: hevc444(img, qp, default), images, values)
        mb, mq = curves["hevc444"]
        got = ", ".join(f"{_at(bpp.mean(0), q.mean(0), t):.2f}" for t in TARGET_BPPS)
        print(f"\nHEVC with libheif's psychovisual defaults (no {', '.join(_PSY_KEYS)}): {got} dB at "
              f"{TARGET_BPPS} bpp; BD-rate of the tuning-off settings against it: "
              f"{bd_rate(mb, mq, bpp.mean(0), q.mean(0)):+.2f}% (mean curves).")


if __name__ == "__main__":
    main()
