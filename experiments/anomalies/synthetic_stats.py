"""Per-layer statistics of 3-layer files on the synthetic images (docs/prediction.md: anomaly 2, the grain):
compass-cpu-mini and compass-cpu-fast at q = 0.5 and 1, every layer against the single-layer codec at its size,
the prediction (offset, PSNR without it, HF energy on the smooth part), the share of zero y symbols.

    python experiments/anomalies/synthetic_stats.py > experiments/anomalies/results/synthetic-stats.txt
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stages  # noqa: E402
import synthetic  # noqa: E402


def main():
    torch.set_num_threads(1)
    print("image model q layer | layer bpp, file bpp, PSNR, smooth PSNR, HF smooth (target) | single-layer bpp, PSNR, "
          "smooth PSNR, HF smooth | prediction PSNR, without offset, bicubic, HF smooth, zero y symbols, offset")
    for img in ("gradient", "sky", "bokeh"):
        x = synthetic.IMAGES[img]()
        for name in ("compass-cpu-mini", "compass-cpu-fast"):
            for q in (0.5, 1.0):
                for r in stages.layer_stats(name, x, (0.25, 0.5, 1.0), (q, q, q)):
                    line = (f"{img} {name} {q} {r['layer']} | {r['bpp_layer']:.3f} {r['bpp_file']:.3f} {r['psnr']:.2f} "
                            f"{r['psnr_smooth']:.2f} {r['hf_smooth']:.2f} ({r['hf_target']:.2f}) | {r['single_bpp']:.3f} "
                            f"{r['single_psnr']:.2f} {r['single_psnr_smooth']:.2f} {r['single_hf_smooth']:.2f}")
                    if r["layer"]:
                        line += (f" | {r['pred_psnr']:.2f} {r['pred_psnr_dc']:.2f} {r['bicubic_psnr']:.2f} "
                                 f"{r['pred_hf_smooth']:.2f} {r['zero_symbols']:.3f} {r['pred_offset']}")
                    print(line, flush=True)


if __name__ == "__main__":
    main()
