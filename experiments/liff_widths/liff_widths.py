"""LIFF widths: cost against prediction quality, a cheap first step of the width-vs-BD-rate study (issue #6).

Every variant is the `cpu` recipe with other [liff] widths, pretrained as an upsampler by the recipe's liff stage
(same data, seed, crops and schedule) for the same number of steps. The report gives, per variant: multiply-adds
per output pixel at 2x (RDN and factorized MLP), the measured time of one prediction at Kodak size (384x256 to
768x512, 1 thread, median of 5) and the validation PSNR of the prediction and of bicubic upsampling (the stage's
16 held-out training crops). Prediction PSNR after a short pretraining is a proxy, not BD-rate: a variant worth
shipping still needs the joint stage and `compass eval`.

    python experiments/liff_widths/liff_widths.py train NAME [--steps 1000]   # one variant into runs/liff-widths/NAME
    python experiments/liff_widths/liff_widths.py report                      # markdown table of the trained variants
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from compass.bench.measure import liff_macs, rdn_macs
from compass.liff import LiffConfig
from compass.models import build_liff
from compass.train.config import load_recipe
from compass.train.export import last_validation
from compass.train.loop import train
from compass.weights import safe_load

RUNS = Path("runs/liff-widths")
VARIANTS = {  # changes to the cpu recipe's [liff] table
    "cpu": {},
    "mlp32": {"hidden": [32, 32, 32]},
    "mlp16x2": {"hidden": [16, 16]},
    "rdn16-mlp32": {"feat": 16, "blocks": 2, "convs": 2, "growth": 8, "hidden": [32, 32, 32]},
    "rdn16-mlp16x2": {"feat": 16, "blocks": 2, "convs": 2, "growth": 8, "hidden": [16, 16]},
    # with skip: bicubic upsampling plus a learned correction
    "cpu-skip": {"skip": True},
    "rdn16-mlp16-skip": {"feat": 16, "blocks": 2, "convs": 2, "growth": 8, "hidden": [16], "skip": True},
    "rdn8-mlp16-skip": {"feat": 8, "blocks": 1, "convs": 2, "growth": 8, "hidden": [16], "skip": True},
    # without unfolding: the filter acts on the nearest source feature alone (a ninth of the projection)
    "rdn16-mlp16-skip-u1": {"feat": 16, "blocks": 2, "convs": 2, "growth": 8, "hidden": [16], "skip": True,
                            "unfold": 1},
    "rdn16b1-mlp16-skip-u1": {"feat": 16, "blocks": 1, "convs": 2, "growth": 8, "hidden": [16], "skip": True,
                              "unfold": 1},
    "rdn16b1-mlp8-skip-u1": {"feat": 16, "blocks": 1, "convs": 2, "growth": 8, "hidden": [8], "skip": True,
                             "unfold": 1},
    "rdn8-mlp16-skip-u1": {"feat": 8, "blocks": 1, "convs": 2, "growth": 8, "hidden": [16], "skip": True,
                           "unfold": 1},
    # the LIFF of compass-cpu-fast: Pillow's bicubic (a = -0.5) under the correction, a third of the time
    "rdn16b1-mlp8-skip-u1-pil": {"feat": 16, "blocks": 1, "convs": 2, "growth": 8, "hidden": [8], "skip": True,
                                 "unfold": 1, "skip_upsampler": "bicubic-pil"},
}


def recipe(name: str) -> dict:
    r = load_recipe("cpu")
    r["liff"] = {**r["liff"], **VARIANTS[name]}
    return r


def predict_ms(cfg: LiffConfig, repeat: int = 5) -> float:
    """Median time of one prediction 384x256 -> 768x512 on one thread (weights do not change the time)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = build_liff(cfg).eval()
    x = torch.rand(1, 3, 256, 384)
    times = []
    with torch.no_grad():
        for i in range(repeat + 1):
            t = time.perf_counter()
            m(x, (512, 768), 1 << 16)
            if i:  # the first pass builds oneDNN kernels
                times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def report() -> str:
    lines = ["| variant | widths | RDN + MLP MACs / output pixel at 2x | prediction 384x256 -> 768x512 (ms) | steps | "
             "PSNR 2x (bicubic) | 3.2x (bicubic) | 1.5x by 2x (bicubic) |", "|---|---|---|---|---|---|---|---|"]
    for name in ["paper", *VARIANTS]:  # the paper's widths: cost only (not trained on these CPUs)
        cfg = LiffConfig.from_dict((load_recipe("paper") if name == "paper" else recipe(name))["liff"])
        run = RUNS / name
        if name == "paper":
            step, cells = "—", ["—"] * 3
        elif (run / "checkpoint.pt").exists():
            step = safe_load(run / "checkpoint.pt")["step"]
            v = {r["setting"]: r["psnr"] for r in last_validation(run)}
            cells = [f"{v[f'liff {s}']:.2f} ({v[f'bicubic {s}']:.2f})" for s in ("2.0x", "3.2x", "1.5x|2.0x")]
        else:
            continue
        macs = rdn_macs(cfg) / 4 + liff_macs(cfg, 2)["factorized"]
        widths = (f"C {cfg.feat}, {cfg.blocks}x{cfg.convs} blocks, G {cfg.growth}, MLP {'-'.join(map(str, cfg.hidden))}"
                  + (", skip" if cfg.skip else "") + (", no unfolding" if cfg.unfold == 1 else "")
                  + (", Pillow's bicubic" if cfg.skip_upsampler == "bicubic-pil" else ""))
        lines.append(f"| {name} | {widths} | {macs:,.0f} | {predict_ms(cfg):.0f} | {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("name", choices=sorted(VARIANTS))
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--resume", action="store_true")
    sub.add_parser("report")
    a = p.parse_args(argv)
    if a.cmd == "train":
        train(recipe(a.name), "liff", RUNS / a.name, resume=a.resume, steps=a.steps, threads=1, progress=False)
    else:
        print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
