"""How good can the single-layer codec's decoder be at all? PSNR ceilings of its synthesis transform.

    python experiments/decoder_ceiling/decoder_ceiling.py [--model compass-cpu-single] [--q 1] [--images N] [--optimize STEPS]

Per image, at quality q: the coded PSNR and bpp; JPEG 2000 at that bpp; the "amortized ceiling", g_s(g_a(x))
with no quantization at all (what the decoder makes of the encoder's latents at infinite rate); and with
`--optimize`, the "decoder ceiling", g_s(y) for the y found by Adam on the MSE alone, starting from g_a(x)
(the best any encoder could give this decoder, at any rate). When the decoder ceiling is below JPEG 2000 at the
codec's own rate, no encoder-side change can close the gap there: the synthesis transform must improve.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from compass import DEFAULT_SINGLE
from compass.evaluate.baselines import jpeg2000
from compass.evaluate.metrics import psnr_uint8
from compass.evaluate.run import list_images
from compass.imageio import load_image
from compass.pixels import to_pixels, to_tensor
from compass.paths import data_dir
from compass.models import load


def ceilings(codec, px: np.ndarray, q: float, optimize: int = 0, lr: float = 0.01) -> dict:
    x = to_tensor(px)
    img, _ = codec.latent_sizes(*x.shape[-2:])
    code = codec.compress(x, q)
    bpp = sum(len(s) for s in code["strings"]) * 8 / px[..., 0].size
    j2k = jpeg2000(px, bpp)
    with torch.no_grad():
        gain, inv_gain, _, _ = codec.gains(torch.tensor([q]))
        y = codec.g_a(x) * gain
        amortized = codec.g_s(y * inv_gain, img[-2::-1])
    row = {"bpp": bpp, "psnr": psnr_uint8(to_pixels(code["x_hat"]), px), "jpeg2000_psnr": psnr_uint8(j2k.image, px),
           "amortized_ceiling": psnr_uint8(to_pixels(amortized), px)}
    if optimize:
        y = y.clone().requires_grad_(True)
        opt = torch.optim.Adam([y], lr=lr)
        for _ in range(optimize):
            loss = torch.mean((codec.g_s(y * inv_gain, img[-2::-1]) - x) ** 2)
            y.grad, = torch.autograd.grad(loss, [y])
            opt.step()
        with torch.no_grad():
            row["decoder_ceiling"] = psnr_uint8(to_pixels(codec.g_s(y * inv_gain, img[-2::-1])), px)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_SINGLE)
    p.add_argument("--data", default=None)
    p.add_argument("--images", type=int)
    p.add_argument("--q", type=float, default=1.0)
    p.add_argument("--optimize", type=int, default=0, metavar="STEPS")
    p.add_argument("--json")
    args = p.parse_args(argv)
    codec = load(args.model).model.base
    files = list_images(args.data or data_dir("kodak"), args.images)
    rows = []
    keys = ["bpp", "psnr", "jpeg2000_psnr", "amortized_ceiling"] + (["decoder_ceiling"] if args.optimize else [])
    print("| image | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for f in files:
        row = {"image": f.name, **ceilings(codec, load_image(f).pixels, args.q, args.optimize)}
        rows.append(row)
        print(f"| {f.stem} | " + " | ".join(f"{row[k]:.3f}" if k == "bpp" else f"{row[k]:.2f}" for k in keys) + " |",
              flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print("| mean | " + " | ".join(f"{mean[k]:.3f}" if k == "bpp" else f"{mean[k]:.2f}" for k in keys) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, "q": args.q, "optimize": args.optimize, "rows": rows, "mean": mean}, fh,
                      indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
