"""Tables from rd.py's JSON (docs/prediction.md): mean curves over the images, then Bjontegaard deltas.

    python experiments/anomalies/report.py experiments/anomalies/results/rd-heldout.json
"""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np

from compass.evaluate.bdrate import bd_psnr, bd_rate

warnings.simplefilter("ignore")


def curves(res: dict):
    """Mean curves: single[k] = (bpp at layer k's size, psnr) per q; simulcast[k] = (bits of singles 0..k over
    layer k's pixels, psnr of single k); files[model][variant][k] = (cumulative bpp of layer k, psnr)."""
    imgs = res["images"]
    nq = len(res["qs"])
    px = {i: res["single"][i]["pixels"] for i in imgs}

    def mean(fn):
        return np.array([[np.mean([fn(i, qi)[j] for i in imgs]) for j in (0, 1)] for qi in range(nq)])

    single = [mean(lambda i, qi, k=k: (res["single"][i]["points"][qi][k][0] * 8 / px[i][k],
                                        res["single"][i]["points"][qi][k][1])) for k in range(3)]
    simul = [mean(lambda i, qi, k=k: (sum(res["single"][i]["points"][qi][j][0] for j in range(k + 1)) * 8 / px[i][k],
                                       res["single"][i]["points"][qi][k][1])) for k in range(3)]
    files = {}
    for m, variants in res["models"].items():
        files[m] = {}
        for v, per in variants.items():
            files[m][v] = [mean(lambda i, qi, k=k: (per[i][qi][k][0] * 8 / px[i][k], per[i][qi][k][1]))
                           for k in range(3)]
            files[m][v].append(mean(lambda i, qi: ((per[i][qi][1][0] - per[i][qi][0][0]) * 8 / px[i][1],
                                                   per[i][qi][1][1])))  # [3]: the middle layer's own bits
    return single, simul, files


def bd(test, anchor):
    return bd_rate(test[:, 0], test[:, 1], anchor[:, 0], anchor[:, 1]), bd_psnr(test[:, 0], test[:, 1], anchor[:, 0], anchor[:, 1])


def per_image(res: dict) -> None:
    """Per image: top layer minus single-layer PSNR at each q, and the top layer's BD-rate against simulcast."""
    qs = res["qs"]
    for m, variants in res["models"].items():
        print(f"\n== {m}, per image: top layer - single-layer PSNR at q = {qs}; top BD-rate vs simulcast")
        for i in res["images"]:
            c, s = variants["compass"][i], res["single"][i]
            px = s["pixels"]
            gap = [c[qi][2][1] - s["points"][qi][2][1] for qi in range(len(qs))]
            top = np.array([(c[qi][2][0] * 8 / px[2], c[qi][2][1]) for qi in range(len(qs))])
            sim = np.array([(sum(s["points"][qi][j][0] for j in range(3)) * 8 / px[2], s["points"][qi][2][1])
                            for qi in range(len(qs))])
            r, _ = bd(top, sim)
            print(f"  {i:45s} " + " ".join(f"{g:+.2f}" for g in gap) + f"   {r:+.1f}%")


def main(path):
    res = json.load(open(path))
    if "--per-image" in sys.argv:
        per_image(res)
    single, simul, files = curves(res)
    qs = res["qs"]
    print(f"{len(res['images'])} images; q = {qs}")
    print("\nsingle-layer codec, mean bpp / PSNR per layer size:")
    for k in range(3):
        print(f"  layer {k}: " + "  ".join(f"{b:.3f}/{p:.2f}" for b, p in single[k]))
    for m, fv in files.items():
        c = fv["compass"]
        print(f"\n== {m}")
        for k in (1, 2):
            print(f"  layer {k} at equal q: PSNR - single's " + "  ".join(f"{a:+.2f}" for a in c[k][:, 1] - single[k][:, 1])
                  + "   file bpp / single's bpp " + "  ".join(f"{a:.2f}" for a in c[k][:, 0] / single[k][:, 0]))
            r, p = bd(c[k], single[k])
            rs, ps = bd(c[k], simul[k])
            print(f"  layer {k} BD-rate vs single-layer {r:+.1f}% ({p:+.2f} dB), vs simulcast {rs:+.1f}% ({ps:+.2f} dB)")
        r, p = bd(c[3], single[1])
        print(f"  middle layer's own bits (base not counted) vs single-layer at its size: BD-rate {r:+.1f}% ({p:+.2f} dB)")
        print("  top layer mean bpp / PSNR: " + "  ".join(f"{b:.3f}/{p:.2f}" for b, p in c[2]))
        for v, cv in fv.items():
            if v == "compass":
                continue
            row = [f"{v:11s}"]
            for k in (1, 2):
                r, p = bd(cv[k], c[k])
                row.append(f"layer {k} BD-rate vs compass {r:+.1f}% ({p:+.2f} dB)")
            r, p = bd(cv[2], simul[2])
            row.append(f"top vs simulcast {r:+.1f}%")
            print("  " + ", ".join(row))


if __name__ == "__main__":
    main(sys.argv[1])  # --per-image: also the per-image table
