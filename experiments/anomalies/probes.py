"""Inference-side candidates against anomaly 2 (docs/prediction.md, "What was tried"), on the synthetic sky
(256x384) and a 384x256 crop of the demo image, compass-cpu-mini at q = 1:

- clamp: the reconstruction clamped to [0, 1] before each prediction (a decoder change, measured for size);
- refine: every layer refined (`compass.refine`, 100 steps), the single-layer codec likewise;
- inherited: the part of the top prediction due to the coded layer below, coded alone by the residual codec;
- lambda: the top residual refined for 1x, 4x and 16x lambda(q = 1).

    python experiments/anomalies/probes.py [clamp refine inherited lambda]
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stages  # noqa: E402
import synthetic  # noqa: E402
from rd import zero_symbol_offset  # noqa: E402

from compass.paths import REPO_ROOT  # noqa: E402
from compass.refine import RefineConfig  # noqa: E402
from compass.resample import pyramid  # noqa: E402

Q = 1.0


def images():
    demo = stages.load_image(REPO_ROOT / "examples" / "kingfisher.png")
    return {"sky 256x384": synthetic.sky(256, 384), "demo 3L": demo, "demo crop 256x384": demo[..., :256, 200:584]}


def clamp(m):
    for name, x in images().items():
        if "crop" in name:
            continue
        H, W = x.shape[-2:]
        L = pyramid(x, [(H // 4, W // 4), (H // 2, W // 2), (H, W)])
        for clamped in (False, True):
            prev, total = None, 0
            for k in range(3):
                src = prev.clamp(0, 1) if clamped and prev is not None else prev
                out_of_range = 0.0 if prev is None else float(((prev < 0) | (prev > 1)).float().mean())
                code, prev = m.code_layer(L[k], Q, src)
                total += stages.nbytes(code)
            print(f"clamp {name:20s} clamped={clamped}: top {stages.psnr(prev, L[2]):.2f} dB, file {total} B "
                  f"(middle-layer pixels out of [0, 1]: {out_of_range:.4f})")


def refine(m):
    s = stages.model("compass-cpu-single")
    x = images()["sky 256x384"]
    L = pyramid(x, [(64, 96), (128, 192), (256, 384)])
    for cfg in (None, RefineConfig(steps=100)):
        codes, rec = m.compress(L, [Q] * 3, refine=cfg)
        sc, sr = s.compress([L[2]], [Q], refine=cfg)
        print(f"refine sky 256x384 refine={cfg is not None}: top {stages.psnr(rec[2], L[2]):.2f} dB, file "
              f"{sum(stages.nbytes(c) for c in codes)} B; single-layer {stages.psnr(sr[0], L[2]):.2f} dB, "
              f"{stages.nbytes(sc[0])} B")


def two_layers(x):
    H, W = x.shape[-2:]
    return pyramid(x, [(H // 2, W // 2), (H, W)])


@torch.no_grad()
def inherited(m):
    for name in ("sky 256x384", "demo crop 256x384"):
        L = two_layers(images()[name])
        _, base = m.code_layer(L[0], Q, None)
        pred, opred = m.predict(base, L[1].shape[-2:]), m.predict(L[0], L[1].shape[-2:])
        zo = zero_symbol_offset(m.residual, tuple(L[1].shape[-2:]), Q)
        err = opred - pred
        c = m.residual.compress(err + zo, Q)  # the codec's residuals are centred on its zero-symbol output
        e0, e1 = float((err**2).mean()), float(((c["x_hat"] - zo - err) ** 2).mean())
        print(f"inherited {name}: RMS {e0 ** 0.5 * 255:.2f} levels; the residual codec at q = 1 removes "
              f"{100 * (1 - e1 / e0):.0f}% of its energy with {sum(len(b) for b in c['strings'])} B; zero y "
              f"symbols {stages.zero_share(m.residual, err + zo, Q):.3f}")


def lam(m):
    cfg0 = m.residual.config
    for name in ("sky 256x384", "demo crop 256x384"):
        L = two_layers(images()[name])
        _, base = m.code_layer(L[0], Q, None)
        code, rec = m.code_layer(L[1], Q, base)
        print(f"lambda {name}: plain top {stages.nbytes(code)} B {stages.psnr(rec, L[1]):.2f} dB")
        for mult in (1, 4, 16):
            m.residual.config = dataclasses.replace(cfg0, lambda_min=cfg0.lambda_min * mult,
                                                    lambda_max=cfg0.lambda_max * mult)
            try:
                code, rec = m.code_layer(L[1], Q, base, refine=RefineConfig(steps=100))
            finally:
                m.residual.config = cfg0
            print(f"lambda {name}: refined for {mult}x lambda: {stages.nbytes(code)} B {stages.psnr(rec, L[1]):.2f} dB")


def main(argv=None):
    torch.set_num_threads(1)
    which = (argv if argv is not None else sys.argv[1:]) or ["clamp", "refine", "inherited", "lambda"]
    m = stages.model("compass-cpu-mini")
    for w in which:
        {"clamp": clamp, "refine": refine, "inherited": inherited, "lambda": lam}[w](m)


if __name__ == "__main__":
    main()
