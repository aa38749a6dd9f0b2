"""Where the top layer's error comes from at high q (docs/prediction.md, "Anomaly 2"): the same top layer coded
from the reconstruction below (what a file does) and from the uncoded image below (an oracle), with 2 and 3
layers, on the synthetic sky and gradient and on images given.

    python experiments/anomalies/propagation.py [--images PATH ...] [--q 1.0] [--model compass-cpu-mini]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stages  # noqa: E402
import synthetic  # noqa: E402

from compass.resample import pyramid  # noqa: E402


@torch.no_grad()
def run(name: str, x: torch.Tensor, label: str, q: float, model: str) -> dict:
    m, s = stages.model(model), stages.model("compass-cpu-single")
    H, W = x.shape[-2:]
    out = {}
    for fr in ((0.5, 1.0), (0.25, 0.5, 1.0)):
        sizes = [(round(H * f), round(W * f)) for f in fr]
        L = pyramid(x, sizes)
        prev, total = None, 0
        for k, t in enumerate(L[:-1]):
            code, prev = m.code_layer(t, q, prev)
            total += stages.nbytes(code)
        top, mask = L[-1], stages.smooth_mask(L[-1])
        code, rec = m.code_layer(top, q, prev)
        ocode, orec = m.code_layer(top, q, L[-2])  # the oracle: predicted from the uncoded layer below
        pred, opred = m.predict(prev, sizes[-1]), m.predict(L[-2], sizes[-1])
        scode, srec = s.code_layer(top, q, None)
        px = H * W
        r = {"top_psnr": stages.psnr(rec, top), "top_file_bpp": (total + stages.nbytes(code)) * 8 / px,
             "top_layer_bpp": stages.nbytes(code) * 8 / px, "oracle_psnr": stages.psnr(orec, top),
             "oracle_layer_bpp": stages.nbytes(ocode) * 8 / px, "single_psnr": stages.psnr(srec, top),
             "single_bpp": stages.nbytes(scode) * 8 / px,
             "inherited_psnr": stages.psnr(pred, opred),  # how far the coded layer below moves the prediction
             "lower_psnr": stages.psnr(prev, L[-2]),
             "hf_smooth": {"target": stages.laplacian_rms(top, mask), "top": stages.laplacian_rms(rec, mask),
                           "oracle": stages.laplacian_rms(orec, mask), "single": stages.laplacian_rms(srec, mask),
                           "prediction": stages.laplacian_rms(pred, mask)}}
        out[f"{len(fr)}L"] = r
        print(f"{label:28s} {len(fr)}L q={q}: top {r['top_psnr']:.2f} dB at {r['top_file_bpp']:.3f} bpp (layer "
              f"{r['top_layer_bpp']:.3f}) | oracle {r['oracle_psnr']:.2f} dB, layer {r['oracle_layer_bpp']:.3f} | single "
              f"{r['single_psnr']:.2f} dB at {r['single_bpp']:.3f} | layer below {r['lower_psnr']:.2f} dB, prediction "
              f"moved by it: {r['inherited_psnr']:.2f} dB | HF smooth "
              + " ".join(f"{k} {v:.2f}" for k, v in r["hf_smooth"].items()), flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", nargs="*", default=[])
    ap.add_argument("--q", type=float, default=1.0)
    ap.add_argument("--model", default="compass-cpu-mini", help="a shipped name, or NAME=CHECKPOINT")
    ap.add_argument("--size", type=int, nargs=2, default=(512, 768))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if "=" in args.model:  # NAME=CHECKPOINT: a fine-tune of finetune.py
        from ckpt_model import load_checkpoint_model
        args.model, path = args.model.split("=", 1)
        stages._MODELS[args.model] = load_checkpoint_model(path)
    for n in ("gradient", "sky", "bokeh"):
        run(args.model, synthetic.IMAGES[n](*args.size), n, args.q, args.model)
    for p in args.images:
        run(args.model, stages.load_image(p), Path(p).name, args.q, args.model)


if __name__ == "__main__":
    main()
