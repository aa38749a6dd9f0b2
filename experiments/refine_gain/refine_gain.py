"""What encoder-side latent refinement buys a scalable file: plain and refined encodes side by side.

    python experiments/refine_gain/refine_gain.py [--model compass-cpu-fast] [--steps 100] [--images N] [--json PATH]

Both encodes of every image use the same model, plans (layers 0.25, 0.5, 1 and 0.5, 1 of the image) and
qualities (0, 1/3, 2/3, 1) as `compass.evaluate.layers_report`. Per plan and layer: mean accumulated bpp and
PSNR of both, and the BD-rate / BD-PSNR of refined against plain (negative BD-rate: refined needs fewer bits);
per plan: the mean encode time of both. The file format and decoder are the same for both.
"""
from __future__ import annotations

import argparse
import json

from compass import DEFAULT_MODEL
from compass.api import Compass
from compass.evaluate.bdrate import bd_psnr, bd_rate
from compass.evaluate.layers_report import PLANS, scalable_table
from compass.evaluate.run import list_images
from compass.imageio import load_image
from compass.paths import data_dir
from compass.refine import RefineConfig


def compare(plain: list[dict], refined: list[dict]) -> list[dict]:
    """Rows {plan, layer, bd_rate, bd_psnr, plain/refined encode s} from two `scalable_table` results."""
    rows = []
    for fracs in PLANS:
        for layer in range(len(fracs)):
            pick = [[r for r in table if r["plan"] == list(fracs) and r["layer"] == layer] for table in (plain, refined)]
            (rp, pp), (rr, pr) = (([r["bpp"] for r in t], [r["psnr"] for r in t]) for t in pick)
            rows.append({"plan": list(fracs), "layer": layer, "bd_rate": bd_rate(rr, pr, rp, pp),
                         "bd_psnr": bd_psnr(rr, pr, rp, pp),
                         "plain_encode_s": sum(r["encode_s"] for r in pick[0]) / len(pick[0]),
                         "refined_encode_s": sum(r["encode_s"] for r in pick[1]) / len(pick[1])})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", default=None)
    p.add_argument("--images", type=int)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--json")
    args = p.parse_args(argv)
    files = list_images(args.data or data_dir("kodak"), args.images)
    images = [load_image(f).pixels for f in files]
    codec = Compass(args.model)
    plain = scalable_table(codec, images)
    refined = scalable_table(codec, images, refine=RefineConfig(steps=args.steps))
    rows = compare(plain, refined)
    print(f"{args.model}, {len(files)} images, {args.steps} refinement steps per layer\n")
    print("| layers | layer | BD-rate refined vs plain | BD-PSNR | encode s plain / refined |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {', '.join(f'{f:g}' for f in r['plan'])} | {r['layer']} | {r['bd_rate']:+.1f}% | "
              f"{r['bd_psnr']:+.2f} dB | {r['plain_encode_s']:.1f} / {r['refined_encode_s']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "images": [f.name for f in files], "steps": args.steps,
                       "plain": plain, "refined": refined, "compare": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
