"""Measure what the odd-size rule saves: real bytes of our replicate-pad-and-crop vs padding to a multiple of 64.

Ours: before every stride-2 stage an odd side gets one replicated pixel, cropped again after the matching
transposed conv (layers.py), so an H x W image is coded at its own size.
Pad64: the whole image is replicate-padded (right/bottom) to the next multiple of 64 on each side, coded, and the
decoded image is cropped back.

Both are real bitstreams from `compress`, and PSNR comes from `decompress` of those strings: RGB, output clamped
and rounded to 8 bits, against the original. Kodak-sized images (already multiples of 64) are the control: both
rules must give identical bytes there.

    nice -n 19 python tools/measure_padding.py [--checkpoint runs/cpu/base/checkpoint.pt] [--images 3]

Reads the checkpoint only (never writes it). Prints a markdown table; sizes are height x width.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from compass.codec import CodecConfig, MeanScaleHyperprior
from compass.paths import REPO_ROOT, data_dir
from compass.weights import safe_load

CROPS = [(321, 481), (257, 193), (100, 75), (33, 17)]


def load_codec(path: Path) -> tuple[MeanScaleHyperprior, dict]:
    ck = safe_load(path)
    model = MeanScaleHyperprior(CodecConfig(**ck["recipe"]["codec"]))
    model.load_state_dict(ck["modules"]["codec"])
    model.eval()
    model.update()
    return model, ck


def load_image(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None]


def landscape(x: torch.Tensor) -> torch.Tensor:
    """Kodak has 768x512 and 512x768 images; measure all of them as 512 (high) x 768 (wide)."""
    return x if x.shape[-2] <= x.shape[-1] else x.transpose(-2, -1).flip(-1)


def centre_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


def psnr8(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    mse = float(((x_hat.clamp(0, 1) * 255).round() / 255 - x).pow(2).mean())
    return -10 * math.log10(max(mse, 1e-12))


def code(model: MeanScaleHyperprior, x: torch.Tensor, q: float, pad64: bool) -> tuple[int, float]:
    """(total string bytes, PSNR of the decoded image cropped to x's size)."""
    h, w = x.shape[-2:]
    xin = x
    if pad64:
        ph, pw = -h % 64, -w % 64
        if ph or pw:
            xin = F.pad(x, (0, pw, 0, ph), mode="replicate")
    enc = model.compress(xin, q)
    dec = model.decompress(enc["strings"], enc["shape"], q)["x_hat"][..., :h, :w]
    return sum(len(s) for s in enc["strings"]), psnr8(dec, x)


def bd_rate(rate_a, psnr_a, rate_b, psnr_b, steps: int = 200) -> float | None:
    """Average rate difference of curve a vs curve b at equal PSNR, in % (negative: a needs fewer bytes).

    log-rate is interpolated piecewise-linearly in PSNR (only a few q points per curve) and averaged over the PSNR
    interval both curves cover; None when they do not overlap.
    """
    def curve(rate, psnr):
        order = np.argsort(psnr)
        return np.asarray(psnr, float)[order], np.log(np.asarray(rate, float))[order]

    pa, la = curve(rate_a, psnr_a)
    pb, lb = curve(rate_b, psnr_b)
    lo, hi = max(pa[0], pb[0]), min(pa[-1], pb[-1])
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, steps)
    return 100 * (math.exp(float(np.mean(np.interp(grid, pa, la) - np.interp(grid, pb, lb)))) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=REPO_ROOT / "runs/cpu/base/checkpoint.pt")
    ap.add_argument("--images", type=int, default=3, help="how many Kodak images (kodim01, 02, ...)")
    ap.add_argument("--qualities", default="0,0.5,1")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    qualities = [float(q) for q in args.qualities.split(",")]

    model, ck = load_codec(args.checkpoint)
    files = sorted(data_dir("kodak").glob("kodim*.png"))[: args.images]
    images = [landscape(load_image(f)) for f in files]
    sizes = [tuple(images[0].shape[-2:])] + CROPS
    print(f"checkpoint {args.checkpoint} (stage {ck.get('stage')}, step {ck.get('step')}), "
          f"codec {ck['recipe']['codec']}, {len(images)} Kodak images ({', '.join(f.stem for f in files)}), "
          f"centre crops, {args.threads} thread(s)\n")
    print("| size (HxW) | pad64 codes | q | bytes ours | bytes pad64 | saving % | PSNR ours | PSNR pad64 |")
    print("|---|---|---|---|---|---|---|---|")
    t0 = time.time()
    curves = {}
    for h, w in sizes:
        padded = (h + (-h % 64), w + (-w % 64))
        for q in qualities:
            ours, pad = [], []
            for img in images:
                x = centre_crop(img, h, w)
                r_ours = code(model, x, q, pad64=False)
                r_pad = r_ours if padded == (h, w) else code(model, x, q, pad64=True)
                ours.append(r_ours)
                pad.append(r_pad)
            b_ours = float(np.mean([r[0] for r in ours]))
            b_pad = float(np.mean([r[0] for r in pad]))
            p_ours = float(np.mean([r[1] for r in ours]))
            p_pad = float(np.mean([r[1] for r in pad]))
            saving = 100 * (b_pad - b_ours) / b_pad
            curves.setdefault((h, w), []).append((b_ours, p_ours, b_pad, p_pad))
            print(f"| {h}x{w} | {padded[0]}x{padded[1]} | {q:g} | {b_ours:.0f} | {b_pad:.0f} | {saving:.1f} | "
                  f"{p_ours:.2f} | {p_pad:.2f} |", flush=True)
    print(f"\nbytes and PSNR are means over the images; saving = (pad64 - ours) / pad64. {time.time() - t0:.0f} s")
    print("\n| size (HxW) | BD-rate ours vs pad64 % (equal PSNR; negative = ours smaller) |\n|---|---|")
    for (h, w), rows in curves.items():
        bd = bd_rate(*zip(*[(r[0], r[1]) for r in rows]), *zip(*[(r[2], r[3]) for r in rows]))
        print(f"| {h}x{w} | {'n/a (PSNR ranges do not overlap)' if bd is None else f'{bd:+.1f}'} |")


if __name__ == "__main__":
    main()
