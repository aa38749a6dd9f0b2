"""The prediction drift of every shipped model (docs/prediction.md, "The prediction drift").

For the bundled demo image and the 16 held-out photos, 3 layers (0.25, 0.5, 1) at q = 0.5 as `compass encode`
codes them: each enhancement layer's prediction (LIFF's output before the residual is added) against its
target: PSNR, per-channel mean offset (8-bit levels), PSNR with that offset removed, and plain bicubic (Pillow's
kernel) from the same reconstruction. And what each residual codec outputs when every symbol is zero.

    python experiments/anomalies/drift.py --out experiments/anomalies/results/drift.json
    python experiments/anomalies/drift.py --models control=runs/anomalies/control/checkpoint.pt \
        fidelity=runs/anomalies/fidelity/checkpoint.pt --out experiments/anomalies/results/drift-finetune.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stages  # noqa: E402
from rd import heldout, zero_symbol_offset  # noqa: E402

from compass.paths import REPO_ROOT  # noqa: E402

MODELS = ("compass-cpu-mini", "compass-cpu-fast", "compass-cpu-lite", "compass-cpu")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", nargs="+", default=list(MODELS),
                    help="shipped names, or NAME=CHECKPOINT for a fine-tune of finetune.py")
    ap.add_argument("--q", type=float, default=0.5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    images = [REPO_ROOT / "examples" / "kingfisher.png", *heldout()]
    res = {"q": args.q, "images": [p.name for p in images], "models": {}}
    base = stages.model("compass-cpu-single").base  # the codec every residual codec was warm-started from
    res["single_zero_symbol_output"] = {q: (zero_symbol_offset(base, (256, 384), q).flatten() * 255).tolist()
                                        for q in (0.0, 0.5, 1.0)}
    print("compass-cpu-single: output with every symbol zero, q=0/0.5/1: "
          + " / ".join(str(np.round(v, 1).tolist()) for v in res["single_zero_symbol_output"].values()), flush=True)
    for name in args.models:
        if "=" in name:
            from ckpt_model import load_checkpoint_model
            name, path = name.split("=", 1)
            stages._MODELS[name] = load_checkpoint_model(path)
        m = stages.model(name)
        zero = {q: (zero_symbol_offset(m.residual, (256, 384), q).flatten() * 255).tolist() for q in (0.0, 0.5, 1.0)}
        spread = max(float(zero_symbol_offset(m.residual, (256, 384), q, spread=True).max()) * 255 for q in (0.0, 0.5, 1.0))
        rows = {}
        for p in images:
            r = stages.layer_stats(name, stages.load_image(p), (0.25, 0.5, 1.0), (args.q,) * 3)
            rows[p.name] = [{k: r[j][k] for k in ("pred_psnr", "pred_offset", "pred_psnr_dc", "bicubic_psnr", "psnr",
                                                  "single_psnr", "bpp_layer", "bpp_file", "single_bpp")}
                            for j in (1, 2)]
        res["models"][name] = {"zero_symbol_output": zero, "zero_symbol_spatial_std_max": spread, "images": rows}
        held = [rows[p.name] for p in images[1:]]
        for j, lay in enumerate(("middle", "top")):
            mean = {k: float(np.mean([h[j][k] for h in held])) for k in ("pred_psnr", "pred_psnr_dc", "bicubic_psnr")}
            off = np.mean([h[j]["pred_offset"] for h in held], 0)
            k0 = rows[images[0].name][j]
            print(f"{name} {lay}: demo pred {k0['pred_psnr']:.2f} dB offset {k0['pred_offset']} without it "
                  f"{k0['pred_psnr_dc']:.2f} bicubic {k0['bicubic_psnr']:.2f} | held-out mean pred {mean['pred_psnr']:.2f} "
                  f"offset {np.round(off, 1).tolist()} without it {mean['pred_psnr_dc']:.2f} bicubic {mean['bicubic_psnr']:.2f}")
        print(f"{name}: residual codec output with every symbol zero, q=0/0.5/1: "
              + " / ".join(str(np.round(v, 1).tolist()) for v in zero.values())
              + f"; its spatial standard deviation at most {spread:.2f} levels", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
