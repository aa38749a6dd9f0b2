"""Real-bit rate-distortion of 3-layer files (0.25, 0.5, 1) on the 16 held-out photos, per layer, with
encoder-side variants, against the single-layer codec at every layer size (docs/prediction.md).

    python experiments/anomalies/rd.py --models compass-cpu-mini compass-cpu-fast --out experiments/anomalies/results/rd-heldout.json
    python experiments/anomalies/rd.py --images examples/kingfisher.png ...      # any images instead
    python experiments/anomalies/rd.py --models control=runs/anomalies/control/checkpoint.pt ... --variants compass

Variants (all decodable by the decoder except `bicubic-dc`, an analysis predictor):
  compass        every layer at q, every layer above the base predicted (the paper's coding)
  auto           every layer at q, layer mode auto (the encoder's default: each layer above the base predicted or
                 intra, whichever has the lower rate-distortion cost at q)
  lower+D        the two lower layers at q + D (clamped to [0, 1]), the top at q (per-layer q: the format allows it)
  bicubic        the evaluation's ablation row: Pillow-kernel bicubic instead of LIFF, residual codec kept
  bicubic-dc     bicubic minus the shift the residual codec adds back with every symbol zero (its output for
                 all-zero symbols, per channel): LIFF's learned spatial correction removed, its DC kept
Bytes are the coded layers' (the file header, the same for all, is left out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stages  # noqa: E402

from compass.paths import data_dir  # noqa: E402
from compass.resample import pyramid, upsample_bicubic_pil  # noqa: E402
from compass.train.config import load_recipe  # noqa: E402
from compass.train.data import list_images, split  # noqa: E402

QS = (0.0, 0.25, 0.5, 0.75, 1.0)
FRACTIONS = (0.25, 0.5, 1.0)


def heldout() -> list[Path]:
    """The training recipes' validation split: the 16 photos with the smallest name hash (never trained on)."""
    recipe = load_recipe("cpu-mini")
    return split(list_images(data_dir(recipe["data"]["train"])), recipe["data"]["val_count"])[1]


@torch.no_grad()
def zero_symbol_offset(codec, size, q, spread: bool = False) -> torch.Tensor:
    """What a residual codec adds when every symbol is zero (z at its medians, y at its predicted means):
    (1, 3, 1, 1), the per-channel mean over the interior (`spread`: its spatial standard deviation instead)."""
    img, hyp = codec.latent_sizes(*size)
    zeros = {"y": torch.zeros(1, codec.config.M, *img[-1]), "z": torch.zeros(1, codec.config.N, *hyp[-1])}
    y_hat = codec.rate(zeros, q, size, torch.zeros_like)["y_hat"]  # every symbol 0: z at its medians, y at its means
    out = codec.synthesise(y_hat, q, size)
    return out[..., 8:-8, 8:-8].mean((2, 3), keepdim=True) if not spread else out[..., 8:-8, 8:-8].std((2, 3))


@torch.no_grad()
def code_file(m, layers, qs, predictor=None, mode="predicted"):
    """Code layers with per-layer qualities and a layer mode; predictor(prev, size, q) overrides LIFF. Returns
    per layer (cumulative bytes, PSNR)."""
    out, prev, total = [], None, 0
    for k, (target, q) in enumerate(zip(layers, qs)):
        if k and predictor is not None:
            pred = predictor(prev, tuple(target.shape[-2:]), q)
            c = m.residual.compress(target - pred, q)
            nb, rec = sum(len(s) for s in c["strings"]), pred + c["x_hat"]
        else:
            code, rec = m.code_layer(target, q, prev, mode=mode)
            nb = stages.nbytes(code)
        total += nb
        out.append((total, stages.psnr(rec, target)))
        prev = rec
    return out


def run(paths, models, deltas, out_path, only=None):
    single = stages.model("compass-cpu-single")
    res = {"images": [p.name for p in paths], "qs": QS, "fractions": FRACTIONS, "single": {}, "models": {}}
    t0 = time.time()
    for p in paths:
        x = stages.load_image(p)
        H, W = x.shape[-2:]
        sizes = [(max(1, round(H * f)), max(1, round(W * f))) for f in FRACTIONS]
        layers = pyramid(x, sizes)
        px = [h * w for h, w in sizes]
        res["single"][p.name] = {"pixels": px, "points": [[(stages.nbytes(c), stages.psnr(r, t)) for t in layers
                                                           for c, r in [single.code_layer(t, q, None)]] for q in QS]}
        for name in models:
            m = stages.model(name)
            offsets = {}

            def bic(prev, size, q):
                return upsample_bicubic_pil(prev, size)

            def bic_dc(prev, size, q):
                key = (size, q)
                if key not in offsets:
                    offsets[key] = zero_symbol_offset(m.residual, size, q)
                return upsample_bicubic_pil(prev, size) - offsets[key]

            variants = {"compass": lambda q: code_file(m, layers, [q] * 3),
                        "auto": lambda q: code_file(m, layers, [q] * 3, mode="auto")}
            for d in deltas:
                variants[f"lower{d:+}"] = lambda q, d=d: code_file(m, layers, [min(1.0, max(0.0, q + d))] * 2 + [q])
            variants["bicubic"] = lambda q: code_file(m, layers, [q] * 3, bic)
            variants["bicubic-dc"] = lambda q: code_file(m, layers, [q] * 3, bic_dc)
            r = res["models"].setdefault(name, {})
            for v, fn in variants.items():
                if only and v not in only:
                    continue
                r.setdefault(v, {})[p.name] = [fn(q) for q in QS]
        print(f"{p.name}: {time.time() - t0:.0f} s", flush=True)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(res, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["compass-cpu-mini", "compass-cpu-fast"],
                    help="shipped names, or NAME=CHECKPOINT for a fine-tune of finetune.py")
    ap.add_argument("--variants", nargs="*", help="only these variants (default: all)")
    ap.add_argument("--deltas", nargs="*", type=float, default=[0.25, 0.5])
    ap.add_argument("--images", nargs="*", help="image files (default: the 16 held-out photos)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = []
    for m in args.models:
        if "=" in m:
            from ckpt_model import load_checkpoint_model
            m, path = m.split("=", 1)
            stages._MODELS[m] = load_checkpoint_model(path)
        names.append(m)
    run([Path(i) for i in args.images] if args.images else heldout(), names, args.deltas, args.out, args.variants)


if __name__ == "__main__":
    main()
