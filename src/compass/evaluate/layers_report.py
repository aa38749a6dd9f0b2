"""Kodak numbers for the training report (docs/training.md): per-layer bpp and PSNR of the shipped scalable model,
and the single-layer codec against JPEG 2000 and JPEG at equal bpp.

    python -m compass.evaluate.layers_report [--images N] [--json PATH]

Per layer k: bpp = real file bytes a decoder needs for layer k (header + chunks 0..k) / pixels of layer k,
PSNR of the decoded 8-bit layer against the 8-bit target I^k; means over images. Single-layer comparison: for
each image and q, JPEG 2000 is coded at exactly our bpp (OpenJPEG rate target, raw codestream bytes) and JPEG's
PSNR is interpolated on its own quality sweep at our bpp (log-bpp, per image).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from tqdm import tqdm

from .. import DEFAULT_MODEL, DEFAULT_SINGLE, bitstream
from ..api import Compass
from ..imageio import load_image, to_pixels, to_tensor
from ..paths import data_dir
from ..resample import plan_from_fractions, resize
from ..weights import build_codec, load_weights
from .baselines import BASELINES, jpeg2000
from .bdrate import bd_psnr, bd_rate
from .metrics import psnr, to_float
from .run import list_images

QUALITIES = (0.0, 1 / 3, 2 / 3, 1.0)
PLANS = ((0.25, 0.5, 1.0), (0.5, 1.0))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr(to_float(a), to_float(b))


def scalable_table(codec: Compass, images: list[np.ndarray], qualities=QUALITIES, plans=PLANS) -> list[dict]:
    """Mean accumulated bpp and PSNR per (plan, q, layer)."""
    rows = []
    for fracs in plans:
        for q in qualities:
            per_layer = [[] for _ in fracs]
            for px in images:
                plan = plan_from_fractions(px.shape[0], px.shape[1], fracs)
                data = codec.encode(px, sizes=plan, quality=q)
                meta = bitstream.info(data)
                for k, (img, layer) in enumerate(zip(codec.decode_all(data), meta["layers"])):
                    target = to_pixels(resize(to_tensor(px), plan[k]))
                    per_layer[k].append((layer["bpp"], _psnr(img, target)))
            for k, vals in enumerate(per_layer):
                rows.append({"plan": list(fracs), "q": q, "layer": k, "fraction": fracs[k],
                             "bpp": float(np.mean([v[0] for v in vals])),
                             "psnr": float(np.mean([v[1] for v in vals]))})
    return rows


def single_layer_table(single, images: list[np.ndarray], qualities=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)) -> dict:
    """Our single-layer codec vs JPEG 2000 (same bpp per image) and JPEG (interpolated at that bpp)."""
    jpeg = BASELINES["jpeg"]
    jpeg_curves = []
    for px in images:
        pts = [(c.num_bytes * 8 / px[..., 0].size, _psnr(c.image, px)) for c in (jpeg.code(px, p) for p in jpeg.sweep)]
        jpeg_curves.append(sorted(pts))
    rows = []
    for q in qualities:
        ours, j2k, jpg = [], [], []
        for px, curve in zip(images, jpeg_curves):
            out = single.compress(to_tensor(px), q)
            nbytes = sum(len(s) for s in out["strings"])
            bpp = nbytes * 8 / px[..., 0].size
            ours.append((bpp, _psnr(to_pixels(out["x_hat"]), px)))
            coded = jpeg2000(px, bpp)
            j2k.append((coded.num_bytes * 8 / px[..., 0].size, _psnr(coded.image, px)))
            rates, quals = zip(*curve)
            jpg.append(float(np.interp(np.log(bpp), np.log(rates), quals)))
        rows.append({"q": q, "bpp": float(np.mean([o[0] for o in ours])), "psnr": float(np.mean([o[1] for o in ours])),
                     "jpeg2000_bpp": float(np.mean([j[0] for j in j2k])),
                     "jpeg2000_psnr": float(np.mean([j[1] for j in j2k])), "jpeg_psnr": float(np.mean(jpg))})
    r, p = [x["bpp"] for x in rows], [x["psnr"] for x in rows]
    bd = {"vs_jpeg2000": {"bd_rate": bd_rate(r, p, [x["jpeg2000_bpp"] for x in rows], [x["jpeg2000_psnr"] for x in rows]),
                          "bd_psnr": bd_psnr(r, p, [x["jpeg2000_bpp"] for x in rows], [x["jpeg2000_psnr"] for x in rows])},
          "vs_jpeg": {"bd_psnr": bd_psnr(r, p, r, [x["jpeg_psnr"] for x in rows])}}
    return {"rows": rows, "bd": bd}


def markdown(scalable: list[dict], single: dict) -> str:
    out = ["| layers | q | " + " | ".join(f"layer {k} bpp / PSNR" for k in range(3)) + " |", "|---|---|---|---|---|"]
    for fracs in PLANS:
        for q in QUALITIES:
            cells = [f"{r['bpp']:.3f} / {r['psnr']:.2f}" for r in scalable if r["plan"] == list(fracs) and r["q"] == q]
            cells += [""] * (3 - len(cells))
            out.append(f"| {', '.join(f'{f:g}' for f in fracs)} | {q:.2f} | " + " | ".join(cells) + " |")
    out += ["", "| q | ours bpp | ours PSNR | JPEG 2000 PSNR (bpp) | JPEG PSNR |", "|---|---|---|---|---|"]
    for r in single["rows"]:
        out.append(f"| {r['q']:.1f} | {r['bpp']:.3f} | {r['psnr']:.2f} | {r['jpeg2000_psnr']:.2f} "
                   f"({r['jpeg2000_bpp']:.3f}) | {r['jpeg_psnr']:.2f} |")
    bd = single["bd"]
    out += ["", f"BD-rate vs JPEG 2000: {bd['vs_jpeg2000']['bd_rate']:+.1f}% (BD-PSNR "
            f"{bd['vs_jpeg2000']['bd_psnr']:+.2f} dB); BD-PSNR vs JPEG: {bd['vs_jpeg']['bd_psnr']:+.2f} dB "
            "(negative BD-rate / positive BD-PSNR: ours is better)."]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m compass.evaluate.layers_report", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--images", type=int)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--single", default=DEFAULT_SINGLE)
    p.add_argument("--json")
    args = p.parse_args(argv)
    files = list_images(args.data or data_dir("kodak"), args.images)
    images = [load_image(f).pixels for f in tqdm(files, desc="load")]
    codec = Compass(args.model)
    single = build_codec(load_weights(args.single)[0], "base")
    scal = scalable_table(codec, images)
    sing = single_layer_table(single, images)
    print(markdown(scal, sing))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": [f.name for f in files], "scalable": scal, "single": sing}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
