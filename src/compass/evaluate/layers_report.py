"""Kodak numbers for the training report (docs/training.md): per-layer bpp and PSNR of the shipped scalable model,
and the single-layer codec against JPEG 2000 and JPEG at equal bpp.

    python -m compass.evaluate.layers_report [--images N] [--json PATH] [--single-only] [--refine STEPS] [--jobs N]

Per layer k: bpp = real file bytes a decoder needs for layer k (header + chunks 0..k) / pixels of layer k,
PSNR of the decoded 8-bit layer against the 8-bit target I^k; means over images. Single-layer comparison: for
each image and q, JPEG 2000 is coded at exactly our bpp (OpenJPEG rate target, raw codestream bytes) and JPEG's
PSNR is interpolated on its own quality sweep at our bpp (log-bpp, per image).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from .. import DEFAULT_MODEL, DEFAULT_SINGLE, bitstream
from ..api import Compass
from ..imageio import load_image
from ..models import load
from ..paths import data_dir
from ..pixels import to_pixels, to_tensor
from ..procs import map_in_children, serve
from ..refine import RefineConfig
from ..resample import plan_from_fractions, resize
from ..scalable import ScalableCodec
from .baselines import BASELINES, jpeg2000
from .bdrate import bd_psnr, bd_rate
from .metrics import psnr_uint8
from .run import list_images

QUALITIES = (0.0, 1 / 3, 2 / 3, 1.0)
PLANS = ((0.25, 0.5, 1.0), (0.5, 1.0))


def scalable_table(codec: Compass, images: list[np.ndarray], qualities=QUALITIES, plans=PLANS,
                   refine: RefineConfig | None = None) -> list[dict]:
    """Mean accumulated bpp and PSNR per (plan, q, layer), and the mean encode time per (plan, q)."""
    rows = []
    for fracs in plans:
        for q in qualities:
            per_layer, seconds = [[] for _ in fracs], []
            for px in images:
                plan = plan_from_fractions(px.shape[0], px.shape[1], fracs)
                start = time.perf_counter()
                data = codec.encode(px, sizes=plan, quality=q, refine=refine)
                seconds.append(time.perf_counter() - start)
                meta = bitstream.info(data)
                for k, (img, layer) in enumerate(zip(codec.decode_all(data), meta["layers"])):
                    target = to_pixels(resize(to_tensor(px), plan[k]))
                    per_layer[k].append((layer["bpp"], psnr_uint8(img, target)))
            for k, vals in enumerate(per_layer):
                rows.append({"plan": list(fracs), "q": q, "layer": k, "fraction": fracs[k],
                             "bpp": float(np.mean([v[0] for v in vals])),
                             "psnr": float(np.mean([v[1] for v in vals])), "encode_s": float(np.mean(seconds))})
    return rows


SINGLE_QUALITIES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _single_image(single: ScalableCodec, px: np.ndarray, qualities, refine: RefineConfig | None) -> list[dict]:
    """One image at each q: our bpp (coded y and z bytes) and PSNR, JPEG 2000 at that bpp, JPEG interpolated."""
    jpeg = BASELINES["jpeg"]
    pixels = px[..., 0].size
    curve = sorted((c.num_bytes * 8 / pixels, psnr_uint8(c.image, px)) for c in (jpeg.code(px, p) for p in jpeg.sweep))
    rates, quals = zip(*curve)
    out = []
    for q in qualities:
        start = time.perf_counter()
        code, x_hat = single.code_layer(to_tensor(px), q, None, refine=refine)
        seconds = time.perf_counter() - start
        bpp = sum(len(s) for s in code.strings) * 8 / pixels
        j2k = jpeg2000(px, bpp)
        out.append({"q": q, "bpp": bpp, "psnr": psnr_uint8(to_pixels(x_hat), px), "encode_s": seconds,
                    "jpeg2000_bpp": j2k.num_bytes * 8 / pixels, "jpeg2000_psnr": psnr_uint8(j2k.image, px),
                    "jpeg_psnr": float(np.interp(np.log(bpp), np.log(rates), quals))})
    return out


def serve_images(channel, single: str) -> None:
    """A child of `single_layer_table` (`procs.map_in_children`): one thread, the codec loaded once, an image's
    rows for each (pixels, qualities, refine) sent."""
    torch.set_num_threads(1)
    codec = load(single).model
    serve(channel, lambda work: _single_image(codec, *work))


def single_layer_table(single: str, images: list[np.ndarray], qualities=SINGLE_QUALITIES,
                       refine: RefineConfig | None = None, jobs: int = 1) -> dict:
    """Our single-layer codec (weights `single`, optionally with latent refinement) vs JPEG 2000 (same bpp per
    image) and JPEG (interpolated at that bpp); means over images, the per-image numbers, and BD figures.
    `jobs` > 1 codes images in that many processes of one thread each (the same bytes: coding is one-threaded)."""
    work = [(px, qualities, refine) for px in images]
    if jobs > 1:
        with tqdm(total=len(work), desc="single-layer") as bar:
            per_image = map_in_children("compass.evaluate.layers_report:serve_images", (single,), work, jobs,
                                        done=bar.update)
    else:
        codec = load(single).model
        per_image = [_single_image(codec, *w) for w in tqdm(work, desc="single-layer")]
    keys = ("bpp", "psnr", "encode_s", "jpeg2000_bpp", "jpeg2000_psnr", "jpeg_psnr")
    rows = [{"q": q, **{k: float(np.mean([img[i][k] for img in per_image])) for k in keys}}
            for i, q in enumerate(qualities)]
    r, p = [x["bpp"] for x in rows], [x["psnr"] for x in rows]
    j2k_r, j2k_p = [x["jpeg2000_bpp"] for x in rows], [x["jpeg2000_psnr"] for x in rows]
    bd = {"vs_jpeg2000": {"bd_rate": bd_rate(r, p, j2k_r, j2k_p), "bd_psnr": bd_psnr(r, p, j2k_r, j2k_p)},
          "vs_jpeg": {"bd_psnr": bd_psnr(r, p, r, [x["jpeg_psnr"] for x in rows])}}
    return {"refine": None if refine is None else asdict(refine), "rows": rows, "bd": bd, "per_image": per_image}


def _single_markdown(single: dict) -> list[str]:
    refine = single["refine"]
    title = "plain encoder" if refine is None else f"latents refined for {refine['steps']} steps (lr {refine['lr']:g})"
    out = [f"Single-layer codec, {title}:", "", "| q | ours bpp | ours PSNR | JPEG 2000 PSNR (bpp) | JPEG PSNR | "
           "encode s |", "|---|---|---|---|---|---|"]
    for r in single["rows"]:
        out.append(f"| {r['q']:.1f} | {r['bpp']:.3f} | {r['psnr']:.2f} | {r['jpeg2000_psnr']:.2f} "
                   f"({r['jpeg2000_bpp']:.3f}) | {r['jpeg_psnr']:.2f} | {r['encode_s']:.1f} |")
    bd = single["bd"]
    out += ["", f"BD-rate vs JPEG 2000: {bd['vs_jpeg2000']['bd_rate']:+.1f}% (BD-PSNR "
            f"{bd['vs_jpeg2000']['bd_psnr']:+.2f} dB); BD-PSNR vs JPEG: {bd['vs_jpeg']['bd_psnr']:+.2f} dB "
            "(negative BD-rate / positive BD-PSNR: ours is better).", ""]
    return out


def markdown(scalable: list[dict] | None, singles: list[dict]) -> str:
    out = []
    if scalable:
        out += ["| layers | q | " + " | ".join(f"layer {k} bpp / PSNR" for k in range(3)) + " |",
                "|---|---|---|---|---|"]
        for fracs in PLANS:
            for q in QUALITIES:
                cells = [f"{r['bpp']:.3f} / {r['psnr']:.2f}" for r in scalable
                         if r["plan"] == list(fracs) and r["q"] == q]
                cells += [""] * (3 - len(cells))
                out.append(f"| {', '.join(f'{f:g}' for f in fracs)} | {q:.2f} | " + " | ".join(cells) + " |")
        out.append("")
    for single in singles:
        out += _single_markdown(single)
    if len(singles) == 2:
        (a, b) = ([x["bpp"] for x in t["rows"]] for t in singles)
        (pa, pb) = ([x["psnr"] for x in t["rows"]] for t in singles)
        out.append(f"Refined against plain: BD-rate {bd_rate(b, pb, a, pa):+.1f}%, "
                   f"BD-PSNR {bd_psnr(b, pb, a, pa):+.2f} dB.")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m compass.evaluate.layers_report", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--images", type=int)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--single", default=DEFAULT_SINGLE)
    p.add_argument("--single-only", action="store_true", help="skip the scalable model's table")
    p.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="also code the single-layer table with latents refined for STEPS steps (side by side)")
    p.add_argument("--jobs", type=int, default=1, help="processes (one thread each) for the single-layer tables")
    p.add_argument("--json")
    args = p.parse_args(argv)
    files = list_images(args.data or data_dir("kodak"), args.images)
    images = [load_image(f).pixels for f in tqdm(files, desc="load")]
    scal = None if args.single_only else scalable_table(Compass(args.model), images)
    singles = [single_layer_table(args.single, images, jobs=args.jobs)]
    if args.refine:
        singles.append(single_layer_table(args.single, images, refine=RefineConfig(steps=args.refine), jobs=args.jobs))
    print(markdown(scal, singles))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": [f.name for f in files], "scalable": scal, "single": singles[0],
                       "single_refined": singles[1] if args.refine else None}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
